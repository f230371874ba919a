"""MLflow registered models: ``models:/NAME/VERSION``, ``models:/NAME@ALIAS``,
``mlflow://NAME@ALIAS`` (and ``mlflow://NAME/VERSION``).

The MLflow client (``MLFLOW_TRACKING_URI``) resolves the alias or version once
to a model version and its artifact location; the image records
``mlflow://NAME/<version>`` and the run id. Artifacts then stream without a local
copy from where they are: the tracking server's artifact proxy
(``mlflow-artifacts:``), S3 (boto3; ``MLFLOW_S3_ENDPOINT_URL``) or a local path.
Other artifact stores (GCS, Azure, HDFS, …) are downloaded by MLflow itself into
a temporary directory first: MLflow offers no streaming read for them.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any, BinaryIO, cast
from urllib.parse import quote, urlparse

import httpx

from modelcar.builder.sources.base import Selection, Source, SourceFile
from modelcar.builder.sources.httpfile import HttpFile
from modelcar.errors import ResponseTooLarge, SourceError, SourceNotFound, UsageError
from modelcar.format import keys as mk
from modelcar.http.body import MAX_API_BYTES, read_body
from modelcar.http.client import new_client

HINT = "use models:/NAME/VERSION, models:/NAME@ALIAS or mlflow://NAME@ALIAS"


def parse_mlflow_uri(uri: str) -> tuple[str, str | None, str | None]:
    """(name, version, alias) with exactly one of version and alias."""
    body = uri.removeprefix("models:/").removeprefix("mlflow://")
    if "@" in body:
        name, _, alias = body.rpartition("@")
        if name and alias:
            return name, None, alias
    else:
        name, _, version = body.rpartition("/")
        if name and version.isdigit():
            return name, version, None
    raise UsageError("invalid MLflow model reference", subject=uri, hint=HINT)


def _auth() -> tuple[dict[str, str], Any]:
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    user, password = (
        os.environ.get("MLFLOW_TRACKING_USERNAME"),
        os.environ.get("MLFLOW_TRACKING_PASSWORD"),
    )
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return headers, ((user, password) if user and password else None)


class MlflowSource(Source):
    def __init__(
        self,
        uri: str,
        selection: Selection | None = None,
        *,
        on_wait: Callable[[str], None] | None = None,
        s3_endpoint: str | None = None,
    ):
        import mlflow
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        self.name, version, alias = parse_mlflow_uri(uri)
        self.selection = selection or Selection()
        self.on_wait = on_wait or (lambda msg: None)
        self.tracking = mlflow.get_tracking_uri()
        client = MlflowClient()
        what = f"mlflow://{self.name}@{alias}" if alias else f"mlflow://{self.name}/{version}"
        try:
            mv = (
                client.get_model_version_by_alias(self.name, alias)
                if alias
                else client.get_model_version(self.name, str(version))
            )
            location = client.get_model_version_download_uri(self.name, mv.version)
        except MlflowException as e:
            code = getattr(e, "error_code", "")
            if code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                raise SourceNotFound(
                    "MLflow model, version or alias not found",
                    subject=what,
                    hint=str(e.message).splitlines()[0][:200],
                ) from None
            raise SourceError(
                "cannot reach the MLflow tracking server",
                subject=self.tracking,
                hint="check MLFLOW_TRACKING_URI and its credentials",
            ) from None
        self.version = str(mv.version)
        self.run_id = mv.run_id or ""
        self.uri = f"mlflow://{self.name}/{self.version}"
        self.created: int | None = int(mv.creation_timestamp // 1000)
        self.location = _underlying(location)
        self.inner = self._inner(self.location, s3_endpoint)

    def _inner(self, location: str, s3_endpoint: str | None) -> Source:
        if location.startswith("s3://"):
            from modelcar.builder.sources.s3 import S3Source

            endpoint = s3_endpoint or os.environ.get("MLFLOW_S3_ENDPOINT_URL")
            return S3Source(location, self.selection, endpoint=endpoint, on_wait=self.on_wait)
        if location.startswith("mlflow-artifacts:"):
            return ArtifactProxyTree(self.tracking, location, self.selection, self.on_wait)
        from modelcar.builder.sources.local import LocalSource

        parsed = urlparse(location)
        if parsed.scheme in ("", "file"):
            return LocalSource(parsed.path or location, self.selection, uri=self.uri)
        import mlflow

        tmp = tempfile.mkdtemp(prefix="modelcar-mlflow-")
        atexit.register(shutil.rmtree, tmp, True)
        self.on_wait(f"{location}: MLflow downloads this artifact store to {tmp} first")
        local = mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=tmp)
        return LocalSource(local, self.selection, uri=self.uri)

    def files(self) -> list[SourceFile]:
        return self.inner.files()

    def where(self) -> str:
        return self.inner.where()

    def provenance(self) -> dict[str, dict[str, str]] | None:
        return self.inner.provenance()

    def annotations(self) -> dict[str, str]:
        return {mk.SOURCE_RUN_ID: self.run_id} if self.run_id else {}


def _underlying(location: str) -> str:
    """``runs:/`` and ``models:/`` locations name where the bytes really are."""
    if location.startswith("runs:/"):
        from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

        return RunsArtifactRepository.get_underlying_uri(location)
    if location.startswith("models:/"):
        from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

        return _underlying(ModelsArtifactRepository.get_underlying_uri(location))  # type: ignore[no-untyped-call]
    return location


class ArtifactProxyTree(Source):
    """Artifacts behind the tracking server's proxy (``mlflow server --artifacts-destination``)."""

    def __init__(
        self, tracking: str, location: str, selection: Selection, on_wait: Callable[[str], None]
    ):
        self.uri, self.created = location, None
        parsed = urlparse(location)
        base = f"http://{parsed.netloc}" if parsed.netloc else tracking.rstrip("/")
        self.api = f"{base}/api/2.0/mlflow-artifacts/artifacts"
        self.root = parsed.path.strip("/")
        self.selection = selection
        self.on_wait = on_wait
        headers, auth = _auth()
        self.http = new_client(headers=headers, auth=auth, timeout=60)

    def _list(self, rel: str) -> list[dict[str, Any]]:
        path = f"{self.root}/{rel}".strip("/")
        try:
            with self.http.stream("GET", self.api, params={"path": path}) as r:
                status = r.status_code
                body = read_body(r, MAX_API_BYTES, self.api) if status == 200 else b""
        except httpx.HTTPError as e:
            raise SourceError(
                f"cannot list MLflow artifacts ({type(e).__name__})", subject=self.api
            ) from None
        except ResponseTooLarge as e:
            raise SourceError(e.message, subject=path) from None
        if status != 200:
            raise SourceError(f"MLflow artifact listing answered HTTP {status}", subject=path)
        try:
            files: list[dict[str, Any]] = json.loads(body).get("files", [])
            return files
        except (ValueError, AttributeError, RecursionError):
            raise SourceError("MLflow artifact listing is not JSON", subject=path) from None

    def files(self) -> list[SourceFile]:
        out: list[SourceFile] = []
        todo = [""]
        while todo:
            rel = todo.pop()
            for entry in self._list(rel):
                path = f"{rel}/{entry['path'].rsplit('/', 1)[-1]}".lstrip("/")
                if entry.get("is_dir"):
                    todo.append(path)
                elif self.selection.wants(path):
                    size = int(entry.get("file_size") or 0)
                    out.append(
                        SourceFile(
                            path=path,
                            size=size,
                            # an HttpFile reads, closes and is a context manager:
                            # all a source file opener must give
                            opener=cast(Callable[[], BinaryIO], self._opener(path, size)),
                            origin=f"mlflow-artifacts:/{self.root}/{path}",
                            remote=True,
                        )
                    )
        out.sort(key=lambda s: s.path.encode("utf-8", "surrogateescape"))
        return out

    def _opener(self, path: str, size: int) -> Callable[[], HttpFile]:
        url = f"{self.api}/{quote(self.root)}/{quote(path)}"

        def open_at(offset: int) -> Any:
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            return self.http.send(self.http.build_request("GET", url, headers=headers), stream=True)

        def announce(seconds: float, attempt: int, what: str) -> None:
            self.on_wait(f"retrying {what} in {seconds:.1f}s (attempt {attempt + 1})")

        return lambda: HttpFile(open_at, size, f"mlflow-artifacts:/{self.root}/{path}", announce)
