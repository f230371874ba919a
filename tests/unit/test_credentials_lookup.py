"""Where registry credentials come from, and when they are read again."""

from __future__ import annotations

import base64
import json
import os
import stat

from modelcar.oci.registry.auth import Credentials, CredentialStore, find_credentials


def _config(path, entries=None, helpers=None, store=None):
    cfg = {"auths": entries or {}}
    if helpers:
        cfg["credHelpers"] = helpers
    if store:
        cfg["credsStore"] = store
    path.write_text(json.dumps(cfg))
    return path


def _auth(user, password):
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_auths_by_host_and_by_url_forms(tmp_path):
    cfg = _config(
        tmp_path / "config.json",
        {
            "reg.example:5000": _auth("a", "pa"),
            "https://other.example": {"username": "b", "password": "pb"},
            "https://index.docker.io/v1/": _auth("hub", "ph"),
        },
    )
    assert find_credentials("reg.example:5000", str(cfg)) == Credentials("a", "pa")
    assert find_credentials("other.example", str(cfg)) == Credentials("b", "pb")
    assert find_credentials("docker.io", str(cfg)) == Credentials("hub", "ph")
    assert find_credentials("nowhere.example", str(cfg)) is None


def test_several_configs_merge_later_ones_winning(tmp_path):
    one = _config(
        tmp_path / "one.json", {"r.example": _auth("old", "1"), "s.example": _auth("s", "2")}
    )
    two = _config(tmp_path / "two.json", {"r.example": _auth("new", "3")})
    both = f"{one}{os.pathsep}{two}"
    assert find_credentials("r.example", both) == Credentials("new", "3")
    assert find_credentials("s.example", both) == Credentials("s", "2")


def test_a_credential_helper_is_asked(tmp_path):
    helper = tmp_path / "docker-credential-fake"
    helper.write_text(
        '#!/bin/sh\nread host\necho "{\\"Username\\": \\"u-$host\\", \\"Secret\\": \\"s\\"}"\n'
    )
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    cfg = _config(tmp_path / "config.json", helpers={"ecr.example": "fake"})
    path = os.environ["PATH"]
    os.environ["PATH"] = f"{tmp_path}{os.pathsep}{path}"
    try:
        assert find_credentials("ecr.example", str(cfg)) == Credentials("u-ecr.example", "s")
    finally:
        os.environ["PATH"] = path


def test_the_store_rereads_a_changed_file_and_keeps_the_last_good_one(tmp_path):
    cfg = _config(tmp_path / "config.json", {"r.example": _auth("u", "old")})
    store = CredentialStore("r.example", str(cfg))
    assert store.get() == Credentials("u", "old")
    assert store.get() == Credentials("u", "old") and store.loads == 1  # unchanged: not read
    _config(cfg, {"r.example": _auth("u", "new")})
    os.utime(cfg, ns=(0, 10**18))  # a changed mtime, whatever the clock's resolution
    assert store.get() == Credentials("u", "new")
    cfg.write_text('{"auths": ')  # caught mid-rewrite
    os.utime(cfg, ns=(0, 2 * 10**18))
    assert store.get() == Credentials("u", "new")
    assert store.refresh() is False  # a refusal re-reads; same answer: the refusal stands
