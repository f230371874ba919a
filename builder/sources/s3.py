"""S3 and S3-compatible stores: ``s3://BUCKET/PREFIX``.

boto3 with its standard credential chain; ``AWS_ENDPOINT_URL`` (or
``--s3-endpoint``) points it at MinIO, Ceph, R2 or a test server. Objects under
the prefix become files at their path below it. Each object is streamed once,
pinned to the ETag it was listed with (``IfMatch``), and resumed with a range
request if the stream drops. The image records ``s3://BUCKET/PREFIX`` and, in
its config, the ETag (and version id, if any) of every object read.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from modelcar.builder.sources.base import Selection, Source, SourceFile
from modelcar.errors import (
    ModelcarError,
    SourceError,
    SourceFileError,
    SourceNotFound,
    UsageError,
)
from modelcar.http.rangereader import RangeReader, transient

log = logging.getLogger("modelcar.build")
ATTEMPTS = 5
#: Ask for a stored sha256 (one HEAD each) only for files at least this large.
CHECKSUM_MIN = 16 << 20


def parse_s3_uri(uri: str) -> tuple[str, str]:
    body = uri.removeprefix("s3://")
    bucket, _, prefix = body.partition("/")
    if not bucket:
        raise UsageError("invalid S3 source", subject=uri, hint="use s3://BUCKET/PREFIX")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


class S3Source(Source):
    def __init__(
        self,
        uri: str,
        selection: Selection | None = None,
        *,
        endpoint: str | None = None,
        on_wait: Callable[[str], None] | None = None,
    ):
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix = parse_s3_uri(uri)
        self.selection = selection or Selection()
        self.uri = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            config=Config(retries={"max_attempts": 8, "mode": "adaptive"}),
        )
        self.on_wait = on_wait or (lambda msg: log.warning("%s", msg))
        self.created: int | None = None
        self.objects: dict[str, dict[str, str]] = {}  # path -> {etag, version}

    def _error(self, e: Exception, what: str) -> Exception:
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

        if isinstance(e, NoCredentialsError):
            return SourceError(
                "no AWS credentials found",
                subject=what,
                hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or a role",
            )
        if isinstance(e, EndpointConnectionError):
            return SourceError(
                "cannot reach the S3 endpoint",
                subject=str(e).split('"')[1] if '"' in str(e) else what,
                hint="check AWS_ENDPOINT_URL / --s3-endpoint",
            )
        if isinstance(e, ClientError):
            code = e.response.get("Error", {}).get("Code", "")
            if code == "NoSuchBucket":
                return SourceNotFound("S3 bucket does not exist", subject=f"s3://{self.bucket}")
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
                return SourceError(
                    f"S3 refused access ({code})",
                    subject=what,
                    hint="check the credentials and the bucket policy",
                )
            if code in ("PreconditionFailed", "412"):
                return SourceFileError(
                    "the object changed during the build",
                    subject=what,
                    hint="build again from a stable prefix",
                )
            return SourceError(f"S3 answered {code or 'an error'}", subject=what)
        return SourceError(f"S3 failed ({type(e).__name__})", subject=what)

    def files(self) -> list[SourceFile]:
        from botocore.exceptions import BotoCoreError, ClientError

        out: list[SourceFile] = []
        newest = 0.0
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    key: str = obj["Key"]
                    path = key[len(self.prefix) :]
                    if not path or key.endswith("/") or not self.selection.wants(path):
                        continue
                    etag = obj["ETag"].strip('"')
                    newest = max(newest, obj["LastModified"].timestamp())
                    sha = self._sha256(key) if obj["Size"] >= CHECKSUM_MIN else None
                    self.objects[path] = {"etag": etag}
                    out.append(
                        SourceFile(
                            path=path,
                            size=obj["Size"],
                            opener=self._opener(key, obj["Size"], etag),
                            origin=f"s3://{self.bucket}/{key}",
                            sha256=sha,
                            identity=f"s3:{etag}:{obj['Size']}",
                            remote=True,
                        )
                    )
        except (ClientError, BotoCoreError) as e:
            raise self._error(e, self.uri) from None
        self.created = int(newest) if out else None
        out.sort(key=lambda s: s.path.encode("utf-8", "surrogateescape"))
        return out

    def _sha256(self, key: str) -> str | None:
        """The object's stored full-object sha256, if it was uploaded with one."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except (ClientError, BotoCoreError):
            return None
        value = head.get("ChecksumSHA256")
        if not value or "-" in value:  # absent, or a checksum of part checksums
            return None
        return "sha256:" + base64.b64decode(value).hex()

    def _opener(self, key: str, size: int, etag: str) -> Callable[[], Any]:
        return lambda: S3Object(self, key, size, etag)

    def provenance(self) -> dict[str, dict[str, str]]:
        return dict(sorted(self.objects.items()))


class S3Object(RangeReader):
    """One object streamed once with the core range reader: resumed with a range
    request, pinned to its ETag (a changed object is an error, not a mix)."""

    def __init__(self, source: S3Source, key: str, size: int, etag: str):
        self.source, self.key, self.etag = source, key, etag
        self.what = f"s3://{source.bucket}/{key}"
        super().__init__(
            self._open,
            size,
            attempts=ATTEMPTS,
            retryable=_retryable,
            on_wait=lambda seconds, attempt, e: source.on_wait(
                f"{self.what}: resuming at byte {self.offset} in {seconds:.1f}s"
            ),
        )

    @contextmanager
    def _open(self, offset: int) -> Iterator[Any]:
        from botocore.exceptions import ClientError

        args: dict[str, Any] = {"Bucket": self.source.bucket, "Key": self.key, "IfMatch": self.etag}
        if offset:
            args["Range"] = f"bytes={offset}-"
        try:
            body = self.source.client.get_object(**args)["Body"]
        except ClientError as e:
            raise self.source._error(e, self.what) from None
        try:
            yield body
        finally:
            body.close()

    def read(self, n: int = -1) -> bytes:
        try:
            return super().read(n)
        except ModelcarError:
            raise
        except Exception as e:
            if not _retryable(e):
                raise
            raise SourceFileError(
                f"download kept failing ({type(e).__name__})", subject=self.what
            ) from None


def _retryable(error: BaseException) -> bool:
    from botocore.exceptions import BotoCoreError

    return transient(error) or isinstance(error, BotoCoreError)
