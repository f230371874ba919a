"""Hugging Face Hub models: ``hf://ORG/NAME[@REVISION]``.

The revision (branch, tag or short sha) is resolved to the full commit sha once,
before anything is read; the image records ``hf://ORG/NAME@<sha>``. Files are
listed at that commit with ``huggingface_hub`` and streamed over HTTP straight
into the layer (no copy in the HF cache), unless they are already in the local
HF cache. LFS files carry their sha256, which the build checks. ``HF_TOKEN``,
``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` are honoured; offline, the revision and
files come from the local HF cache, and the image's ``created`` is the epoch
(the cache does not keep commit times).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from huggingface_hub import (
    HfApi,
    constants,
    hf_hub_url,
    snapshot_download,
    try_to_load_from_cache,
)
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import build_hf_headers, get_session

from modelcar.builder.sources.base import Selection, Source, SourceFile, _matches
from modelcar.builder.sources.httpfile import (
    ATTEMPTS,
    HTTP_ERRORS,
    HttpFile,
    call,
    retry_later,
)
from modelcar.errors import SourceError, SourceFileError, SourceNotFound, UsageError
from modelcar.http.retry import RetryLater

log = logging.getLogger("modelcar.build")


T = TypeVar("T")

#: Weight formats that duplicate safetensors; skipped when safetensors exist.
DUPLICATE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.h5", "*.msgpack", "*.onnx", "*.ckpt", "*.ot")
ALWAYS_SKIPPED = (".gitattributes", "original/")


def parse_hf_uri(uri: str) -> tuple[str, str]:
    body = uri.removeprefix("hf://")
    repo, _, revision = body.partition("@")
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts) or any(c.isspace() for c in repo):
        raise UsageError("invalid Hugging Face source", subject=uri, hint="use hf://ORG/NAME[@REV]")
    return repo, revision or "main"


def default_skip(path: str, has_safetensors: bool) -> bool:
    if any(_matches(path, p) for p in ALWAYS_SKIPPED):
        return True
    return has_safetensors and any(_matches(path, p) for p in DUPLICATE_WEIGHTS)


class HfSource(Source):
    def __init__(
        self,
        uri: str,
        selection: Selection | None = None,
        *,
        token: str | None = None,
        endpoint: str | None = None,
        on_wait: Callable[[str], None] | None = None,
    ):
        self.repo, revision = parse_hf_uri(uri)
        self.selection = selection or Selection()
        self.endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
        self.token = token
        self.api = HfApi(endpoint=self.endpoint, token=token)
        self.on_wait = on_wait or (lambda msg: log.warning("%s", msg))
        what = f"hf://{self.repo}@{revision}"
        self.snapshot: str | None = None
        if constants.HF_HUB_OFFLINE:  # the local HF cache only
            self.snapshot = self._call(
                lambda: snapshot_download(self.repo, revision=revision, local_files_only=True),
                what,
            )
            self.sha: str = Path(self.snapshot).name
            self.revision = revision
            self.uri = f"hf://{self.repo}@{self.sha}"
            self.created: int | None = None  # the cache does not keep the commit time
            return
        info = self._call(lambda: self.api.model_info(self.repo, revision=revision), what)
        if not info.sha:
            raise SourceError("the Hub did not name a commit for the revision", subject=what)
        self.sha = info.sha
        self.revision = revision
        self.uri = f"hf://{self.repo}@{self.sha}"
        modified = getattr(info, "last_modified", None)
        self.created = int(modified.timestamp()) if modified else None

    # --- the Hub, with its errors as one line ----------------------------------

    def _call(self, fn: Callable[[], T], what: str) -> T:
        """One call to the Hub; rate limits and 5xx are waited out (the core retry policy)."""

        def once() -> T:
            try:
                return fn()
            except GatedRepoError:
                raise SourceError(
                    "the Hugging Face repo is gated",
                    subject=what,
                    hint="accept its terms on the Hub and set HF_TOKEN",
                ) from None
            except RepositoryNotFoundError:
                raise SourceNotFound(
                    "Hugging Face repo not found",
                    subject=what,
                    hint="check ORG/NAME; a private repo needs HF_TOKEN",
                ) from None
            except RevisionNotFoundError:
                raise SourceNotFound(
                    "revision not found in the Hugging Face repo",
                    subject=what,
                    hint="give a branch, tag or commit sha that exists",
                ) from None
            except (OfflineModeIsEnabled, LocalEntryNotFoundError):
                raise SourceError(
                    "HF_HUB_OFFLINE is set and the repo is not in the local HF cache",
                    subject=what,
                ) from None
            except HfHubHTTPError as e:
                status = e.response.status_code if e.response is not None else "?"
                error = SourceError(
                    f"the Hub answered HTTP {status}",
                    subject=what,
                    hint="rate limited; try again later" if status == 429 else None,
                )
                raise retry_later(e.response, error) or error from None
            except HTTP_ERRORS as e:
                error = SourceError(
                    f"cannot reach the Hugging Face Hub ({type(e).__name__})",
                    subject=self.endpoint,
                    hint="check HF_ENDPOINT and the network",
                )
                raise RetryLater(None, error) from None

        return call(once, what, self._announce)

    def _announce(self, seconds: float, attempt: int, what: str) -> None:
        self.on_wait(
            f"the Hub asked to wait: retrying {what} in {seconds:.1f}s "
            f"(attempt {attempt + 1} of {ATTEMPTS})"
        )

    # --- listing ---------------------------------------------------------------

    def _select(self, path: str, has_safetensors: bool) -> bool:
        explicit = bool(self.selection.include) and self.selection.wants(path)
        if not self.selection.wants(path):
            return False
        return explicit or not default_skip(path, has_safetensors)

    def files(self) -> list[SourceFile]:
        if self.snapshot is not None:
            from modelcar.builder.sources.local import LocalSource

            local = LocalSource(self.snapshot, uri=self.uri).files()
            has_st = any(f.path.endswith(".safetensors") for f in local)
            return [f for f in local if self._select(f.path, has_st)]
        what = self.uri
        entries = self._call(
            lambda: list(
                self.api.list_repo_tree(self.repo, revision=self.sha, recursive=True, expand=False)
            ),
            what,
        )
        repo_files = [e for e in entries if isinstance(e, RepoFile)]
        has_safetensors = any(f.path.endswith(".safetensors") for f in repo_files)
        out: list[SourceFile] = []
        for f in repo_files:
            if not self._select(f.path, has_safetensors):
                continue
            lfs = getattr(f, "lfs", None)
            sha = f"sha256:{lfs.sha256}" if lfs is not None else None
            out.append(
                SourceFile(
                    path=f.path,
                    size=f.size,
                    opener=self._opener(f.path, f.size),
                    origin=f"{self.uri}/{f.path}",
                    sha256=sha,
                    # content-addressed: the stat cache may remember this file's layer
                    identity=f"hf:{sha or f.blob_id}:{f.size}",
                    remote=True,
                )
            )
        out.sort(key=lambda s: s.path.encode("utf-8", "surrogateescape"))
        return out

    def _opener(self, path: str, size: int) -> Callable[[], Any]:
        def open_file() -> Any:
            cached = try_to_load_from_cache(self.repo, path, revision=self.sha)
            if isinstance(cached, str):
                return open(cached, "rb")
            if constants.HF_HUB_OFFLINE:
                raise SourceFileError(
                    "HF_HUB_OFFLINE is set and the file is not in the local HF cache",
                    subject=f"{self.uri}/{path}",
                )
            url = hf_hub_url(self.repo, path, revision=self.sha, endpoint=self.endpoint)

            def open_at(offset: int) -> Any:
                headers = build_hf_headers(token=self.token)
                if offset:
                    headers["Range"] = f"bytes={offset}-"
                request = get_session().build_request("GET", url, headers=headers)
                return get_session().send(request, stream=True, follow_redirects=True)

            return HttpFile(open_at, size, f"{self.uri}/{path}", self._announce)

        return open_file
