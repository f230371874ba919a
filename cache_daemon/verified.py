"""What of a pull in progress is verified: the board the streamed-start reads wait on.

A pull puts its model here when it begins (its file index and, contract v1.1, its
chunk index); its layer threads mark each chunk whose sha256 matched as it passes
(a v1 image's files are marked whole once their sha256 matched). A reader (the S3
endpoint) waits for the chunks under a range, bounded; it never reads bytes of the
staging file that are not marked. A verified chunk's bytes are never written again
(a retried layer only hashes them), so what a reader was given stays true.

The board lives in the daemon's process: the pull and the endpoint of ``run --serve``
share it. When the pull publishes, stops or fails, the model leaves the board and
every waiter wakes to look again (at the published tree, or to answer an error).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from modelcar.format.chunks import ChunkIndex
from modelcar.format.fileindex import FileEntry, FileIndex

Outcome = Literal["ready", "failed", "gone", "timeout"]
#: A chunk within this many of where the pull's writer is is not fetched ahead.
AHEAD_GAP = 1


@dataclass
class Pulling:
    """One model being pulled: where its files are staged and what of them is verified."""

    staging: Path
    files: dict[str, FileEntry]
    chunks: ChunkIndex | None
    #: path -> verified chunk numbers (a v1 image: {0} once the whole file verified)
    verified: dict[str, set[int]] = field(default_factory=dict)
    error: str | None = None
    #: path -> the last chunk the sequential pull verified (its place in the file)
    reached: dict[str, int] = field(default_factory=dict)
    #: fetches chunks a reader asks for ahead of the sequential pull (:mod:`.ahead`)
    ahead: Callable[[str, list[int]], None] | None = None
    #: held while a staged chunk's bytes are written or it is marked verified: a
    #: writer checks "not verified" and writes under it, so a marked chunk stays as is
    lock: threading.Lock = field(default_factory=threading.Lock)

    def span(self, path: str, first: int, end: int) -> range:
        """The units (chunks, or the one whole file of a v1 image) under ``[first, end)``."""
        size = self.files[path].size
        if self.chunks is None:
            return range(1) if end > first else range(0)
        return self.chunks.span(size, first, end)


class Board:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pulls: dict[str, Pulling] = {}

    def begin(
        self,
        model: str,
        staging: Path,
        index: FileIndex,
        chunks: ChunkIndex | None,
        ahead: Callable[[str, list[int]], None] | None = None,
    ) -> None:
        with self._cond:
            old = self._pulls.get(model)
            keep = old is not None and old.error is None  # a wave's next try
            self._pulls[model] = Pulling(
                staging,
                {f.path: f for f in index.files},
                chunks,
                verified=old.verified if keep else {},  # type: ignore[union-attr]  # keep: not None
                ahead=ahead,
                lock=old.lock if keep else threading.Lock(),  # type: ignore[union-attr]  # keep: not None
            )
            self._cond.notify_all()

    def want(self, model: str, path: str, first: int, end: int) -> None:
        """A reader needs bytes ``[first, end)``: ask for the chunks not verified yet
        ahead of the sequential pull (a v1 image's pull has no way to)."""
        with self._cond:
            pull = self._pulls.get(model)
            if pull is None or pull.ahead is None or pull.error is not None:
                return
            have = pull.verified.get(path, set())
            # chunks the pull's writer will reach within AHEAD_GAP are left to it: a
            # second download of them would only slow the pull down
            near = pull.reached.get(path, -(1 << 30)) + AHEAD_GAP
            missing = [u for u in pull.span(path, first, end) if u not in have and u > near]
            ahead = pull.ahead
        if missing:
            ahead(path, missing)

    def models(self) -> list[str]:
        with self._cond:
            return [m for m, pull in self._pulls.items() if pull.error is None]

    def get(self, model: str) -> Pulling | None:
        with self._cond:
            return self._pulls.get(model)

    def verified(self, model: str, path: str, unit: int, *, sequential: bool = False) -> None:
        """Chunk ``unit`` of ``path`` matched its digest (``sequential``: by the pull's
        own writer, which is then that far in the file)."""
        with self._cond:
            pull = self._pulls.get(model)
            if pull is not None:
                pull.verified.setdefault(path, set()).add(unit)
                if sequential:
                    pull.reached[path] = unit
                self._cond.notify_all()

    def is_verified(self, model: str, path: str, unit: int) -> bool:
        with self._cond:
            pull = self._pulls.get(model)
            return pull is not None and unit in pull.verified.get(path, ())

    def failed(self, model: str, error: str) -> None:
        """The pull failed: its staged bytes are no longer handed out."""
        with self._cond:
            pull = self._pulls.get(model)
            if pull is not None:
                pull.error = error
                pull.verified.clear()
                self._cond.notify_all()

    def end(self, model: str) -> None:
        """The pull published (or stopped): readers look at the published tree."""
        with self._cond:
            self._pulls.pop(model, None)
            self._cond.notify_all()

    def wait(self, model: str, path: str, first: int, end: int, seconds: float) -> Outcome:
        """Wait until every unit under bytes ``[first, end)`` of ``path`` is verified."""
        deadline = time.monotonic() + seconds
        with self._cond:
            while True:
                pull = self._pulls.get(model)
                if pull is None:
                    return "gone"
                if pull.error is not None:
                    return "failed"
                have = pull.verified.get(path, set())
                if all(u in have for u in pull.span(path, first, end)):
                    return "ready"
                left = deadline - time.monotonic()
                if left <= 0:
                    return "timeout"
                self._cond.wait(min(left, 5.0))

    def wait_for(self, model: str, seconds: float, published: Callable[[], bool]) -> Pulling | None:
        """The model's pull once it has begun (its file index read), waiting at most
        ``seconds`` for a wanted model whose pull has not begun yet; None if it has not,
        or if it is ``published`` meanwhile."""
        deadline = time.monotonic() + seconds
        with self._cond:
            while (pull := self._pulls.get(model)) is None:
                left = deadline - time.monotonic()
                if left <= 0 or published():
                    return None
                self._cond.wait(min(left, 1.0))
            return pull
