"""The distribution as users get it: one import package, and an extra per deployable.

The wheel is built once; each fresh venv installs it with one extra (dependencies
from the package index, as a user's pip would).
"""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from tests.helpers import ROOT, assert_one_line_error, build, tree
from tests.helpers import Result as CliResult


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("modelcar-*.whl")
    return path


def _venv(root: Path, wheel: Path, extra: str = "") -> Path:
    venv.create(root, with_pip=True)
    spec = f"{wheel}[{extra}]" if extra else str(wheel)
    proc = subprocess.run(
        [str(root / "bin" / "python"), "-m", "pip", "install", "-q", spec],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return root / "bin"


def _run(bin_dir: Path, *args: str, cwd: Path) -> CliResult:
    proc = subprocess.run(
        [str(bin_dir / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def test_the_wheel_installs_one_import_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"modelcar"}
    for app in ("builder", "cache_daemon", "api"):
        assert f"modelcar/{app}/cli.py" in names
    assert "modelcar/api/db/migrations/script.py.mako" in names
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    assert "License-Expression: Apache-2.0" in text
    assert any(n.endswith("licenses/LICENSE") for n in names)


def test_every_console_script_runs_from_a_fresh_venv_with_all_extras(wheel, tmp_path):
    bin_dir = _venv(tmp_path / "venv", wheel, "all")
    for script in ("modelcar", "modelcar-cache", "modelcar-api"):
        r = _run(bin_dir, script, "--help", cwd=tmp_path)
        assert r.code == 0 and "Usage:" in r.stdout, (script, r.stderr)
    # the web UI's templates and stylesheet are in the wheel, and every template compiles
    shipped = subprocess.run(
        [
            str(bin_dir / "python"),
            "-c",
            "from modelcar.api import ui; "
            "print(*sorted(ui.templates.env.list_templates()), *sorted("
            "p.name for p in (ui.HERE / 'static').iterdir())); "
            "[ui.templates.env.get_template(t) for t in ui.templates.env.list_templates()]",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert shipped.returncode == 0, shipped.stderr
    templates = sorted(p.name for p in (ROOT / "api" / "ui" / "templates").iterdir())
    assert shipped.stdout.split() == [*templates, "ui.css"]


def test_base_alone_names_the_extra_to_install(wheel, tmp_path):
    bin_dir = _venv(tmp_path / "venv", wheel)
    r = _run(bin_dir, "modelcar-api", "serve", cwd=tmp_path)
    assert_one_line_error(r, "modelcar[api]")
    assert r.code == 2
    (tmp_path / "models.yaml").write_text("models: []\n")
    r = _run(
        bin_dir,
        "modelcar-cache",
        "run",
        "--node",
        "n1",
        "--config",
        "models.yaml",
        "--once",
        "--cache-dir",
        str(tmp_path / "cache"),
        cwd=tmp_path,
    )
    assert_one_line_error(r, "modelcar[cache]")
    # what needs no extra works without one: listing a cache
    assert (
        _run(
            bin_dir, "modelcar-cache", "ls", "--cache-dir", str(tmp_path / "cache"), cwd=tmp_path
        ).code
        == 0
    )


def test_the_cache_extra_alone_pulls_a_model(wheel, tmp_path, registry):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"hidden": 8}')
    (model / "weights.bin").write_bytes(bytes(range(256)) * 4096)
    ref = build(model, f"{registry.host}/packaging/m", "--plain-http")
    bin_dir = _venv(tmp_path / "venv", wheel, "cache")
    python = bin_dir / "python"
    for absent in ("fastapi", "sqlalchemy", "boto3", "mlflow", "huggingface_hub"):
        probe = subprocess.run([str(python), "-c", f"import {absent}"], capture_output=True)
        assert probe.returncode != 0, f"{absent} is installed by modelcar[cache]"
    cache = tmp_path / "cache"
    r = _run(
        bin_dir,
        "modelcar-cache",
        "pull",
        ref,
        "--cache-dir",
        str(cache),
        "--plain-http",
        "-q",
        cwd=tmp_path,
    )
    assert r.code == 0, r.stderr
    assert tree(Path(r.stdout.strip().splitlines()[-1])) == tree(model)
