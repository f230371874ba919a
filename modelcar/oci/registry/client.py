"""The OCI distribution client: one ``Repository`` per ``host/repo``.

Manifests travel as exact bytes (never re-serialised) and are checked against
the digest asked for. Blobs stream in both directions; see ``upload.py``.
"""

from __future__ import annotations

import atexit
import contextlib
import ssl
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx

from modelcar.errors import (
    ChunkedUnsupported,
    DigestMismatch,
    RegistryError,
    ResponseTooLarge,
)
from modelcar.http.body import (
    MAX_CONFIG_BYTES,
    MAX_ERROR_BYTES,
    MAX_MANIFEST_BYTES,
    BodyReader,
    human_limit,
    read_body,
    read_error_body,
    stall_timeout,
)
from modelcar.http.client import new_client
from modelcar.oci import mediatypes as mt
from modelcar.oci.digest import Readable, sha256_bytes
from modelcar.oci.manifest import media_type_of
from modelcar.oci.reference import ImageRef
from modelcar.oci.registry import upload
from modelcar.oci.registry.auth import CredentialStore, RegistryAuth
from modelcar.oci.registry.errors import check, translate_transport, with_retries
from modelcar.oci.store import ChunkFactory, FetchedManifest, ImageStore, StoreOptions, Via
from modelcar.version import version

_ClientKey = tuple[str, bool, bool, str | None, str | None, Via | None]
_clients: dict[_ClientKey, tuple[httpx.Client, RegistryAuth]] = {}
_auths: dict[tuple[str, bool, bool, str | None, str | None], RegistryAuth] = {}
T = TypeVar("T")
_clients_lock = threading.Lock()
#: Who we say we are to registries and peers.
USER_AGENT = f"modelcar/{version()}"


@atexit.register
def close_clients() -> None:
    """Close every cached registry client (their pooled connections); at exit too."""
    with _clients_lock:
        for client, _ in _clients.values():
            client.close()
        _clients.clear()


def _verify(options: StoreOptions) -> Any:
    if options.insecure:
        return False
    if options.ca_file:  # trusted besides the system's CAs (a node also pulls from public ones)
        context = ssl.create_default_context()
        context.load_verify_locations(cafile=options.ca_file)
        return context
    return True


def _client_for(host: str, options: StoreOptions) -> tuple[httpx.Client, RegistryAuth]:
    """One pooled httpx client per registry host and option set, and one auth (token
    cache) per registry host, shared by every client that may send its credentials.

    Through a ``Via``, the client sends to the via's endpoint, with its parameters and
    headers, and carries the origin's auth only if the via is to receive credentials;
    otherwise it sends no Authorization at all."""
    via = options.via
    auth_key = (host, options.plain_http, options.insecure, options.ca_file, options.docker_config)
    key = (*auth_key, via)
    with _clients_lock:
        if key not in _clients:
            verify = _verify(options)
            auth = _auths.get(auth_key)
            if auth is None:
                auth = _auths[auth_key] = RegistryAuth(
                    host, CredentialStore(host, options.docker_config), verify, options.timeout
                )
            headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
            headers.update(dict(via.headers) if via else {})
            client = new_client(
                verify=verify,
                auth=auth if via is None or via.credentials else None,
                follow_redirects=True,
                timeout=httpx.Timeout(
                    options.timeout, connect=via.connect_timeout if via else 10.0
                ),
                limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
                # identity: digests and Range offsets are over the stored bytes
                headers=headers,
            )
            if via is not None and via.params:  # (params=None would drop an URL's own query)
                client.params = httpx.QueryParams(dict(via.params))
            _clients[key] = (client, auth)
        return _clients[key]


class Repository:
    """A registry repository as an :class:`~modelcar.oci.store.ImageStore`."""

    def __init__(self, ref: ImageRef, options: StoreOptions):
        self.ref = ref
        self.options = options
        scheme = "http" if options.plain_http else "https"
        self.base_url = f"{scheme}://{ref.api_host}"
        #: who answers: the registry, or the peer or proxy in front of it (for messages)
        self.server = ref.registry
        if options.via is not None:
            self.base_url = options.via.endpoint.rstrip("/")
            self.server = self.base_url.split("://", 1)[-1]
        self.client, self.auth = _client_for(ref.api_host, options)
        self.monolithic = False

    @property
    def repository(self) -> str:
        return self.ref.repository

    @property
    def name(self) -> str:
        return self.ref.name

    # --- plumbing --------------------------------------------------------

    def request(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        what: str,
        limit: int = MAX_ERROR_BYTES,
        **kw: Any,
    ) -> httpx.Response:
        """One request whose answer is read whole, but never past ``limit`` bytes (an
        error answer is cut there) nor slower than the progress rule."""
        if isinstance(url, str) and url.startswith("/"):
            url = self.base_url + url
        rule = self.options.stall if method == "GET" else None
        try:
            request = self.client.build_request(
                method, url, timeout=stall_timeout(self.options.timeout, rule), **kw
            )
            r = self.client.send(request, stream=True)
            try:
                if r.status_code >= 400:
                    body = read_error_body(r)
                else:
                    body = read_body(r, limit, what, rule)
            finally:
                r.close()
        except httpx.HTTPError as e:
            raise translate_transport(e, self.server) from None
        return httpx.Response(r.status_code, headers=r.headers, content=body, request=r.request)

    def _retry(self, fn: Callable[[], T]) -> T:
        return with_retries(fn, self.options.retries)

    # --- blobs -----------------------------------------------------------

    def has_blob(self, digest: str) -> bool:
        def head() -> bool:
            r = self.request("HEAD", f"/v2/{self.ref.repository}/blobs/{digest}", what=digest)
            if r.status_code == 404:
                return False
            check(r, f"{self.ref.name}@{digest}")
            return True

        return self._retry(head)

    def put_blob(self, digest: str, size: int, chunks: ChunkFactory) -> int:
        def attempt() -> int:
            if not self.monolithic and size > self.options.chunk_size:
                try:
                    return upload.chunked(self, digest, size, chunks(), self.options.chunk_size)[1]
                except ChunkedUnsupported:
                    self.monolithic = True
            return upload.monolithic(self, digest, size, chunks())

        return self._retry(attempt)

    def push_blob(self, size: int, chunks: ChunkFactory) -> tuple[str, int] | None:
        """Upload bytes whose digest is not known yet, hashing them on the way (one pass).

        None if this registry takes monolithic uploads only, which need the digest first.
        """
        if self.monolithic:
            return None

        def attempt() -> tuple[str, int] | None:
            try:
                return upload.chunked(self, None, size, chunks(), self.options.chunk_size)
            except ChunkedUnsupported:
                self.monolithic = True
                return None

        return self._retry(attempt)

    def mount_blob(self, digest: str, source: ImageStore) -> bool:
        if not isinstance(source, Repository) or source.ref.api_host != self.ref.api_host:
            return False
        if source.ref.repository == self.ref.repository:
            return self.has_blob(digest)

        def mount() -> bool:
            r = self.request(
                "POST",
                f"/v2/{self.ref.repository}/blobs/uploads/",
                params={"mount": digest, "from": source.ref.repository},
                what=digest,
            )
            if r.status_code == 201:
                return True
            if r.status_code == 202:  # mount not possible; an upload session was opened instead
                upload.cancel(self, upload._location(self, r))
                return False
            check(r, f"{self.ref.name}@{digest}")
            return False

        return self._retry(mount)

    @contextlib.contextmanager
    def open_blob(
        self, digest: str, offset: int = 0, *, limit: int | None = None
    ) -> Iterator[Readable]:
        """The blob from ``offset``, as it arrives; ``limit`` caps the bytes read."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        url = f"{self.base_url}/v2/{self.ref.repository}/blobs/{digest}"
        what = f"{self.ref.name}@{digest}"
        rule = self.options.stall
        try:
            timeout = stall_timeout(self.options.timeout, rule)
            with self.client.stream("GET", url, headers=headers, timeout=timeout) as r:
                if r.status_code >= 400:
                    error = httpx.Response(
                        r.status_code, headers=r.headers, content=read_error_body(r)
                    )
                    check(error, what)
                if offset and r.status_code != 206:
                    raise RegistryError("registry ignored the range request", subject=digest)
                yield BodyReader(r, what=what, limit=limit, stall=rule)
        except httpx.HTTPError as e:
            raise translate_transport(e, self.server) from None

    def read_blob(self, digest: str, max_size: int = MAX_CONFIG_BYTES) -> bytes:
        def get() -> bytes:
            with self.open_blob(digest, limit=max_size) as f:
                data = f.read()
            if sha256_bytes(data) != digest:
                raise DigestMismatch(
                    "blob does not match its digest", subject=f"{self.ref.name}@{digest}"
                )
            return data

        return self._retry(get)

    # --- manifests -------------------------------------------------------

    def _subject(self, reference: str) -> str:
        """``name@sha256:…`` for a digest, ``name:tag`` for a tag."""
        return f"{self.ref.name}{'@' if reference.startswith('sha256:') else ':'}{reference}"

    def get_manifest(self, reference: str) -> FetchedManifest:
        what = self._subject(reference)

        def get() -> FetchedManifest:
            r = self.request(
                "GET",
                f"/v2/{self.ref.repository}/manifests/{reference}",
                headers={"Accept": mt.ACCEPT_MANIFESTS},
                what=what,
                limit=MAX_MANIFEST_BYTES,
            )
            check(r, what)
            data = r.content
            digest = sha256_bytes(data)
            if reference.startswith("sha256:") and digest != reference:
                raise DigestMismatch("manifest does not match the pinned digest", subject=what)
            return FetchedManifest(data, media_type_of(data, r.headers.get("Content-Type")), digest)

        return self._retry(get)

    def referrers(self, digest: str) -> bytes | None:
        """``GET /v2/<name>/referrers/<digest>``; None when the registry has no such API
        (404, or an answer that is not an image index, as Distribution 2.8 gives)."""
        what = f"{self.ref.name}@{digest} referrers"

        def get() -> bytes | None:
            r = self.request(
                "GET",
                f"/v2/{self.ref.repository}/referrers/{digest}",
                headers={"Accept": mt.OCI_INDEX},
                what=what,
                limit=MAX_MANIFEST_BYTES,
            )
            if r.status_code in (404, 405):
                return None
            check(r, what)
            if not r.headers.get("Content-Type", "").startswith(mt.OCI_INDEX):
                return None
            return r.content

        return self._retry(get)

    def head_manifest(self, reference: str) -> str | None:
        """The digest a tag points to, or None if there is no such manifest."""

        def head() -> str | None:
            r = self.request(
                "HEAD",
                f"/v2/{self.ref.repository}/manifests/{reference}",
                headers={"Accept": mt.ACCEPT_MANIFESTS},
                what=reference,
            )
            if r.status_code == 404:
                return None
            check(r, self._subject(reference))
            digest: str | None = r.headers.get("Docker-Content-Digest")
            return digest

        return self._retry(head)

    def put_manifest(self, data: bytes, media_type: str, reference: str) -> str:
        digest = sha256_bytes(data)
        what = self._subject(reference)
        if len(data) > MAX_MANIFEST_BYTES:
            raise ResponseTooLarge(
                f"manifest of {len(data)} bytes is over the {human_limit(MAX_MANIFEST_BYTES)} "
                "registry limit",
                subject=what,
            )

        def put() -> str:
            r = self.request(
                "PUT",
                f"/v2/{self.ref.repository}/manifests/{reference}",
                content=data,
                headers={"Content-Type": media_type},
                what=what,
            )
            check(r, what)
            returned = r.headers.get("Docker-Content-Digest")
            if returned and returned != digest:
                raise DigestMismatch(
                    "registry stored the manifest under another digest",
                    subject=f"{returned} != {digest}",
                )
            return digest

        return self._retry(put)
