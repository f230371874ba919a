"""Sources a modelcar is built from; ``open_source`` picks one by the SOURCE's scheme."""

from __future__ import annotations

from collections.abc import Callable

from builder.sources.base import Selection, Source
from modelcar.errors import UsageError


def open_source(
    text: str,
    selection: Selection,
    *,
    uri: str | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> Source:
    """``hf://ORG/NAME[@REV]``, or a local directory (``./dir``, ``file:///dir``)."""
    if text.startswith("hf://"):
        from builder.sources.hf import HfSource

        if uri:
            raise UsageError("--source-uri is for local sources; hf:// records its commit")
        return HfSource(text, selection, on_wait=on_wait)
    if "://" in text and not text.startswith("file://"):
        raise UsageError(
            "unknown source scheme",
            subject=text,
            hint="use a directory, file:///dir or hf://ORG/NAME",
        )
    from builder.sources.local import LocalSource

    return LocalSource(text, selection, uri=uri)
