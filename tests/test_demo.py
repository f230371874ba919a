"""`make demo`'s script, end to end: build, register, cache on a node, resolve."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ROOT


def test_the_demo_shows_a_ready_model_and_the_resolve_answer(tmp_path):
    proc = subprocess.run(
        [sys.executable, "scripts/demo.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        env={**__import__("os").environ, "TMPDIR": str(tmp_path)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "same digest in both targets: yes" in out
    assert "nodes_ready  demo-node" in out
    assert "kind: InferenceService" in out and "/mnt/models" in out
    assert len(out.splitlines()) < 60  # one screen
    assert list(tmp_path.iterdir()) == []  # nothing left behind
