"""Small helpers for the API tests."""

from __future__ import annotations

import hashlib

import httpx


def digest(seed: object) -> str:
    return "sha256:" + hashlib.sha256(str(seed).encode()).hexdigest()


def register(c: httpx.Client, name: str, seed: object, **fields) -> httpx.Response:
    body = {"digest": digest(seed), "repository": "registry.example:5000/team/" + name, **fields}
    return c.post(f"/v1/models/{name}/versions", json=body)


def error_of(r: httpx.Response) -> dict:
    """The JSON error body; every error answer must have one."""
    assert r.headers["content-type"].startswith("application/json"), r.text
    err = r.json()["error"]
    assert err["code"] and err["message"] and "\n" not in err["message"]
    return err
