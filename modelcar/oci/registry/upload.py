"""Blob uploads: chunked (POST, PATCH…, PUT) with a streamed monolithic fallback.

Registries differ: some refuse chunked uploads (Google Artifact Registry), and
some answer PATCH with 201 instead of 202 (ECR). Chunked is tried first; a
refusal switches the repository to monolithic uploads (POST, then one PUT
whose body streams the blob with a known Content-Length). Every byte sent is
hashed on the way; if the result differs from the announced digest the upload
is cancelled before it is committed.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Iterator
from typing import Any, Protocol
from urllib.parse import urljoin

import httpx

from modelcar.errors import ChunkedUnsupported, DigestMismatch, RegistryError
from modelcar.oci.registry.errors import check


class Target(Protocol):
    """What an upload needs of a repository: where it is, and a way to send requests
    (the registry client's, with its auth, limits and error mapping)."""

    @property
    def base_url(self) -> str: ...
    @property
    def repository(self) -> str: ...
    @property
    def name(self) -> str: ...

    def request(
        self, method: str, url: str | httpx.URL, *, what: str, **kw: Any
    ) -> httpx.Response: ...


CHUNKED_REFUSED = (400, 404, 405, 416, 501)


class _HashingSource:
    """Pull from a chunk iterator, hashing everything, handing out bodies of bounded size."""

    def __init__(self, chunks: Iterable[bytes]):
        self._it = iter(chunks)
        self._left = b""
        self.hasher = hashlib.sha256()
        self.sent = 0

    def body(self, limit: int | None) -> Iterator[bytes]:
        remaining = limit
        while remaining is None or remaining > 0:
            block = self._left or next(self._it, b"")
            self._left = b""
            if not block:
                return
            if remaining is not None and len(block) > remaining:
                block, self._left = block[:remaining], block[remaining:]
            self.hasher.update(block)
            self.sent += len(block)
            if remaining is not None:
                remaining -= len(block)
            yield block

    @property
    def digest(self) -> str:
        return "sha256:" + self.hasher.hexdigest()


def _location(repo: Target, response: httpx.Response) -> str:
    loc: str | None = response.headers.get("Location")
    if not loc:
        raise RegistryError("registry gave no upload location", subject=repo.name)
    return urljoin(repo.base_url + "/", loc)


def _with_digest(url: str, digest: str) -> httpx.URL:
    return httpx.URL(url).copy_merge_params({"digest": digest})


def start(repo: Target) -> str:
    r = repo.request("POST", f"/v2/{repo.repository}/blobs/uploads/", what=repo.name)
    if r.status_code != 202:
        check(r, repo.name)
        raise RegistryError(
            f"unexpected HTTP {r.status_code} starting an upload", subject=repo.name
        )
    return _location(repo, r)


def cancel(repo: Target, url: str) -> None:
    with contextlib.suppress(RegistryError, httpx.HTTPError):
        repo.request("DELETE", url, what=repo.name)


def _finish_check(repo: Target, src: _HashingSource, digest: str, size: int, url: str) -> None:
    if src.sent != size or src.digest != digest:
        cancel(repo, url)
        raise DigestMismatch(
            f"content changed while uploading (expected {digest}, {size} bytes; "
            f"sent {src.digest}, {src.sent} bytes)"
        )


def monolithic(repo: Target, digest: str, size: int, chunks: Iterable[bytes]) -> int:
    url = start(repo)
    src = _HashingSource(chunks)
    r = repo.request(
        "PUT",
        _with_digest(url, digest),
        content=src.body(None),
        headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        what=f"blob {digest}",
    )
    if r.status_code == 400 and (src.sent != size or src.digest != digest):
        _finish_check(repo, src, digest, size, url)
    check(r, f"blob {digest}")
    return src.sent


def chunked(
    repo: Target, digest: str | None, size: int, chunks: Iterable[bytes], chunk_size: int
) -> tuple[str, int]:
    """Upload in chunks; with ``digest`` None, the digest is what was sent (one pass)."""
    url = start(repo)
    src = _HashingSource(chunks)
    offset = 0
    while offset < size:
        n = min(chunk_size, size - offset)
        r = repo.request(
            "PATCH",
            url,
            content=src.body(n),
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Length": str(n),
                "Content-Range": f"{offset}-{offset + n - 1}",
            },
            what=f"blob {digest}",
        )
        if offset == 0 and r.status_code in CHUNKED_REFUSED:
            cancel(repo, url)
            raise ChunkedUnsupported(f"registry refused a chunked upload (HTTP {r.status_code})")
        if r.status_code not in (201, 202):  # ECR answers PATCH with 201
            check(r, f"blob {digest}")
            raise RegistryError(f"unexpected HTTP {r.status_code} during upload", subject=digest)
        url = _location(repo, r)
        offset += n
    # Anything left in the source means it grew: count it so the check below fails.
    for _ in src.body(None):
        pass
    digest = digest or src.digest
    _finish_check(repo, src, digest, size, url)
    r = repo.request(
        "PUT",
        _with_digest(url, digest),
        content=b"",
        headers={"Content-Length": "0"},
        what=f"blob {digest}",
    )
    check(r, f"blob {digest}")
    return digest, src.sent
