"""Files -> layers: one layer per large file, runs of small files grouped, in path order.

Files are walked in path order. A file at or over the threshold gets a layer
of its own; the small files between two large ones form a group, split when
a group reaches the threshold. If that makes more layers than the budget,
the adjacent pair with the smallest combined size is merged until it fits.
So a layer's content (and digest) depends only on the files in it: change
one shard and only that shard's layer changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelcar.builder.sources.base import SourceFile
from modelcar.errors import UsageError


@dataclass
class LayerPlan:
    files: list[SourceFile]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def plan_layers(files: list[SourceFile], threshold: int, budget: int) -> list[LayerPlan]:
    if budget < 1:
        raise UsageError(
            "no room for model layers",
            subject=f"layer budget {budget}",
            hint="raise --max-layers or use a base with fewer layers",
        )
    units: list[list[SourceFile]] = []
    group: list[SourceFile] = []
    group_size = 0
    for f in files:
        if f.size >= threshold:
            if group:
                units.append(group)
                group, group_size = [], 0
            units.append([f])
            continue
        group.append(f)
        group_size += f.size
        if group_size >= threshold:
            units.append(group)
            group, group_size = [], 0
    if group:
        units.append(group)

    sizes = [sum(f.size for f in u) for u in units]
    while len(units) > budget:
        i = min(range(len(units) - 1), key=lambda k: sizes[k] + sizes[k + 1])
        units[i : i + 2] = [units[i] + units[i + 1]]
        sizes[i : i + 2] = [sizes[i] + sizes[i + 1]]
    return [LayerPlan(u) for u in units]
