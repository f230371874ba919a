"""Layer planning and file selection (pure logic)."""

from __future__ import annotations

import io

import pytest

from modelcar.builder.plan import plan_layers
from modelcar.builder.sources.base import Selection, SourceFile
from modelcar.errors import UsageError

MiB = 1 << 20


def f(path: str, size: int) -> SourceFile:
    return SourceFile(path=path, size=size, opener=lambda: io.BytesIO(b""))


def paths(plan) -> list[list[str]]:
    return [[x.path for x in layer.files] for layer in plan]


def test_large_files_get_their_own_layer_and_small_neighbours_are_grouped():
    files = [
        f("a.json", 10),
        f("b.json", 20),
        f("model-1.bin", 100 * MiB),
        f("c.txt", 5),
        f("model-2.bin", 64 * MiB),
        f("z.txt", 1),
    ]
    plan = plan_layers(files, threshold=64 * MiB, budget=100)
    assert paths(plan) == [
        ["a.json", "b.json"],
        ["model-1.bin"],
        ["c.txt"],
        ["model-2.bin"],
        ["z.txt"],
    ]


def test_a_group_is_closed_when_it_reaches_the_threshold():
    files = [f(f"s{i}", 30) for i in range(5)]
    assert paths(plan_layers(files, threshold=60, budget=100)) == [
        ["s0", "s1"],
        ["s2", "s3"],
        ["s4"],
    ]


def test_over_budget_the_smallest_neighbouring_pair_is_merged_first():
    files = [f("a", 100), f("b", 1), f("c", 2), f("d", 100)]
    plan = plan_layers(files, threshold=1, budget=3)
    assert paths(plan) == [["a"], ["b", "c"], ["d"]]
    assert paths(plan_layers(files, threshold=1, budget=1)) == [["a", "b", "c", "d"]]


def test_a_layer_depends_only_on_its_own_files():
    before = plan_layers([f("a", 10), f("big", 100), f("c", 10)], threshold=50, budget=10)
    after = plan_layers([f("a", 10), f("big", 100), f("c", 11)], threshold=50, budget=10)
    assert paths(before)[:2] == paths(after)[:2]


def test_no_layer_budget_is_a_usage_error():
    with pytest.raises(UsageError, match="no room for model layers"):
        plan_layers([f("a", 1)], threshold=1, budget=0)


@pytest.mark.parametrize(
    "include, exclude, path, wanted",
    [
        ((), (), "model.safetensors", True),
        ((), ("*.bin",), "sub/pytorch_model.bin", False),  # a bare glob matches basenames
        ((), ("onnx/",), "onnx/model.onnx", False),  # dir/ names a directory
        ((), ("onnx/",), "x/onnx/model.onnx", False),
        ((), ("onnx/",), "onnxish.txt", True),
        (("*.safetensors", "*.json"), (), "config.json", True),
        (("*.safetensors",), (), "README.md", False),
        (("*.safetensors",), ("shard-2*",), "shard-2.safetensors", False),
    ],
)
def test_selection(include, exclude, path, wanted):
    assert Selection(include, exclude).wants(path) is wanted
