from __future__ import annotations

from pathlib import Path

import pytest

from modelcar.errors import InvalidReference
from modelcar.oci.reference import ImageRef, LayoutRef, parse_ref

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    "text, expected",
    [
        ("ubuntu", ImageRef("docker.io", "library/ubuntu")),
        ("org/model:v1", ImageRef("docker.io", "org/model", "v1")),
        ("localhost:5000/a/b:v1", ImageRef("localhost:5000", "a/b", "v1")),
        (f"127.0.0.1:5000/models/x@{D}", ImageRef("127.0.0.1:5000", "models/x", None, D)),
        (f"ghcr.io/o/m:t@{D}", ImageRef("ghcr.io", "o/m", "t", D)),
        ("index.docker.io/library/busybox", ImageRef("docker.io", "library/busybox")),
        ("oci:/tmp/lay:v1", LayoutRef(Path("/tmp/lay"), "v1")),
        ("oci:rel/dir", LayoutRef(Path("rel/dir"))),
        (f"oci:/tmp/lay@{D}", LayoutRef(Path("/tmp/lay"), None, D)),
    ],
)
def test_parse(text, expected):
    assert parse_ref(text) == expected


def test_pinned_and_str():
    ref = parse_ref("127.0.0.1:5000/m/x:v1")
    assert str(ref.pinned(D)) == f"127.0.0.1:5000/m/x@{D}"
    assert str(parse_ref("oci:/tmp/l:v1").pinned(D)) == f"oci:/tmp/l@{D}"
    assert ref.reference == "v1" and parse_ref("a/b").reference == "latest"


@pytest.mark.parametrize(
    "bad", ["", "UPPER/x", "a b", "host:5000/x@sha256:zz", "x:bad tag", "oci:"]
)
def test_invalid(bad):
    with pytest.raises(InvalidReference):
        parse_ref(bad)
