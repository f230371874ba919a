"""The node cache directory: who owns it, where models live, and atomic moves.

<root>/.lock                  held by the one process using the dir
<root>/state.db               per-model state (see state.py)
<root>/models/sha256-<hex>/   published, verified models (what pods mount)
<root>/staging/sha256-<hex>/  pulls in progress (never mounted)
<root>/staging/sha256-<hex>.journal/  their layer journals and finished-layer results
<root>/index/sha256-<hex>.json  each model's file index, for verify and scrub
<root>/quarantine/…           corrupted models, kept for inspection, never served
<root>/served/<hex>.<model hex>.json  what the node serves to peers and its containerd:
                              one record per blob and model holding it (see served.py)
<root>/blobs/sha256-<hex>     the small blobs kept for serving: manifests, configs, bases
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import time
from pathlib import Path

from modelcar.cache_daemon.state import StateDB
from modelcar.contract.nodecache import digest_of_dir_name, model_dir_name
from modelcar.errors import CacheBusy, ModelcarError, StorageError, UsageError
from modelcar.format.fileindex import FileIndex
from modelcar.oci.digest import hex_of

#: Quarantined models kept for inspection; older ones are deleted.
MAX_QUARANTINED = 2


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CacheDir:
    def __init__(self, root: str | Path):
        self.root = Path(root).absolute()
        self._lock_fd: int | None = None
        self._identity: tuple[int, int] | None = None
        self.state: StateDB | None = None

    # --- ownership -------------------------------------------------------------

    def open(self) -> CacheDir:
        try:
            for sub in ("models", "staging", "index", "quarantine", "served", "blobs"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(
                f"cannot use the cache dir ({e.strerror})", subject=str(self.root)
            ) from None
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
                owner = (self.root / ".lock").read_text().strip() or "?"
                raise CacheBusy(
                    "the cache dir is in use", subject=f"{self.root} (pid {owner})"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        st = os.stat(self.root)
        self._identity = (st.st_dev, st.st_ino)
        self.state = StateDB(self.root / "state.db")
        with contextlib.suppress(ModelcarError):  # a full disk: the next pull says so
            self.state.reset_interrupted()
        return self

    @classmethod
    def reader(cls, root: str | Path) -> CacheDir:
        """A read-only view beside the daemon that owns the dir: no lock taken, the
        state read through its own read-only connection, nothing written."""
        cache = cls(root)
        if not (cache.root / "state.db").is_file():
            raise UsageError("not a cache dir (no state.db)", subject=str(cache.root))
        cache.state = StateDB(cache.root / "state.db", readonly=True)
        return cache

    def close(self) -> None:
        if self.state:
            self.state.close()
            self.state = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> CacheDir:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def db(self) -> StateDB:
        assert self.state is not None, "cache dir not opened"
        return self.state

    # --- paths -----------------------------------------------------------------

    def model_dir(self, digest: str) -> Path:
        return self.root / "models" / model_dir_name(digest)

    def staging_dir(self, digest: str) -> Path:
        return self.root / "staging" / model_dir_name(digest)

    def journal_dir(self, digest: str) -> Path:
        """A pull's journals (``<layer hex>``) and finished layers (``NNNN-<hex>.json``)."""
        staging = self.staging_dir(digest)
        return staging.with_name(staging.name + ".journal")

    def layer_journal(self, digest: str, layer: str) -> Path:
        return self.journal_dir(digest) / layer.split(":", 1)[1]

    def drop_journals(self, digest: str) -> None:
        jdir = self.journal_dir(digest)
        if jdir.exists():
            for p in jdir.iterdir():
                p.unlink()
            jdir.rmdir()

    def index_path(self, digest: str) -> Path:
        return self.root / "index" / f"{model_dir_name(digest)}.json"

    def served_records(self, blob: str = "*", model: str = "*") -> list[Path]:
        """The records of what the node serves, for one blob or model (``*``: any)."""
        b = hex_of(blob) if blob != "*" else blob
        m = hex_of(model) if model != "*" else model
        return sorted((self.root / "served").glob(f"{b}.{m}.json"))

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / model_dir_name(digest)

    def forget_served(self, model: str) -> None:
        """The model's files are going: nothing of it is served any more, and a kept
        blob no other model needs goes too."""
        for record in self.served_records(model=model):
            blob_hex = record.name.split(".", 1)[0]
            record.unlink(missing_ok=True)
            if not list((self.root / "served").glob(f"{blob_hex}.*.json")):
                (self.root / "blobs" / f"sha256-{blob_hex}").unlink(missing_ok=True)

    def is_published(self, digest: str) -> bool:
        return self.model_dir(digest).is_dir()

    def published(self) -> list[str]:
        return self._models_in("models")

    def staged(self) -> list[str]:
        """Pulls in progress (their ``….journal`` dirs beside them are not models)."""
        return self._models_in("staging")

    def _models_in(self, sub: str) -> list[str]:
        out = []
        for p in sorted((self.root / sub).iterdir()):
            digest = digest_of_dir_name(p.name)
            if digest and p.is_dir():
                out.append(digest)
        return out

    def load_index(self, digest: str) -> FileIndex:
        return FileIndex.model_validate_json(self.index_path(digest).read_bytes())

    def published_problem(self, digest: str) -> str | None:
        """Why the dir at ``models/sha256-<hex>`` is not a whole published model (no
        saved index, a file missing or of the wrong size, an extra file), or None.
        Sizes only: contents are ``verify``'s and the scrubber's job."""
        try:
            index = self.load_index(digest)
        except (OSError, ValueError):
            return "no file index saved for it"
        root = self.model_dir(digest)
        for f in index.files:
            try:
                st = (root / f.path).lstat()
            except OSError:
                return f"{f.path} is missing"
            if not stat.S_ISREG(st.st_mode) or st.st_size != f.size:
                return f"{f.path} is not the indexed file"
        count = sum(len(files) for _, _, files in os.walk(root))
        if count != len(index.files):
            return f"{count - len(index.files)} files that are not in the index"
        return None

    def vanished(self) -> bool:
        """True if the cache dir was removed or replaced since it was opened."""
        try:
            st = os.stat(self.root)
            os.stat(self.root / "staging")
        except OSError:
            return True
        return self._identity is not None and (st.st_dev, st.st_ino) != self._identity

    def check_writable(self, digest: str) -> None:
        """Before a pull: a dir can be made in staging/ and renamed into models/ (the
        publish step), so a pull never fails only after the whole download."""
        probe = self.staging_dir(digest).with_name(f".probe-{os.getpid()}-{time.time_ns()}")
        dest = self.root / "models" / probe.name
        try:
            probe.mkdir()
            os.rename(probe, dest)
            dest.rmdir()
        except OSError as e:
            with contextlib.suppress(OSError):
                probe.rmdir()
            where = e.filename2 if isinstance(e.filename2, str) else e.filename
            raise StorageError(
                f"cannot publish into the cache ({e.strerror})",
                subject=str(Path(where).parent) if where else str(self.root / "models"),
                hint="the daemon's user must be able to write staging/ and models/, "
                "on one filesystem",
            ) from None

    # --- moves -----------------------------------------------------------------

    def save_index(self, digest: str, index: FileIndex) -> None:
        path = self.index_path(digest)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(index.model_dump_json().encode())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def publish(self, digest: str, index: FileIndex) -> Path:
        """Make the staged tree durable (every directory fsynced; the files were as they
        were written), save its index, then one atomic rename from staging to models;
        the journals go."""
        src, dst = self.staging_dir(digest), self.model_dir(digest)
        try:
            for d in sorted({p.parent for p in src.rglob("*")} | {src}, reverse=True):
                fsync_dir(d)
            self.save_index(digest, index)
            os.rename(src, dst)
            fsync_dir(dst.parent)
            fsync_dir(src.parent)
        except OSError as e:
            raise StorageError(
                f"cannot publish the model ({e.strerror})", subject=str(dst)
            ) from None
        self.drop_journals(digest)
        return dst

    def remove_staging(self, digest: str) -> None:
        self.forget_served(digest)
        shutil.rmtree(self.staging_dir(digest), ignore_errors=True)

    def remove_model(self, digest: str) -> None:
        """Unpublish first (one rename out of models/), then delete at leisure."""
        self.forget_served(digest)
        src = self.model_dir(digest)
        if src.exists():
            doomed = self.root / "staging" / f".evicting-{src.name}-{time.time_ns()}"
            os.rename(src, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
        self.index_path(digest).unlink(missing_ok=True)

    def quarantine(self, digest: str) -> Path:
        """Move a bad model out of models/ (never served), keeping the newest
        MAX_QUARANTINED for inspection; their bytes count against the budget."""
        self.forget_served(digest)
        src = self.model_dir(digest)
        dst = self.root / "quarantine" / f"{src.name}-{time.time_ns()}"
        os.rename(src, dst)
        self.drop_quarantined(keep=MAX_QUARANTINED)
        return dst

    def quarantined(self) -> list[Path]:
        """What quarantine/ holds, oldest first (names end in the time they were moved)."""
        entries = list((self.root / "quarantine").iterdir())
        return sorted(entries, key=lambda p: (p.name.rsplit("-", 1)[-1].zfill(20), p.name))

    def blob_bytes(self) -> int:
        """What the kept blobs take (they count against the budget)."""
        blobs = self.root / "blobs"
        if not blobs.is_dir():  # a cache dir from before this release, read beside its daemon
            return 0
        total = 0
        for p in blobs.iterdir():
            with contextlib.suppress(OSError):  # a blob removed meanwhile
                total += p.stat().st_size
        return total

    def quarantined_bytes(self) -> int:
        total = 0
        for base in self.quarantined():
            for dirpath, _dirs, files in os.walk(base):
                for name in files:
                    with contextlib.suppress(OSError):
                        total += os.lstat(os.path.join(dirpath, name)).st_size
        return total

    def drop_quarantined(self, keep: int = 0) -> int:
        """Remove all but the newest ``keep`` quarantined models; how many went."""
        held = self.quarantined()
        doomed = held[: max(0, len(held) - keep)]
        for p in doomed:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        return len(doomed)

    # --- space -----------------------------------------------------------------

    def filesystem(self) -> tuple[int, int]:
        """(capacity, free) bytes of the filesystem holding the cache."""
        st = os.statvfs(self.root)
        return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
