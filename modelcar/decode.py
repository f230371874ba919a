"""Decoding untrusted bytes: every decoder's own errors become one of ours, here.

Whatever a registry, a peer or a tenant sends is decoded through these functions, so a
hostile document (malformed, nested 200,000 levels deep, of the wrong type) ends in a
:class:`~modelcar.errors.ModelcarError` of the caller's choosing with one line, never in
``RecursionError``, ``binascii.Error`` or ``UnicodeDecodeError`` escaping a loop.
"""

from __future__ import annotations

import base64
import binascii
import json as _json
from typing import Any

from modelcar.errors import ImageFormatError, ModelcarError

#: Errors a JSON decoder raises on bad input. RecursionError: nesting deeper than the
#: interpreter's limit (CPython's scanner checks it at every level, so it is raised
#: cleanly, not a crash).
_JSON_ERRORS = (ValueError, UnicodeDecodeError, RecursionError, TypeError)


def json(
    data: bytes | str,
    what: str,
    error: type[ModelcarError] = ImageFormatError,
    subject: str | None = None,
) -> Any:
    """``data`` parsed as JSON, or ``error("<what> is not valid JSON")``."""
    try:
        return _json.loads(data)
    except _JSON_ERRORS:
        raise error(f"{what} is not valid JSON", subject=subject) from None


def json_object(
    data: bytes | str,
    what: str,
    error: type[ModelcarError] = ImageFormatError,
    subject: str | None = None,
) -> dict[str, Any]:
    """``data`` parsed as a JSON object, or ``error``."""
    obj = json(data, what, error, subject)
    if not isinstance(obj, dict):
        raise error(f"{what} is not a JSON object", subject=subject)
    return obj


def b64(
    text: Any,
    what: str,
    error: type[ModelcarError] = ImageFormatError,
    subject: str | None = None,
) -> bytes:
    """Strict base64 (no stray characters), or ``error``."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise error(f"{what} is not valid base64", subject=subject) from None
