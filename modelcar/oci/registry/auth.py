"""Registry credentials and the Basic/Bearer challenge flow.

Credentials come from docker's ``config.json`` (``$DOCKER_CONFIG``,
``~/.docker/config.json``), the containers ``auth.json`` used by skopeo and
podman (``$REGISTRY_AUTH_FILE``, ``$XDG_RUNTIME_DIR/containers/auth.json``),
and credential helpers (``credHelpers`` / ``credsStore``). Reading and merging
the config files, the helper call and the challenge flow are ours: they must
honour ``$DOCKER_CONFIG`` and run inside httpx's auth flow (streamed uploads);
see docs/decisions/0002-own-oci-client.md.

Long-lived processes (the node daemon) outlive both tokens and credentials, so
(docs/decisions/0020-credentials-that-expire.md):

* credentials are re-read when a config file changes on disk (a rotated Secret),
  when the registry or its token service refuses them (once: a wrong password
  fails at once, it does not storm), and at least every ``REFRESH_SECONDS``
  (credential helpers: ECR passwords last 12 hours);
* a bearer token is used only until shortly before the ``expires_in`` (and
  ``issued_at``) its token service gave; a 401 to a request that carried a token
  drops that token, fetches a new one once and sends the request again. Only a
  second 401 in a row is a refusal. A request whose body cannot be sent twice (a
  streamed upload) raises :class:`TokenExpired` instead, which the upload code
  retries from the start of the chunk or blob.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import ssl
import subprocess
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from modelcar import decode
from modelcar.errors import (
    AuthenticationFailed,
    RegistryUnreachable,
    TokenExpired,
)
from modelcar.filestamp import Stamp, stamp
from modelcar.http.body import MAX_TOKEN_BYTES, read_body
from modelcar.http.client import new_client


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    @property
    def identity_token(self) -> str | None:
        """The OAuth2 refresh token `docker login` keeps as ``identitytoken``, if that
        is what these are (then they go to the token service's POST, never as Basic)."""
        return self.password if self.username == IDENTITY_TOKEN_USER else None

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


#: The user name `docker login` leaves blank for an identity token.
IDENTITY_TOKEN_USER = "<token>"
#: What we call ourselves to an OAuth2 token service.
CLIENT_ID = "modelcar"

#: Credentials are re-read at least this often by long-lived processes.
REFRESH_SECONDS = 300.0
#: Without ``expires_in`` a token lives 60 s (the Docker token specification).
DEFAULT_TOKEN_SECONDS = 60.0


def config_paths(explicit: str | None = None) -> list[Path]:
    """The config files to merge: ``explicit`` (files or dirs holding config.json,
    several separated by ':', later ones winning) or the usual places."""
    paths: list[Path] = []
    if explicit:
        for part in explicit.split(os.pathsep):
            if part:
                p = Path(part)
                paths.append(p / "config.json" if p.is_dir() else p)
        return paths
    if os.environ.get("REGISTRY_AUTH_FILE"):
        paths.append(Path(os.environ["REGISTRY_AUTH_FILE"]))
    if os.environ.get("XDG_RUNTIME_DIR"):
        paths.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    docker_dir = os.environ.get("DOCKER_CONFIG")
    paths.append(
        Path(docker_dir) / "config.json" if docker_dir else Path.home() / ".docker" / "config.json"
    )
    return paths


def _load(paths: list[Path]) -> dict[str, Any]:
    out: dict[str, Any] = {"auths": {}, "credHelpers": {}, "credsStore": None}
    for p in paths:
        if not p.is_file():
            continue
        cfg = json.loads(p.read_text())
        out["auths"].update(cfg.get("auths") or {})
        out["credHelpers"].update(cfg.get("credHelpers") or {})
        out["credsStore"] = out["credsStore"] or cfg.get("credsStore")
    return out


def _host_keys(host: str) -> list[str]:
    keys = [host, f"https://{host}", f"http://{host}", f"https://{host}/v2/", f"https://{host}/v1/"]
    if host in ("docker.io", "registry-1.docker.io"):
        keys += ["https://index.docker.io/v1/", "index.docker.io", "docker.io"]
    return keys


def _helper(name: str, host: str) -> Credentials | None:
    binary = f"docker-credential-{name}"
    try:
        proc = subprocess.run(
            [binary, "get"], input=host.encode(), capture_output=True, timeout=30, check=False
        )
    except FileNotFoundError:
        raise AuthenticationFailed(
            f"credential helper {binary} not found",
            subject=host,
            hint="install it or remove it from config.json",
        ) from None
    except subprocess.TimeoutExpired:
        raise AuthenticationFailed(f"credential helper {binary} timed out", subject=host) from None
    if proc.returncode != 0:
        # Helpers answer "credentials not found" with an error: that means anonymous.
        return None
    try:
        payload = json.loads(proc.stdout)
        return Credentials(payload["Username"], payload["Secret"])
    except (ValueError, KeyError, TypeError, RecursionError):
        raise AuthenticationFailed(
            f"credential helper {binary} gave no usable answer", subject=host
        ) from None


def find_credentials(host: str, docker_config: str | None = None) -> Credentials | None:
    """Credentials for ``host`` from config files or helpers, or None (anonymous)."""
    try:
        cfg = _load(config_paths(docker_config))
    except (OSError, ValueError, RecursionError, AttributeError) as e:
        raise AuthenticationFailed(f"cannot read docker config ({type(e).__name__})") from None
    helper = cfg.get("credHelpers", {}).get(host)
    if helper:
        return _helper(helper, host)
    for key in _host_keys(host):
        entry = cfg.get("auths", {}).get(key)
        if not entry:
            continue
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except ValueError:
                raise AuthenticationFailed(
                    "malformed auth entry in docker config", subject=host
                ) from None
            return Credentials(user, password)
        if entry.get("username"):
            return Credentials(entry["username"], entry.get("password", ""))
        if entry.get("identitytoken"):
            return Credentials(IDENTITY_TOKEN_USER, entry["identitytoken"])
    if cfg.get("credsStore"):
        return _helper(cfg["credsStore"], host)
    return None


def _local_kind(host: str) -> str | None:
    """ "loopback" or "link-local" (a metadata service's range) for such a host."""
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return "loopback"
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return None
    if ip.is_loopback or ip.is_unspecified:
        return "loopback"
    return "link-local" if ip.is_link_local else None


def check_realm(realm: str, registry: httpx.URL) -> httpx.URL:
    """The token service a 401 names, if credentials may go there: http(s) with no
    user info; plain http only for a plain-http registry; a loopback or link-local
    host (a metadata service, a local port) only for a registry on one itself.
    AuthenticationFailed otherwise: a registry cannot send our credentials anywhere."""
    try:
        url = httpx.URL(realm)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise AuthenticationFailed(
            "the registry named an invalid token realm", subject=realm[:200]
        ) from None
    why = None
    if url.scheme not in ("https", "http") or not url.host:
        why = "a token realm that is no http(s) URL"
    elif url.userinfo:
        why = "a token realm with user info"
    elif url.scheme == "http" and registry.scheme == "https":
        why = "a plain-http token realm for an https registry"
    elif (kind := _local_kind(url.host)) and kind != _local_kind(registry.host):
        why = f"a token realm on a {kind} address"
    if why:
        raise AuthenticationFailed(
            f"refused {why}",
            subject=realm[:200],
            hint="no credentials were sent; check the registry",
        )
    return url


_CHALLENGE_RE = re.compile(r'(\w+)="([^"]*)"')
_REPO_PATH_RE = re.compile(r"^/v2/(?P<name>.+?)/(?:manifests|blobs|tags)/")


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_CHALLENGE_RE.findall(rest))


def scope_for(request: httpx.Request) -> str | None:
    m = _REPO_PATH_RE.match(request.url.path)
    if not m:
        return None
    actions = "pull" if request.method in ("GET", "HEAD") else "pull,push"
    scopes = [f"repository:{m['name']}:{actions}"]
    mount_from = request.url.params.get("from")
    if mount_from:
        scopes.append(f"repository:{mount_from}:pull")
    return " ".join(scopes)


class CredentialStore:
    """One host's credentials, re-read when the config files change on disk, on
    :meth:`refresh` (after a refusal), and every ``REFRESH_SECONDS``."""

    def __init__(self, host: str, docker_config: str | None = None):
        self.host = host
        self.docker_config = docker_config
        self._creds: Credentials | None = None
        self._stamp: Stamp | None = None
        self._loaded_at = float("-inf")
        self._lock = threading.Lock()
        self.loads = 0

    def _files_stamp(self) -> Stamp:
        return stamp(config_paths(self.docker_config))

    def get(self) -> Credentials | None:
        with self._lock:
            stamp = self._files_stamp()
            stale = time.monotonic() - self._loaded_at > REFRESH_SECONDS
            if stale or stamp != self._stamp:
                self._load(stamp)
            return self._creds

    def refresh(self) -> bool:
        """Read the credentials again now; True if they changed."""
        with self._lock:
            before = self._creds
            self._load(self._files_stamp())
            return self._creds != before

    def _load(self, stamp: Stamp) -> None:
        try:
            self._creds = find_credentials(self.host, self.docker_config)
        except AuthenticationFailed:
            if not self.loads:
                raise
            # a config caught mid-rewrite, or a helper failing once: keep what worked
            # and read again on the next request
            return
        self._stamp, self._loaded_at = stamp, time.monotonic()
        self.loads += 1


@dataclass
class _Token:
    value: str
    expires: float  # time.monotonic() after which it is not used
    fetched: float = 0.0  # time.monotonic() when it was issued to us

    def fresh(self, newer_than: float = float("-inf")) -> bool:
        return time.monotonic() < self.expires and self.fetched > newer_than


def _lifetime(body: dict[str, Any]) -> float:
    """Seconds this token may still be used: ``expires_in`` counted from ``issued_at``
    (when given and sane), less a margin so it is renewed before the registry refuses."""
    try:
        seconds = float(body.get("expires_in") or DEFAULT_TOKEN_SECONDS)
    except (TypeError, ValueError):
        seconds = DEFAULT_TOKEN_SECONDS
    issued = body.get("issued_at")
    if isinstance(issued, str):
        try:
            age = time.time() - datetime.fromisoformat(issued.replace("Z", "+00:00")).timestamp()
            if 0 < age < seconds:  # a skewed clock in the future is ignored
                seconds -= age
        except ValueError:
            pass
    return max(0.0, seconds - min(30.0, seconds * 0.2))


def _replayable(request: httpx.Request) -> bool:
    return isinstance(request.stream, httpx.ByteStream)


class RegistryAuth(httpx.Auth):
    """httpx auth flow: answer Basic and Bearer challenges, cache tokens per scope
    until they expire, renew them on a 401, and re-read refused credentials once.

    After the first challenge the scheme is known, so later requests (including
    streamed uploads, whose bodies cannot be replayed) carry credentials up front,
    and a bearer token is fetched before a request that has no fresh one.
    """

    def __init__(
        self,
        host: str,
        credentials: CredentialStore,
        verify: ssl.SSLContext | bool,
        timeout: float,
    ):
        self.host = host
        self.credentials = credentials
        self.verify = verify
        self.timeout = timeout
        self._scheme: str | None = None
        self._registry = httpx.URL(f"https://{host}/")  # the URL that sent the challenge
        self._challenge: dict[str, str] = {}
        self._bearer: dict[str, _Token] = {}
        self._lock = threading.Lock()
        self.tokens_fetched = 0

    def _token_for(self, scope: str | None, newer_than: float = float("-inf")) -> str | None:
        if scope is None:
            t = self._bearer.get("")
            return t.value if t and t.fresh(newer_than) else None
        needed = scope.split(" ")
        for key, token in list(self._bearer.items()):
            if not token.fresh(newer_than):
                continue
            have = key.split(" ")
            if all(s in have or s.replace(":pull", ":pull,push") in have for s in needed):
                return token.value
        return None

    def _drop(self, value: str) -> float:
        """Forget a refused token and every token obtained no later than it (the
        registry will refuse those too); return when the refused one was obtained."""
        with self._lock:
            when = max(
                (t.fetched for t in self._bearer.values() if t.value == value),
                default=time.monotonic(),
            )
            for key, token in list(self._bearer.items()):
                if token.fetched <= when:
                    del self._bearer[key]
            return when

    def _apply(self, request: httpx.Request) -> None:
        request.headers.pop("Authorization", None)
        if self._scheme == "basic":
            creds = self.credentials.get()
            if creds:
                request.headers["Authorization"] = creds.basic()
        elif self._scheme == "bearer":
            scope = scope_for(request)
            token = self._token_for(scope)
            if token is None and scope is not None and self._challenge.get("realm"):
                token = self._fetch_token(self._challenge, scope)  # renew before it is refused
            if token:
                request.headers["Authorization"] = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        self._apply(request)
        response = yield request
        if response.status_code != 401:
            return
        sent = request.headers.get("Authorization", "")
        scheme, params = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if scheme == "basic":
            creds = self.credentials.get()
            if creds and sent == creds.basic() and self.credentials.refresh():
                creds = self.credentials.get()  # a rotated password: try the new one once
            elif creds and sent == creds.basic():
                raise AuthenticationFailed("registry rejected the credentials", subject=self.host)
            if not creds:
                raise AuthenticationFailed(
                    "registry requires credentials",
                    subject=self.host,
                    hint="log in (docker/skopeo/podman login) or add them to config.json",
                )
            self._scheme = "basic"
        elif scheme == "bearer":
            scope = params.get("scope") or scope_for(request) or ""
            extra = scope_for(request)
            if extra:
                scope = " ".join(dict.fromkeys((scope + " " + extra).split()))
            refused = float("-inf")
            if sent.startswith("Bearer "):  # expired or revoked: renew once
                refused = self._drop(sent.removeprefix("Bearer "))
            self._registry = request.url
            self._challenge = params
            self._scheme = "bearer"
            self._fetch_token(params, scope, newer_than=refused)
        else:
            raise AuthenticationFailed(
                "registry asked for an unsupported auth scheme",
                subject=f"{self.host} ({scheme or 'none'})",
            )
        if not _replayable(request):
            raise TokenExpired("registry refused a streamed request's token", subject=self.host)
        self._apply(request)
        retry = yield request
        if retry.status_code == 401 and scheme == "bearer":
            raise AuthenticationFailed("registry refused the access token", subject=self.host)

    def _fetch_token(
        self, params: dict[str, str], scope: str, newer_than: float = float("-inf")
    ) -> str:
        with self._lock:
            token = self._token_for(scope, newer_than)  # another thread may have renewed it
            if token is not None:
                return token
            try:
                body = self._request_token(params, scope)
            except AuthenticationFailed:
                if not self.credentials.refresh():  # one re-read of rotated credentials
                    raise
                body = self._request_token(params, scope)
            try:
                value: str = body.get("token") or body["access_token"]
            except (AttributeError, KeyError):
                raise AuthenticationFailed(
                    "token service gave no token", subject=params.get("realm")
                ) from None
            now = time.monotonic()
            self._bearer[scope] = _Token(value, now + _lifetime(body), fetched=now)
            self.tokens_fetched += 1
            return value

    def _request_token(self, params: dict[str, str], scope: str) -> dict[str, Any]:
        realm = params.get("realm")
        if not realm:
            raise AuthenticationFailed("bearer challenge without a realm", subject=self.host)
        query: list[tuple[str, str | int | float | bool | None]] = []
        if params.get("service"):
            query.append(("service", params["service"]))
        query += [("scope", s) for s in scope.split()]
        url = check_realm(realm, self._registry)
        creds = self.credentials.get()
        refresh = creds.identity_token if creds else None
        method, headers, form = "GET", {}, None
        if refresh is not None:  # OAuth2: the refresh token is exchanged by POST
            method = "POST"
            form = {
                "grant_type": "refresh_token",
                "refresh_token": refresh,
                "client_id": CLIENT_ID,
                "access_type": "offline",
                "service": params.get("service", ""),
                "scope": scope,
            }
            query = []
        elif creds:
            headers = {"Authorization": creds.basic()}
        try:
            with (
                new_client(verify=self.verify, timeout=self.timeout) as c,
                c.stream(method, url, params=query, headers=headers, data=form) as r,
            ):
                status = r.status_code
                data = read_body(r, MAX_TOKEN_BYTES, realm) if status == 200 else b""
        except httpx.HTTPError as e:
            raise RegistryUnreachable(
                f"token service unreachable ({type(e).__name__})", subject=realm
            ) from None
        if status in (401, 403):
            raise AuthenticationFailed("token service rejected the credentials", subject=self.host)
        if status != 200:
            raise AuthenticationFailed(f"token service answered HTTP {status}", subject=realm)
        body = decode.json(data, "the token service's answer", AuthenticationFailed, realm)
        return body if isinstance(body, dict) else {}
