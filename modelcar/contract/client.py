"""A small client of ``modelcar-api`` for the builder, the cache daemon and scripts.

Error answers become the same :mod:`modelcar.errors` class the server raised,
with the server's message, so a CLI prints one clear line.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from modelcar.contract import wire as wire
from modelcar.errors import (
    API_ERRORS,
    ApiError,
    ApiUnavailable,
    InvalidRequest,
    ResponseTooLarge,
    Unauthorized,
    UsageError,
)
from modelcar.filestamp import Stamp, stamp
from modelcar.http import retry
from modelcar.http.body import MAX_API_BYTES, read_body
from modelcar.http.client import new_client

API_ENV = "MODELCAR_API"
TOKEN_ENV = "MODELCAR_API_TOKEN"
TOKEN_FILE_ENV = "MODELCAR_API_TOKEN_FILE"
M = TypeVar("M", bound=BaseModel)


class ApiClient:
    """``ApiClient(url, token)``; both default to ``$MODELCAR_API`` / ``$MODELCAR_API_TOKEN``."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        attempts: int = 4,
        verify: bool | str = True,
        token_file: str | None = None,
    ):
        url = url or os.environ.get(API_ENV)
        if not url:
            raise UsageError("no modelcar API address", hint=f"pass --api URL or set {API_ENV}")
        if not url.startswith(("http://", "https://")):
            url = "http://" + url
        self.url = url.rstrip("/")
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.attempts = attempts
        self.token_file = token_file
        self._token_stamp: Stamp | None = None
        self._http = new_client(base_url=self.url, headers=headers, timeout=timeout, verify=verify)
        if token_file:
            self._load_token(force=True)

    def _load_token(self, *, force: bool = False) -> bool:
        """(Re-)read the token file if it changed on disk (a rotated Secret); True if
        the token is now another one."""
        assert self.token_file
        now = stamp([self.token_file])
        if not force and now == self._token_stamp:
            return False
        try:
            with open(self.token_file) as f:
                token = f.read().strip()
        except OSError as e:
            raise UsageError(
                f"cannot read the API token file ({e.strerror})", subject=self.token_file
            ) from None
        if not token:
            raise UsageError("the API token file is empty", subject=self.token_file)
        self._token_stamp = now
        header = f"Bearer {token}"
        changed: bool = self._http.headers.get("Authorization") != header
        self._http.headers["Authorization"] = header
        return changed

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transport -------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send, retrying only when the API is unreachable or answers 503."""

        def once() -> httpx.Response:
            if self.token_file:
                self._load_token()
            try:
                return self._once(method, path, **kwargs)
            except Unauthorized:
                if not (self.token_file and self._load_token(force=True)):
                    raise
                return self._once(method, path, **kwargs)  # once, with the new token

        return retry.call(
            once,
            attempts=self.attempts,
            retryable=lambda e: isinstance(e, ApiUnavailable),
            base=0.25,
        )

    def _once(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            request = self._http.build_request(method, path, **kwargs)
            streamed = self._http.send(request, stream=True)
            try:
                body = read_body(streamed, MAX_API_BYTES, str(request.url))
            finally:
                streamed.close()
        except httpx.HTTPError as e:
            raise ApiUnavailable(
                f"cannot reach the modelcar API ({type(e).__name__})", subject=self.url
            ) from None
        except ResponseTooLarge as e:
            raise ApiError(e.message, subject=e.subject) from None
        response = httpx.Response(
            streamed.status_code, headers=streamed.headers, content=body, request=request
        )
        if response.status_code >= 400:
            raise _error_of(response)
        return response

    def _get(self, path: str, model: type[M], **kwargs: Any) -> M:
        return _parse(model, self.request("GET", path, **kwargs))

    # --- catalog ---------------------------------------------------------------

    def register_version(self, name: str, body: wire.VersionCreate) -> tuple[wire.VersionOut, bool]:
        """Register a version; ``created`` is False when the digest was already there."""
        r = self.request(
            "POST", f"/v1/models/{_q(name)}/versions", json=body.model_dump(mode="json")
        )
        return _parse(wire.VersionOut, r), r.status_code == 201

    def move_alias(self, name: str, alias: str, version: int, reason: str = "") -> wire.AliasOut:
        body = wire.AliasMove(version=version, reason=reason).model_dump()
        r = self.request("PUT", f"/v1/models/{_q(name)}/aliases/{_q(alias)}", json=body)
        return _parse(wire.AliasOut, r)

    def model(self, name: str) -> wire.ModelDetail:
        return self._get(f"/v1/models/{_q(name)}", wire.ModelDetail)

    def resolve(self, ref: str, *, mode: str | None = None) -> wire.ResolveAnswer:
        params = {"mode": mode} if mode else {}
        return self._get(f"/v1/resolve/{_q(ref)}", wire.ResolveAnswer, params=params)

    def resolve_kserve(self, ref: str, *, mode: str | None = None) -> dict[str, Any]:
        params = {"format": "kserve", **({"mode": mode} if mode else {})}
        answer: dict[str, Any] = self.request("GET", f"/v1/resolve/{_q(ref)}", params=params).json()
        return answer

    # --- trust -----------------------------------------------------------------

    def add_signature(self, body: wire.SignatureCreate) -> wire.SignatureOut:
        r = self.request("POST", "/v1/signatures", json=body.model_dump(mode="json"))
        return _parse(wire.SignatureOut, r)

    def add_key(self, body: wire.KeyCreate) -> wire.KeyOut:
        r = self.request("POST", "/v1/keys", json=body.model_dump(mode="json"))
        return _parse(wire.KeyOut, r)

    # --- nodes -----------------------------------------------------------------

    def assignments(self, node: str, labels: dict[str, str] | None = None) -> wire.Assignments:
        params = {}
        if labels is not None:
            params["labels"] = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        return self._get(f"/v1/nodes/{_q(node)}/assignments", wire.Assignments, params=params)

    def put_node_status(self, node: str, body: wire.NodeStatusPut) -> wire.NodeOut:
        r = self.request("PUT", f"/v1/nodes/{_q(node)}/status", json=body.model_dump(mode="json"))
        return _parse(wire.NodeOut, r)

    def take_lease(self, node: str, digest: str) -> wire.LeaseOut:
        body = wire.LeaseRequest(digest=digest).model_dump(mode="json")
        return _parse(
            wire.LeaseOut, self.request("POST", f"/v1/nodes/{_q(node)}/leases", json=body)
        )

    def holders(self, digest: str) -> wire.HoldersOut:
        """The nodes serving ``digest`` to their peers."""
        return self._get(f"/v1/blobs/{digest}/holders", wire.HoldersOut)

    def give_back_lease(self, node: str, digest: str) -> None:
        r = self.request("DELETE", f"/v1/nodes/{_q(node)}/leases/{digest}")
        if r.status_code >= 400:
            raise _error_of(r)

    def rollout(self, name: str, version: int) -> wire.RolloutOut:
        return self._get(f"/v1/models/{_q(name)}/versions/{version}/rollout", wire.RolloutOut)

    def put_policy(self, name: str, body: wire.PolicyPut) -> wire.PolicyOut:
        r = self.request("PUT", f"/v1/policies/{_q(name)}", json=body.model_dump(mode="json"))
        return _parse(wire.PolicyOut, r)


def _q(segment: str) -> str:
    return quote(segment, safe="@:")


def _parse(model: type[M], response: httpx.Response) -> M:
    try:
        return TypeAdapter(model).validate_json(response.content)
    except ValidationError:
        raise ApiError(
            "the modelcar API answered something this client does not understand",
            subject=str(response.request.url),
            hint="check that client and API are the same release",
        ) from None


def _error_of(response: httpx.Response) -> Exception:
    status = response.status_code
    cls = API_ERRORS.get(status) or (ApiUnavailable if status >= 500 else InvalidRequest)
    try:
        detail = wire.ErrorBody.model_validate_json(response.content).error
    except ValidationError:
        return cls(f"the modelcar API answered HTTP {status}", subject=str(response.request.url))
    return cls(detail.message, subject=detail.subject, hint=detail.hint)
