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
from collections.abc import Callable
from typing import Any

from modelcar.builder.sources.base import Selection, SourceFile
from modelcar.builder.sources.httpfile import RetryLater, with_retries
from modelcar.errors import SourceError, SourceFileError, SourceNotFound, UsageError

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


class S3Source:
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
                "no AWS credentials found", subject=what,
                hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or a role",
            )  # fmt: skip
        if isinstance(e, EndpointConnectionError):
            return SourceError(
                "cannot reach the S3 endpoint", subject=str(e).split('"')[1] if '"' in str(e)
                else what, hint="check AWS_ENDPOINT_URL / --s3-endpoint",
            )  # fmt: skip
        if isinstance(e, ClientError):
            code = e.response.get("Error", {}).get("Code", "")
            if code == "NoSuchBucket":
                return SourceNotFound("S3 bucket does not exist", subject=f"s3://{self.bucket}")
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
                return SourceError(
                    f"S3 refused access ({code})", subject=what,
                    hint="check the credentials and the bucket policy",
                )  # fmt: skip
            if code in ("PreconditionFailed", "412"):
                return SourceFileError(
                    "the object changed during the build", subject=what,
                    hint="build again from a stable prefix",
                )  # fmt: skip
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


class S3Object:
    """One object streamed once; resumed with a range request, pinned to its ETag."""

    def __init__(self, source: S3Source, key: str, size: int, etag: str):
        self.source, self.key, self.size, self.etag = source, key, size, etag
        self.offset = 0
        self._body: Any = None

    def _open(self) -> None:
        args: dict[str, Any] = {"Bucket": self.source.bucket, "Key": self.key, "IfMatch": self.etag}
        if self.offset:
            args["Range"] = f"bytes={self.offset}-"
        self._body = self.source.client.get_object(**args)["Body"]

    def read(self, n: int = -1) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        if self.offset >= self.size:
            return b""
        what = f"s3://{self.source.bucket}/{self.key}"

        def once() -> bytes:
            try:
                if self._body is None:
                    self._open()
                data = self._body.read(n if n > 0 else None)
                if not data:
                    raise EOFError("stream ended early")
            except ClientError as e:
                raise self.source._error(e, what) from None
            except (BotoCoreError, OSError, EOFError) as e:
                self.close()
                error = SourceFileError(f"download kept failing ({type(e).__name__})", subject=what)
                raise RetryLater(None, error) from None
            self.offset += len(data)
            return data

        def announce(seconds: float, attempt: int, what: str) -> None:
            self.source.on_wait(f"{what}: resuming at byte {self.offset} in {seconds:.1f}s")

        return with_retries(once, what, announce, attempts=ATTEMPTS)

    def close(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None

    def __enter__(self) -> S3Object:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
