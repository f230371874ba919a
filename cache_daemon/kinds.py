"""How each kind of model image is fetched into staging: one small strategy per kind.

* :class:`ModelcarLayers` — a modelcar: the file index travels in the config, layers
  are independent and go in parallel, each resumable mid-layer from its journal;
* :class:`HandBuiltLayers` — a container image with ``/models``: layers apply in
  order, as a runtime applies them (a later one overwrites, whiteouts delete);
* :class:`ArtifactLayers` — a ModelPack or KitOps artifact: disjoint layers, in
  parallel.

For another tool's image the node computes the file index while unpacking; a layer
finished before a stop is kept (its result in the journal dir), one cut off is done
again from its start, except a raw layer, which goes on from its file's size. Each
strategy returns the file index of what it staged; the :class:`~.pull.Puller` checks
and publishes it.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Callable
from typing import Protocol

from modelcar.cache_daemon.ingest import Job, LayerIngest, file_size, run_all, unpack_part
from modelcar.cache_daemon.served import Served
from modelcar.errors import ImageFormatError, UnsafeArchive
from modelcar.format.fileindex import FileEntry, FileIndex
from modelcar.format.foreign import FORMAT_NAMES, ForeignImage, Part
from modelcar.format.image import ModelImage
from modelcar.format.unpack import Unpacked, index_of

log = logging.getLogger("modelcar.cache")

#: Called with each path a layer writes (refuses one another layer wrote).
Claim = Callable[[str], None]


class Strategy(Protocol):
    def fetch(self, job: Job) -> FileIndex:
        """Stage every file of the image under ``job.staging``; their index."""
        ...


def strategy_for(model: ModelImage | ForeignImage) -> Strategy:
    if isinstance(model, ModelImage):
        return ModelcarLayers(model)
    return HandBuiltLayers(model) if model.in_order else ArtifactLayers(model)


def _fresh_staging(job: Job) -> None:
    """A staging dir to resume, or a new one (then no journal or finished layer counts)."""
    if not job.staging.exists():
        job.cache.db.clear_layers(job.digest)
        job.cache.drop_journals(job.digest)
    job.staging.mkdir(parents=True, exist_ok=True)


class ModelcarLayers:
    def __init__(self, model: ModelImage):
        self.model = model

    def fetch(self, job: Job) -> FileIndex:
        _fresh_staging(job)
        files = self.model.files
        layers = self.model.model_layers
        done = job.cache.db.layers_done(job.digest) & {d.digest for d in layers}
        for layer in list(done):  # trust a finished layer only if its files are all there
            if any(
                f.layer == layer and file_size(job.staging / f.path) != f.size
                for f in files.values()
            ):
                done.discard(layer)
        job.progress.add(sum(f.size for f in files.values() if f.layer in done))
        todo = [LayerIngest(job, d, files) for d in layers if d.digest not in done]
        run_all(job.threads, [ingest.run for ingest in todo], job.cancel)
        return self.model.index


class _Foreign:
    """Another tool's image: unpacked layer by layer, its index computed."""

    def __init__(self, model: ForeignImage):
        self.model = model

    def fetch(self, job: Job) -> FileIndex:
        _fresh_staging(job)
        jdir = job.cache.journal_dir(job.digest)
        jdir.mkdir(exist_ok=True)
        parts = self.model.parts
        keys = [f"{i:04d}-{p.layer.digest.split(':', 1)[1]}" for i, p in enumerate(parts)]
        results = self._finished(job, keys)
        job.progress.add(
            sum(p.layer.size for p, k in zip(parts, keys, strict=True) if k in results)
        )
        written = sum(size for done in results.values() for size, _ in done.files.values())
        reservation = _Reservation(job, self.model.size, written)
        claim = self._claims(results)

        def one(part: Part, key: str) -> None:
            results[key] = unpack_part(job, part, claim(key), reservation.add)
            tmp = jdir / f"{key}.json.tmp"
            tmp.write_text(json.dumps(results[key].to_json()))
            tmp.rename(jdir / f"{key}.json")
            if part.raw_path is not None and part.raw_path in results[key].files:
                _serve_raw(job, part, results[key])
                if job.on_layer:
                    job.on_layer()

        todo = [(p, k) for p, k in zip(parts, keys, strict=True) if k not in results]
        self._run(job, [functools.partial(one, p, k) for p, k in todo])
        index = index_of([(p.layer.digest, results[k]) for p, k in zip(parts, keys, strict=True)])
        if not index.files:
            raise ImageFormatError(
                f"a {FORMAT_NAMES[self.model.format]} image with no model files",
                subject=self.model.digest,
                hint="a hand-built modelcar keeps its files under /models",
            )
        return index

    def _finished(self, job: Job, keys: list[str]) -> dict[str, Unpacked]:
        """The layers a stop left done (each one's result saved beside the journals)."""
        results: dict[str, Unpacked] = {}
        jdir = job.cache.journal_dir(job.digest)
        for key in keys:
            try:
                results[key] = Unpacked.from_json(json.loads((jdir / f"{key}.json").read_text()))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return results

    def _claims(
        self, results: dict[str, Unpacked]
    ) -> Callable[[str], Callable[[str], None] | None]:
        return lambda key: None

    def _run(self, job: Job, tasks: list[Callable[[], None]]) -> None:
        raise NotImplementedError


def _serve_raw(job: Job, part: Part, done: Unpacked) -> None:
    """A raw layer is its file: served from it (the layer's digest was its bytes')."""
    assert part.raw_path is not None
    size, sha256 = done.files[part.raw_path]
    entry = FileEntry(path=part.raw_path, size=size, sha256=sha256, layer=part.layer.digest)
    Served(job.cache).layer(
        job.digest, part.layer.digest, part.layer.size, part.layer.mediaType, [entry], kind="raw"
    )


class HandBuiltLayers(_Foreign):
    """Layers in order: after the first one to redo, every later one is redone."""

    def _finished(self, job: Job, keys: list[str]) -> dict[str, Unpacked]:
        results = super()._finished(job, keys)
        first = next((i for i, k in enumerate(keys) if k not in results), len(keys))
        return {k: results[k] for k in keys[:first]}

    def _run(self, job: Job, tasks: list[Callable[[], None]]) -> None:
        for task in tasks:
            task()


class ArtifactLayers(_Foreign):
    """Disjoint layers, in parallel: a file in two of them is refused."""

    def _claims(
        self, results: dict[str, Unpacked]
    ) -> Callable[[str], Callable[[str], None] | None]:
        claimed = {path: key for key, done in results.items() for path in done.files}
        lock = threading.Lock()

        def claim(key: str) -> Claim:
            def one_path(path: str) -> None:
                with lock:
                    if claimed.setdefault(path, key) != key:
                        raise UnsafeArchive("the same file in two layers", subject=path)

            return one_path

        return claim

    def _run(self, job: Job, tasks: list[Callable[[], None]]) -> None:
        run_all(job.threads, tasks, job.cancel)


class _Reservation:
    """What a pull holds against the budget. A compressed layer's files take more than
    its bytes: as they outgrow the reservation it grows (by a quarter at least), and
    each growth makes room first, so a small layer cannot fill the disk."""

    def __init__(self, job: Job, reserved: int, written: int = 0):
        self.job = job
        self.reserved, self.written = reserved, written
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.written += n
            if self.written <= self.reserved:
                return
            grown = max(self.written, self.reserved + self.reserved // 4)
            if self.job.make_room:
                self.job.make_room(self.job.digest, grown)
            self.job.cache.db.set(self.job.digest, size=grown)
            self.reserved = grown
