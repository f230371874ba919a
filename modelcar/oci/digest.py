"""Digests: the ``sha256:<hex>`` type, streaming hashing, verification."""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Protocol

from pydantic import AfterValidator

from modelcar.errors import InvalidDigest

_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
CHUNK = 1 << 20  # 1 MiB: large enough for hashlib to release the GIL, small for memory


def parse_digest(value: str) -> str:
    """Return ``value`` if it is a valid sha256 digest, else raise InvalidDigest."""
    if not isinstance(value, str) or not _DIGEST_RE.match(value):
        raise InvalidDigest("not a sha256 digest", subject=str(value)[:80])
    return value


def _validate(value: str) -> str:
    if not _DIGEST_RE.match(value):
        raise ValueError("must be sha256: followed by 64 lowercase hex characters")
    return value


Digest = Annotated[str, AfterValidator(_validate)]
"""A pydantic-validated ``sha256:<64 hex>`` string."""


def hex_of(digest: str) -> str:
    return parse_digest(digest).split(":", 1)[1]


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Readable(Protocol):
    """Anything with ``read(n)``: a file, a response body, another reader."""

    def read(self, n: int = -1, /) -> bytes: ...


class HashingReader:
    """Wrap a readable stream, hashing and counting everything read through it."""

    def __init__(self, raw: Readable):
        self.raw = raw
        self.hasher = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.hasher.update(data)
        self.count += len(data)
        return data

    def drain(self, chunk: int = CHUNK) -> int:
        """Read and hash what remains; return how many bytes that was."""
        n = 0
        while block := self.read(chunk):
            n += len(block)
        return n

    @property
    def digest(self) -> str:
        return "sha256:" + self.hasher.hexdigest()
