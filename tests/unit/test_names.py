"""Model references, node-cache naming, model paths and Retry-After (pure logic)."""

from __future__ import annotations

import email.utils
import time

import pytest

from modelcar.contract.modelref import parse_model_ref
from modelcar.contract.nodecache import host_path, model_dir_name, node_label_key
from modelcar.errors import UsageError
from modelcar.format.paths import MAX_PATH_BYTES, path_problem, shown
from modelcar.http.retry import backoff, retry_after

DIGEST = "sha256:" + "ab" * 32


def test_model_refs():
    alias = parse_model_ref("llama@prod")
    assert (alias.name, alias.alias, alias.version, alias.digest) == ("llama", "prod", None, None)
    version = parse_model_ref("llama:3")
    assert (version.name, version.version) == ("llama", 3)
    pinned = parse_model_ref(f"llama@{DIGEST}")
    assert (pinned.name, pinned.digest, pinned.alias) == ("llama", DIGEST, None)
    assert str(pinned) == f"llama@{DIGEST}" and str(alias) == "llama@prod"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "llama",
        "llama:x",
        "llama@",
        "@prod",
        "Llama Model@prod",
        "llama@sha256:abc",
        "llama:0",
        "../x@prod",
    ],
)
def test_bad_model_refs_are_usage_errors(text):
    with pytest.raises(UsageError):
        parse_model_ref(text)


def test_node_cache_naming():
    assert model_dir_name(DIGEST) == "sha256-" + "ab" * 32
    assert host_path("/var/lib/modelcar", DIGEST) == "/var/lib/modelcar/models/sha256-" + "ab" * 32
    key = node_label_key(DIGEST)
    assert key == "modelcar.dev/sha256-" + ("ab" * 32)[:20]
    assert len(key.split("/")[1]) <= 63  # a Kubernetes label name


@pytest.mark.parametrize(
    "path, problem",
    [
        ("config.json", None),
        ("a b/new\nline/ünï.txt", None),
        ("a\\b", "backslash"),
        ("/etc/passwd", "absolute"),
        ("a/../b", "'..'"),
        ("a//b", "empty"),
        ("./a", "'.'"),
        ("x" * 256, "255 bytes"),
        ("/".join(["d" * 200] * 20), f"{MAX_PATH_BYTES}-byte"),
        ("bad\udcff.bin", "UTF-8"),
        ("nul\0byte", "NUL"),
    ],
)
def test_model_path_rule(path, problem):
    found = path_problem(path)
    assert (found is None) if problem is None else (problem in (found or ""))


def test_paths_are_shown_escaped():
    assert shown("bad\udcff.bin") == "bad\\xff.bin"
    assert shown("a\nb") == "a\\nb"


def test_retry_after_reads_seconds_and_http_dates():
    assert retry_after({"Retry-After": "7"}) == 7.0
    assert retry_after({"Retry-After": "-3"}) == 0.0
    assert retry_after({}) is None
    assert retry_after({"Retry-After": "soon"}) is None
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= retry_after({"Retry-After": date}, now=now) <= 31
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert retry_after({"Retry-After": past}, now=now) == 0.0


def test_backoff_grows_with_jitter_and_a_cap():
    for attempt in range(1, 12):
        wait = backoff(attempt, base=0.5, cap=30.0)
        full = min(30.0, 0.5 * 2 ** (attempt - 1))
        assert full / 2 <= wait <= full
