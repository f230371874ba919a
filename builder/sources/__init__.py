"""Sources a modelcar is built from; ``open_source`` picks one by the SOURCE's scheme."""

from __future__ import annotations

from collections.abc import Callable

from modelcar.builder.sources.base import Selection, Source
from modelcar.errors import UsageError


def open_source(
    text: str,
    selection: Selection,
    *,
    uri: str | None = None,
    on_wait: Callable[[str], None] | None = None,
    s3_endpoint: str | None = None,
) -> Source:
    """``hf://ORG/NAME[@REV]``, ``models:/NAME@ALIAS`` (MLflow), ``s3://BUCKET/PREFIX``,
    or a local directory."""
    if text.startswith("hf://"):
        from modelcar.builder.sources.hf import HfSource

        if uri:
            raise UsageError("--source-uri is for local sources; hf:// records its commit")
        return HfSource(text, selection, on_wait=on_wait)
    if text.startswith(("models:/", "mlflow://")):
        from modelcar.builder.sources.mlflow import MlflowSource

        if uri:
            raise UsageError("--source-uri is for local sources; MLflow records its version")
        return MlflowSource(text, selection, on_wait=on_wait, s3_endpoint=s3_endpoint)
    if text.startswith("s3://"):
        from modelcar.builder.sources.s3 import S3Source

        if uri:
            raise UsageError("--source-uri is for local sources")
        return S3Source(text, selection, endpoint=s3_endpoint, on_wait=on_wait)
    if "://" in text and not text.startswith("file://"):
        raise UsageError(
            "unknown source scheme",
            subject=text,
            hint="use a directory, file:///dir, hf://ORG/NAME, models:/NAME@ALIAS or "
            "s3://BUCKET/PREFIX",
        )
    from modelcar.builder.sources.local import LocalSource

    return LocalSource(text, selection, uri=uri)
