"""Bearer tokens and roles.

A token is ``mct_`` + 32 random bytes (urlsafe base64). Only its sha256 is
stored: the secret has 256 bits of entropy, so a fast hash is as safe as a
slow one, and a lookup is one indexed query.

Roles: ``read`` < ``publish`` < ``admin``; ``node`` speaks for one node only.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from modelcar.contract.wire import Role
from modelcar.errors import Forbidden, Unauthorized

TOKEN_PREFIX = "mct_"
_RANK = {"read": 1, "publish": 2, "admin": 3}


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is asking: a token's name, role and (for ``node``) its node; or anonymous."""

    name: str
    role: Role | None
    node: str | None = None

    @property
    def anonymous(self) -> bool:
        return self.role is None

    def require(self, role: Role) -> None:
        """At least ``role`` (read, publish or admin)."""
        if self.anonymous:
            raise Unauthorized("this endpoint needs a bearer token")
        if _RANK.get(self.role or "", 0) < _RANK[role]:
            raise Forbidden(f"a {self.role} token cannot do this; it needs the {role} role")

    def require_node(self, node: str, *, write: bool) -> None:
        """Its own node for a ``node`` token; admin (or read, for reads) otherwise."""
        if self.role == "node":
            if self.node != ANY_NODE and self.node != node:
                raise Forbidden(
                    f"a node token for {self.node} cannot act for another node",
                    subject=node,
                    hint="each daemon uses the token of its own node",
                )
            return
        self.require("admin" if write else "read")


ANONYMOUS = Principal(name="anonymous", role=None)
#: A node token for every node: one shared Secret for a DaemonSet, still limited to
#: node status and assignments (no catalog writes, no reads beyond nodes).
ANY_NODE = "*"
