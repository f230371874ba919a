"""Operating a node while `modelcar-cache run` owns the cache dir: reading commands
beside it, changing commands sent to it over its control socket, its events, and a
node token rotated under it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.models import write_safetensors
from tests.helpers import ROOT, assert_one_line_error, build, cache_cli, published, stop_process

FAST = 8  # seconds a reading command may take before it counts as blocked by the pull


def _model(root: Path, shards: int, seed: int) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"seed": seed}))
    for i in range(shards):
        write_safetensors(root / f"shard-{i}.safetensors", 8 << 20, seed=seed + i)
    return root


def _daemon(cache: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelcar.cache_daemon.cli",
            "run",
            "--node",
            "n1",
            "--cache-dir",
            str(cache),
            "--listen",
            "",
            "--plain-http",
            "--interval",
            "1",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )


def _stop(proc: subprocess.Popen) -> str:
    return stop_process(proc)


def _until(what, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # bounded
        value = what()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout}s")


def _ls(cache: Path) -> dict[str, dict]:
    r = cache_cli("ls", "--cache-dir", str(cache), "--json", timeout=FAST)
    return {rec["digest"]: rec for rec in map(json.loads, r.stdout.splitlines())}


def _status(cache: Path) -> dict:
    return json.loads(cache_cli("status", "--cache-dir", str(cache), "--json", timeout=FAST).stdout)


@pytest.fixture(scope="module")
def models(registry, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("live")
    return {
        "small": build(_model(root / "small", 0, 1), f"{registry.host}/live/small", "--plain-http"),
        "big": build(_model(root / "big", 3, 10), f"{registry.host}/live/big", "--plain-http"),
        "extra": build(
            _model(root / "extra", 1, 20), f"{registry.host}/live/extra", "--plain-http"
        ),
    }


def test_a_node_is_inspected_and_steered_while_its_daemon_pulls(models, tmp_path):
    cache = tmp_path / "cache"
    small, big, extra = (models[k].split("@")[1] for k in ("small", "big", "extra"))
    # before the daemon: a model pulled by hand, not assigned
    cache_cli("pull", models["extra"], "--cache-dir", str(cache), "--plain-http", "-q")
    config = tmp_path / "models.yaml"
    config.write_text(json.dumps({"models": [models["small"], models["big"]]}))
    daemon = _daemon(cache, "--config", str(config), "--max-rate", "2MiB", "--jobs", "1")
    try:
        _until(lambda: small in [f"sha256:{d[7:]}" for d in published(cache)])
        # reading beside the daemon, during the big pull
        first = _until(lambda: [p for p in _status(cache)["pulls"] if p["digest"] == big])[0]
        records = _ls(cache)
        assert records[big]["state"] == "pulling" and records[small]["state"] == "ready"
        assert records[small]["assigned"] is True and records[extra]["assigned"] is False
        time.sleep(1.5)
        second = next(p for p in _status(cache)["pulls"] if p["digest"] == big)
        assert second["bytes_done"] > first["bytes_done"] and second["rate"] > 0
        assert second["source"] == models["big"].split("/")[0]
        human = cache_cli("status", "--cache-dir", str(cache), timeout=FAST).stdout
        assert f"pulling {big[:19]}" in human and "ETA" in human

        # verify reads only; a flipped byte is reported, quarantined only when asked
        ok = cache_cli("verify", small, "--cache-dir", str(cache), timeout=FAST)
        assert ok.last_line == f"{small}  ok"
        victim = cache / "models" / f"sha256-{small[7:]}" / "config.json"
        data = bytearray(victim.read_bytes())
        data[0] ^= 1
        victim.write_bytes(bytes(data))
        bad = cache_cli("verify", small, "--cache-dir", str(cache), check=False, timeout=FAST)
        assert_one_line_error(bad, "1 of 1 models differ from their file index")
        assert "CORRUPT" in bad.stdout and victim.exists()
        moved = cache_cli(
            "verify", small, "--quarantine", "--cache-dir", str(cache), check=False, timeout=FAST
        )
        assert moved.code == 1 and "moved to" in moved.stdout
        assert not victim.exists() and list((cache / "quarantine").iterdir())

        # gc through the daemon: the unassigned model goes, assigned and pulling stay
        gone = cache_cli("gc", "--cache-dir", str(cache), "--max-bytes", "1", timeout=FAST)
        assert gone.stdout.split() == [extra] and "by the running daemon" in gone.stderr
        records = _ls(cache)
        assert records[extra]["state"] == "evicted"
        assert not (cache / "models" / f"sha256-{extra[7:]}").exists()
        assert records[big]["state"] == "pulling"

        # events: the daemon's own account of all of it
        events = cache_cli("events", "--cache-dir", str(cache), timeout=FAST).stdout
        kinds = [(e["event"], e.get("digest")) for e in map(json.loads, events.splitlines())]
        assert ("quarantined", small) in kinds and ("evicted", extra) in kinds
        _until(lambda: big in [f"sha256:{d[7:]}" for d in published(cache)], timeout=90)
        _until(lambda: small in [f"sha256:{d[7:]}" for d in published(cache)], timeout=30)
        assert "Traceback" not in _stop(daemon)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    # the daemon's state agrees after it stopped
    records = _ls(cache)
    assert records[extra]["state"] == "evicted" and records[big]["state"] == "ready"


def test_events_follow_and_a_pull_sent_to_the_daemon(models, tmp_path):
    cache = tmp_path / "cache"
    config = tmp_path / "models.yaml"
    config.write_text(json.dumps({"models": [models["small"]]}))
    daemon = _daemon(cache, "--config", str(config))
    follower = None
    try:
        _until(lambda: published(cache))
        follower = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modelcar.cache_daemon.cli",
                "events",
                "--follow",
                "--cache-dir",
                str(cache),
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        pulled = cache_cli("pull", models["extra"], "--cache-dir", str(cache), "--json", "-q")
        result = json.loads(pulled.stdout.splitlines()[0])
        assert result["digest"] == models["extra"].split("@")[1] and result["files"] == 2
        assert pulled.last_line == str(cache / "models" / f"sha256-{result['digest'][7:]}")
        seen: list[dict] = []
        assert follower.stdout is not None
        while not any(e["event"] == "ready" and e["digest"] == result["digest"] for e in seen):
            line = follower.stdout.readline()  # bounded: the pull above has finished
            assert line, "events --follow ended"
            seen.append(json.loads(line))
    finally:
        if follower:
            follower.kill()
            follower.wait()
        _stop(daemon)


def test_the_control_socket_admits_only_the_daemons_uid_and_survives_garbage(models, tmp_path):
    cache = tmp_path / "cache"
    tmp_path.chmod(0o755)
    config = tmp_path / "models.yaml"
    config.write_text(json.dumps({"models": []}))
    daemon = _daemon(cache, "--config", str(config))
    try:
        sock_path = _until(lambda: (cache / "control.sock").exists() and cache / "control.sock")
        assert oct(sock_path.stat().st_mode & 0o777) == "0o600"
        os.chmod(cache, 0o755)
        other = subprocess.run(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                sys.executable,
                "-m",
                "modelcar.cache_daemon.cli",
                "status",
                "--cache-dir",
                str(cache),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=30,
        )
        assert other.returncode != 0
        assert "may not use the running daemon's control socket" in other.stderr, other.stderr
        answers = {}
        for garbage in (b"not json\n", b'{"op": 3}\n', b'{"op": "format-disk"}\n', b"\xff\n"):
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(10)
                s.connect(str(sock_path))
                s.sendall(garbage)
                answers[garbage] = json.loads(s.makefile().readline())
        assert all(a["ok"] is False and "\n" not in a["error"] for a in answers.values())
        assert answers[b"not json\n"]["error"] == "bad control request: not one JSON line"
        assert (
            "unknown control request 'format-disk'" in answers[b'{"op": "format-disk"}\n']["error"]
        )
        assert _status(cache)["node"] == "n1"  # still serving
        assert daemon.poll() is None
    finally:
        _stop(daemon)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_rotated_node_token_file_is_used_without_a_restart(api, tmp_path):
    admin = api.client(api.admin)
    token_file = tmp_path / "token"
    token_file.write_text(api.token("node", "n1"))
    daemon = _daemon(tmp_path / "cache", "--api", api.url, "--token-file", str(token_file))
    try:
        _until(lambda: admin.get("/v1/nodes/n1").status_code == 200)
        old = {t["name"]: t for t in admin.get("/v1/tokens").json()}["n1"]
        # rotate: a new token in the file, the old one revoked
        new = api.token("node", "n1-rotated", node="n1")
        token_file.write_text(new)
        assert admin.delete(f"/v1/tokens/{old['id']}").status_code == 204
        before = admin.get("/v1/nodes/n1").json()["last_seen"]
        _until(lambda: admin.get("/v1/nodes/n1").json()["last_seen"] != before, timeout=30)
        log = _stop(daemon)
        assert "Traceback" not in log
    finally:
        if daemon.poll() is None:
            daemon.kill()
