"""What the three CLIs share: --version (with the revision when known) and completion."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelcar.version import version

ROOT = Path(__file__).resolve().parent.parent
CLIS = [
    ("modelcar", "modelcar.builder.cli"),
    ("modelcar-cache", "modelcar.cache_daemon.cli"),
    ("modelcar-api", "modelcar.api.cli"),
]


def _run(module: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
        timeout=60,
    )


@pytest.mark.parametrize("prog, module", CLIS)
def test_version_names_the_release_and_the_revision(prog, module):
    done = _run(module, "--version")
    assert done.returncode == 0, done.stderr
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True
    )
    if head.returncode == 0:  # a checkout: its commit
        assert done.stdout.strip() == f"{prog} {version()} (revision {head.stdout.strip()})"
    else:
        assert done.stdout.strip() == f"{prog} {version()}"
    # the runtime image sets the revision it was built from
    baked = _run(module, "--version", env={"MODELCAR_REVISION": "0123abcd4567"})
    assert baked.stdout.strip() == f"{prog} {version()} (revision 0123abcd4567)"


@pytest.mark.parametrize("prog, module", CLIS)
def test_shell_completion_is_there_and_completes(prog, module):
    script = _run(module, "--show-completion", env={"SHELL": "/bin/bash"})
    assert script.returncode == 0, script.stderr
    function = "_" + prog.replace("-", "_") + "_completion"
    assert f"complete -o default -F {function} {prog}" in script.stdout
    var = "_" + prog.replace("-", "_").upper() + "_COMPLETE"
    first = {"modelcar": "buil", "modelcar-cache": "pu", "modelcar-api": "ser"}[prog]
    done = _run(
        module, env={var: "complete_bash", "COMP_WORDS": f"{prog} {first}", "COMP_CWORD": "1"}
    )
    assert done.stdout.split() == [{"buil": "build", "pu": "pull", "ser": "serve"}[first]]
