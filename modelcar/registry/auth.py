"""Registry credentials and the Basic/Bearer challenge flow.

Credentials come from docker's ``config.json`` (``$DOCKER_CONFIG``,
``~/.docker/config.json``), the containers ``auth.json`` used by skopeo and
podman (``$REGISTRY_AUTH_FILE``, ``$XDG_RUNTIME_DIR/containers/auth.json``),
and credential helpers (``credHelpers`` / ``credsStore``). Reading and merging
the config files, the helper call and the challenge flow are ours: they must
honour ``$DOCKER_CONFIG`` and run inside httpx's auth flow (streamed uploads);
see docs/decisions/0002-own-oci-client.md.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import threading
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import httpx

from modelcar.errors import AuthenticationFailed, RegistryUnreachable
from modelcar.httpbody import MAX_TOKEN_BYTES, read_body


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


def config_paths(explicit: str | None = None) -> list[Path]:
    paths: list[Path] = []
    if explicit:
        p = Path(explicit)
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


def _load(paths: list[Path]) -> dict:
    out: dict = {"auths": {}, "credHelpers": {}, "credsStore": None}
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
    except (ValueError, KeyError):
        raise AuthenticationFailed(
            f"credential helper {binary} gave no usable answer", subject=host
        ) from None


def find_credentials(host: str, docker_config: str | None = None) -> Credentials | None:
    """Credentials for ``host`` from config files or helpers, or None (anonymous)."""
    try:
        cfg = _load(config_paths(docker_config))
    except (OSError, ValueError) as e:
        raise AuthenticationFailed(f"cannot read docker config ({e})") from None
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
            return Credentials("<token>", entry["identitytoken"])
    if cfg.get("credsStore"):
        return _helper(cfg["credsStore"], host)
    return None


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


class RegistryAuth(httpx.Auth):
    """httpx auth flow: answer Basic and Bearer challenges, cache tokens per scope.

    After the first challenge the scheme is known, so later requests (including
    streamed uploads, whose bodies cannot be replayed) carry credentials up front.
    """

    def __init__(self, host: str, credentials: Credentials | None, verify, timeout: float):
        self.host = host
        self.credentials = credentials
        self.verify = verify
        self.timeout = timeout
        self._scheme: str | None = None
        self._bearer: dict[str, str] = {}
        self._challenge: dict[str, str] = {}
        self._lock = threading.Lock()

    def _token_for(self, scope: str | None) -> str | None:
        if scope is None:
            return self._bearer.get("")
        needed = scope.split(" ")
        for key, token in self._bearer.items():
            have = key.split(" ")
            if all(s in have or s.replace(":pull", ":pull,push") in have for s in needed):
                return token
        return None

    def _apply(self, request: httpx.Request) -> None:
        if self._scheme == "basic" and self.credentials:
            request.headers["Authorization"] = self.credentials.basic()
        elif self._scheme == "bearer":
            token = self._token_for(scope_for(request))
            if token:
                request.headers["Authorization"] = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        self._apply(request)
        response = yield request
        if response.status_code != 401:
            return
        scheme, params = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if scheme == "basic":
            if not self.credentials:
                raise AuthenticationFailed(
                    "registry requires credentials",
                    subject=self.host,
                    hint="log in (docker/skopeo/podman login) or add them to config.json",
                )
            if request.headers.get("Authorization") == self.credentials.basic():
                raise AuthenticationFailed("registry rejected the credentials", subject=self.host)
            self._scheme = "basic"
        elif scheme == "bearer":
            scope = params.get("scope") or scope_for(request) or ""
            extra = scope_for(request)
            if extra:
                scope = " ".join(dict.fromkeys((scope + " " + extra).split()))
            if (
                request.headers.get("Authorization", "").startswith("Bearer ")
                and self._token_for(scope) is not None
            ):
                raise AuthenticationFailed("registry refused the access token", subject=self.host)
            self._fetch_token(params, scope)
            self._scheme = "bearer"
        else:
            raise AuthenticationFailed(
                "registry asked for an unsupported auth scheme",
                subject=f"{self.host} ({scheme or 'none'})",
            )
        self._apply(request)
        yield request

    def _fetch_token(self, params: dict[str, str], scope: str) -> None:
        realm = params.get("realm")
        if not realm:
            raise AuthenticationFailed("bearer challenge without a realm", subject=self.host)
        query: list[tuple[str, str]] = []
        if params.get("service"):
            query.append(("service", params["service"]))
        query += [("scope", s) for s in scope.split()]
        headers = {"Authorization": self.credentials.basic()} if self.credentials else {}
        try:
            with (
                httpx.Client(verify=self.verify, timeout=self.timeout) as c,
                c.stream("GET", realm, params=query, headers=headers) as r,
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
        try:
            body = json.loads(data)
            token = body.get("token") or body["access_token"]
        except (ValueError, KeyError):
            raise AuthenticationFailed("token service gave no token", subject=realm) from None
        with self._lock:
            self._bearer[scope] = token
