"""Checking an AWS Signature Version 4 ``Authorization`` header (S3 reads, no body).

The node's S3 endpoint has one secret, the fleet credential: a client signs with any
access key id and the fleet token as its secret access key (``AWS_SECRET_ACCESS_KEY``),
in any region, for the service ``s3``. What is checked is what AWS checks: the
canonical request (method, path as sent, sorted query, the signed headers, the payload
hash the client declared), the scope, and a clock within 15 minutes. Query-string
(presigned) signatures are not accepted.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import UTC, datetime, timedelta
from email.message import Message
from urllib.parse import quote, unquote

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
SKEW = timedelta(minutes=15)
_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<akid>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/,\s]+)"
    r"/(?P<service>[^/,\s]+)/aws4_request\s*,\s*SignedHeaders=(?P<signed>[a-z0-9;-]+)\s*,"
    r"\s*Signature=(?P<sig>[0-9a-f]{64})\s*$"
)


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _query(raw: str) -> str:
    pairs = []
    for part in raw.split("&") if raw else []:
        k, _, v = part.partition("=")
        pairs.append((quote(unquote(k), safe="-_.~"), quote(unquote(v), safe="-_.~")))
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def check(
    method: str, target: str, headers: Message, secret: str, now: datetime | None = None
) -> str | None:
    """Why the request's signature does not hold, or None when it does. ``target`` is
    the request line's path and query as sent."""
    m = _AUTH.match(headers.get("Authorization", ""))
    if m is None:
        return "not an AWS4-HMAC-SHA256 authorization"
    if m["service"] != "s3":
        return "signed for another service than s3"
    stamp = headers.get("X-Amz-Date", "")
    try:
        when = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return "no valid X-Amz-Date"
    if stamp[:8] != m["date"]:
        return "the credential's date is not the request's"
    if abs((now or datetime.now(UTC)) - when) > SKEW:
        return "the request's time is more than 15 minutes off"
    signed = m["signed"].split(";")
    if "host" not in signed:
        return "the host header is not signed"
    lines = []
    for name in signed:
        values = headers.get_all(name)
        if values is None:
            return f"a signed header is missing: {name}"
        lines.append(f"{name}:{','.join(' '.join(v.split()) for v in values)}\n")
    path, _, query = target.partition("?")
    canonical = "\n".join(
        [
            method,
            path,
            _query(query),
            "".join(lines),
            m["signed"],
            headers.get("X-Amz-Content-Sha256", EMPTY_SHA256),
        ]
    )
    scope = f"{m['date']}/{m['region']}/{m['service']}/aws4_request"
    to_sign = "\n".join([ALGORITHM, stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(("AWS4" + secret).encode(), m["date"])
    for part in (m["region"], m["service"], "aws4_request"):
        key = _hmac(key, part)
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, m["sig"]):
        return "the signature does not match (sign with the fleet token as the secret key)"
    return None
