"""bench/measure.py: a command's peak memory is the command's, not its parent's."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MB = 1 << 20
CHILD = [sys.executable, "-c", "b = bytearray(50 << 20); b[::4096] = b'x' * len(b[::4096])"]


@pytest.fixture(scope="module")
def measure():
    spec = importlib.util.spec_from_file_location("bench_measure", ROOT / "bench" / "measure.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_measure"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules["bench_measure"]


@pytest.mark.skipif(not shutil.which("/usr/bin/time"), reason="GNU time missing (apt install time)")
def test_a_50_mb_child_of_a_500_mb_parent_is_measured_at_about_50_mb(measure):
    held = bytearray(500 * MB)
    held[::4096] = b"y" * len(held[::4096])  # resident, not just reserved
    alone = measure.checked([sys.executable, "-c", "pass"])
    m = measure.checked(CHILD)
    # the interpreter itself plus the 50 MB it touched; nothing of the parent's 500 MB
    assert 45 <= m.peak_mb - alone.peak_mb <= 60, (m.peak_mb, alone.peak_mb)
    assert m.peak_mb < 100
    # what wait4 says for the same child: the parent's size at fork
    pid = os.fork()
    if pid == 0:
        os.execv(CHILD[0], CHILD)
    _, _, usage = os.wait4(pid, 0)
    assert usage.ru_maxrss / 1024 > 500
    del held


def test_a_failing_command_still_reports(measure):
    m = measure.run([sys.executable, "-c", "import sys; sys.exit(3)"])
    assert m.returncode == 3 and m.peak_kib > 0
    assert measure.peak_of(os.getpid()) > 0 and measure.peak_of(2**22 + 7) == 0
