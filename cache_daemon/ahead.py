"""Chunks a reader asked for, fetched ahead of the sequential pull (contract v1.1).

A streamed load reads where it likes; the pull goes layer by layer, in order. When a
reader waits on a chunk the pull has not reached, the chunk's bytes are asked of the
pull's chain as one HTTP range of the layer blob (the file's recorded offset plus the
chunk's place), into a scratch file beside the staging tree, checked against the
chunk's sha256, and only then copied into the staged file and marked verified (under
the file's write lock, so the sequential writer never writes over it). Bytes that do
not match are dropped and counted; the sequential pull will bring that chunk anyway.

At most ``THREADS`` chunks are fetched at once per pull, none twice; the scratch file
keeps the daemon's memory flat whatever the chunk size.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from modelcar.cache_daemon.ingest import Job, write_all
from modelcar.errors import ModelcarError
from modelcar.format.chunks import ChunkIndex
from modelcar.format.fileindex import FileEntry
from modelcar.oci.digest import CHUNK
from modelcar.oci.manifest import Descriptor

log = logging.getLogger("modelcar.cache")

THREADS = 2


class Ahead:
    def __init__(
        self, job: Job, files: dict[str, FileEntry], layers: list[Descriptor], chunks: ChunkIndex
    ):
        self.job, self.files, self.chunks = job, files, chunks
        self.layers = {d.digest: d for d in layers}
        self._pool = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="ahead")
        self._lock = threading.Lock()
        self._asked: set[tuple[str, int]] = set()
        self._closed = False
        #: chunks fetched ahead and verified, and their bytes; chunks that did not match
        self.fetched = 0
        self.bytes = 0
        self.bad = 0

    def want(self, path: str, units: list[int]) -> None:
        """Fetch these chunks of ``path`` (those not asked already); returns at once."""
        if path not in self.chunks.files:
            return  # a file of one chunk: its layer's turn comes soon enough
        with self._lock:
            if self._closed:
                return
            for i in units:
                if (path, i) not in self._asked:
                    self._asked.add((path, i))
                    self._pool.submit(self._one, path, i)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _one(self, path: str, i: int) -> None:
        job, board = self.job, self.job.board
        assert board is not None
        if board.is_verified(job.digest, path, i):
            return
        entry = self.files[path]
        start, end = self.chunks.bounds(entry.size, i)
        at = self.chunks.files[path].offset + start
        scratch = job.staging.parent / f".ahead-{job.digest[7:19]}-{threading.get_ident()}"
        try:
            blob = job.blob(self.layers[entry.layer], job.sources, at)
            h = hashlib.sha256()
            with open(scratch, "w+b") as out:
                left = end - start
                try:
                    while left > 0:
                        job.running(entry.layer)
                        data = blob.read(min(CHUNK, left))
                        if not data:
                            raise EOFError("the layer ended before the chunk")
                        h.update(data)
                        out.write(data)
                        left -= len(data)
                finally:
                    blob.close()
                if h.hexdigest() != self.chunks.files[path].sha256[i]:
                    self.bad += 1
                    log.warning(
                        "%s: chunk %d fetched ahead does not match; left to the pull", path, i
                    )
                    return
                out.flush()
                pulling = board.get(job.digest)
                if pulling is None:
                    return
                target = job.staging / path
                target.parent.mkdir(parents=True, exist_ok=True)
                flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                fd = os.open(target, flags, 0o644)
                try:
                    with pulling.lock:
                        if board.is_verified(job.digest, path, i):
                            return
                        out.seek(0)
                        pos = start
                        while block := out.read(CHUNK):
                            write_all(fd, block, pos)
                            pos += len(block)
                        board.verified(job.digest, path, i)
                finally:
                    os.close(fd)
            self.fetched += 1
            self.bytes += end - start
        except (ModelcarError, OSError, EOFError) as e:
            log.info(
                "%s: chunk %d not fetched ahead (%s); left to the pull",
                path,
                i,
                e.one_line() if isinstance(e, ModelcarError) else e,
            )
        finally:
            scratch.unlink(missing_ok=True)
            with self._lock:
                self._asked.discard((path, i))
