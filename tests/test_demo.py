"""`make demo`'s script, end to end: build, register, cache on a node, resolve."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import httpx

from tests.helpers import ROOT


def test_the_demo_shows_a_ready_model_the_resolve_answer_and_its_web_ui(tmp_path):
    """One run with --keep (the plain run is the same, minus the wait): everything the
    demo prints, then the API and its UI still answering until Ctrl-C."""
    proc = subprocess.Popen(
        [sys.executable, "scripts/demo.py", "--keep"],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    try:
        lines = []
        deadline = time.monotonic() + 300
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, f"the demo ended early: {proc.stderr.read() if proc.stderr else ''}"
            lines.append(line)
            if "kept running" in line:
                break
        out = "".join(lines)
        assert "same digest in both targets: yes" in out
        assert "nodes_ready  demo-node" in out
        assert "kind: InferenceService" in out and "/mnt/models" in out
        assert len(out.splitlines()) < 60  # one screen
        assert "/ui  (sign in with the read token mct_" in out
        ui = next(
            m for line in lines if (m := re.search(r"web UI:\s+(\S+)/ui .* (mct_\S+)\)", line))
        )
        url, token = ui.group(1), ui.group(2)
        page = httpx.get(
            f"{url}/ui/fleet", headers={"Authorization": f"Bearer {token}"}, timeout=60
        )
        assert page.status_code == 200 and "demo-node" in page.text and "minilm:1" in page.text
        assert httpx.get(f"{url}/ui/fleet", timeout=60).status_code == 401  # a token, always
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=300)  # a generous bound: the machine may be loaded
    assert proc.returncode == 0
    (kept,) = tmp_path.iterdir()  # only the work dir that --keep keeps, and it says so
    assert f"kept {kept}" in out
