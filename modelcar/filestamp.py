"""Whether files changed on disk: one stamp for every "re-read it when it changes".

A stamp is (path, inode, mtime in ns, size) per file, following symlinks, so the swap
of a mounted Kubernetes Secret or ConfigMap (a new target behind the same link) counts
as a change even when the new file has the old size and time. A missing file stamps as
(path, None, None, None): its appearance is a change too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

Stamp = tuple[tuple[str, int | None, int | None, int | None], ...]


def stamp(paths: Iterable[str | Path]) -> Stamp:
    out: list[tuple[str, int | None, int | None, int | None]] = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            out.append((str(p), None, None, None))
            continue
        out.append((str(p), st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)
