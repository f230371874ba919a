"""Which relative paths a model file may have: one rule for the builder and the puller.

A model path is what follows ``/models/`` in the image (and ``models/sha256-<hex>/``
on a node). It is valid when:

* it is valid UTF-8, with no NUL and no backslash (tar readers disagree on ``\\``:
  some treat it as a separator);
* it is relative, ``/``-separated, with no empty, ``.`` or ``..`` part;
* each part is at most 255 bytes (NAME_MAX) and the whole at most 3,840 bytes, so
  that ``<cache dir>/staging/sha256-<64 hex>/<path>`` stays under Linux's PATH_MAX
  (4,096) for a cache dir of up to 170 bytes.

Spaces, newlines and any other Unicode are allowed and kept byte for byte.
"""

from __future__ import annotations

MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 3840


def shown(path: str) -> str:
    """The path for an error message: undecodable bytes and control characters escaped."""
    raw = path.encode("utf-8", "surrogateescape")
    text = raw.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def path_problem(path: str) -> str | None:
    """Why ``path`` cannot be a model path, or None if it can."""
    try:
        raw = path.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8"
    if not path:
        return "empty path"
    if "\0" in path:
        return "NUL in path"
    if "\\" in path:
        return "backslash in path"
    if path.startswith("/"):
        return "absolute path"
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "path with '.', '..' or empty parts"
    if any(len(p.encode()) > MAX_NAME_BYTES for p in parts):
        return f"a path part is over {MAX_NAME_BYTES} bytes"
    if len(raw) > MAX_PATH_BYTES:
        return f"path of {len(raw)} bytes is over the {MAX_PATH_BYTES}-byte limit"
    return None
