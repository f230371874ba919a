"""Pure parts of signing: DSSE's PAE, the provenance's source descriptors, the
model-signing resources."""

from __future__ import annotations

from modelcar.format.fileindex import FileEntry, FileIndex
from modelcar.trust import dsse, modelsig, provenance

SHA = "sha256:" + "ab" * 32


def _index(*paths: str) -> FileIndex:
    return FileIndex(files=[FileEntry(path=p, size=1, sha256=SHA, layer=SHA) for p in paths])


def test_pae_is_the_dsse_v1_encoding():
    # the worked example of secure-systems-lab/dsse protocol.md
    assert dsse.pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def _facts(source: str, **kw) -> provenance.BuildFacts:
    return provenance.BuildFacts(
        source=source, index=_index("a", "b/c"), builder_version="1", started="", finished="", **kw
    )


def test_each_source_is_named_in_its_immutable_form():
    commit = "0123456789abcdef0123456789abcdef01234567"
    (hf,) = provenance.source_dependencies(_facts(f"hf://acme/llama@{commit}"))
    assert hf == {"uri": "hf://acme/llama", "digest": {"gitCommit": commit}}
    (ml,) = provenance.source_dependencies(_facts("mlflow://fraud/3", run_id="r1"))
    assert ml == {"uri": "mlflow://fraud/3", "name": "fraud", "annotations": {"runId": "r1"}}
    s3 = provenance.source_dependencies(
        _facts("s3://b/p", objects={"a": {"etag": "e1"}, "zz": {"etag": "e2", "version": "v"}})
    )
    assert s3[0] == {
        "uri": "s3://b/p/a",
        "annotations": {"etag": "e1"},
        "digest": {"sha256": "ab" * 32},
    }
    assert s3[1] == {"uri": "s3://b/p/zz", "annotations": {"etag": "e2", "version": "v"}}
    (local,) = provenance.source_dependencies(_facts("file:m"))
    assert local["digest"]["sha256"] == provenance.tree_digest(_index("b/c", "a"))[7:]
    assert provenance.tree_digest(_index("a")) != provenance.tree_digest(_index("b"))


def test_model_signing_resources_leave_out_git_files_and_sort_by_name():
    listed = modelsig.resources(_index("z", ".gitattributes", ".git/HEAD", "a/.gitignore", "b"))
    assert [r["name"] for r in listed] == ["a/.gitignore", "b", "z"]
    claims = {
        "subject": [{"digest": {"sha256": modelsig.root_digest(listed)}}],
        "predicate": {"resources": listed},
    }
    assert modelsig.matches(claims, _index("b", "z", "a/.gitignore", ".gitattributes"))
    assert not modelsig.matches(claims, _index("b", "z"))
