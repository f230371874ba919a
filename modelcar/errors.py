"""One exception hierarchy for everything a user can cause.

Every error carries *what* failed, optionally *which* reference or file, and a
*hint* saying what to do. The CLIs render an error as one line with
:func:`ModelcarError.one_line` and exit non-zero; nothing else is printed.
"""

from __future__ import annotations


class ModelcarError(Exception):
    """Base class. ``exit_code`` lets CLIs distinguish classes of failure."""

    exit_code = 1
    default_hint = ""
    #: The HTTP status the API answers with when it raises this error.
    http_status = 400
    #: A stable machine-readable name for the API's JSON error body.
    code = "error"

    def __init__(self, message: str, *, subject: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.subject = subject
        self.hint = hint if hint is not None else self.default_hint

    def one_line(self) -> str:
        text = self.message
        if self.subject:
            text = f"{text}: {self.subject}"
        if self.hint:
            text = f"{text} ({self.hint})"
        return " ".join(text.split())  # guarantee a single line

    def __str__(self) -> str:
        return self.one_line()


# --- input -----------------------------------------------------------------


class UsageError(ModelcarError):
    exit_code = 2
    http_status = 422
    code = "invalid"


class InvalidReference(UsageError):
    default_hint = "use HOST[:PORT]/REPO[:TAG][@sha256:HEX] or oci:PATH[:TAG][@sha256:HEX]"


class InvalidDigest(UsageError):
    default_hint = "a digest is sha256: followed by 64 lowercase hex characters"


# --- sources ---------------------------------------------------------------


class SourceError(ModelcarError):
    pass


class SourceNotFound(SourceError):
    default_hint = "check the path or URI"


class SourceEmpty(SourceError):
    default_hint = "check --include/--exclude and that the source holds files"


class SourceFileError(SourceError):
    """A single file of the source could not be read, vanished, or changed."""


class SourceChanged(SourceFileError):
    default_hint = "the source changed while it was being built; build again from a stable source"


# --- content ---------------------------------------------------------------


class DigestMismatch(ModelcarError):
    default_hint = "the bytes are corrupt or were changed in transit; nothing was published"


class ImageTooLarge(ModelcarError):
    """The image's config or manifest would be over what registries accept."""


class ImageFormatError(ModelcarError):
    """A manifest, config, index or layer does not follow the contract."""


class NotAModelcar(ImageFormatError):
    """An image without modelcar's file index: another format, or no model at all."""


class UnsafeArchive(ImageFormatError):
    default_hint = "the layer is corrupt or hostile; it was not extracted"


class SignatureError(ModelcarError):
    """An image is unsigned, or no signature verifies with the keys given."""

    code = "signature"
    default_hint = "sign it with `modelcar sign REF --key KEY`, or check the public key"


class UnknownSigner(SignatureError):
    """A well-formed signature that none of the given keys made (someone else's, or
    over other bytes): passed over where others may sign too, an error where not."""


# --- storage / transport ---------------------------------------------------


class StorageError(ModelcarError):
    """A local file or directory could not be read or written (a cache, a layout)."""


class LayoutError(StorageError):
    pass


class TransportError(ModelcarError):
    """Talking to a server failed: a registry, a source (Hugging Face, S3, MLflow), the API."""


class TransientError(TransportError):
    """A failure worth retrying (429, 5xx, a dropped or stalled connection)."""

    #: The HTTP status that said so, when one did (429: busy, come back later).
    status: int | None = None

    def __init__(
        self,
        message: str,
        *,
        subject: str | None = None,
        hint: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message, subject=subject, hint=hint)
        self.retry_after = retry_after


class ResponseTooLarge(TransportError):
    default_hint = "the server (or a proxy or mirror in between) sent more than any valid answer"


class SourceStalled(TransientError):
    default_hint = "the source is too slow or stalled; the next source is tried at the same offset"


class RegistryError(TransportError):
    pass


class RegistryUnreachable(RegistryError):
    default_hint = "check the address, that the registry runs, and --plain-http for HTTP registries"


class AuthenticationFailed(RegistryError):
    default_hint = "check the credentials in your docker config.json or credential helper"


class AccessDenied(RegistryError):
    default_hint = "the credentials are valid but lack permission for this repository"


class NotFound(RegistryError):
    default_hint = "check the repository, tag and digest"


class BlobTooLarge(RegistryError):
    default_hint = "lower --large-file-threshold or raise --max-layer-size if the registry allows"


class TransientRegistryError(TransientError, RegistryError):
    """A registry's failure worth retrying (429, 5xx, dropped connection)."""


class TokenExpired(TransientRegistryError):
    """A streamed request met a 401 after its token expired: send it again from the
    start (the token is already renewed)."""

    default_hint = "the registry's access token expired mid-request; it was renewed"


class ChunkedUnsupported(RegistryError):
    """The registry refuses chunked uploads: the blob goes up in one request."""


class DiskFull(StorageError):
    default_hint = "free disk space or lower the cache budget"


# --- the node's pulls --------------------------------------------------------


class PullStopped(ModelcarError):
    """The daemon is stopping: the pull ends where it is, its journal kept to resume."""


class LayerCancelled(PullStopped):
    """Another layer of the same pull failed: this one ends where it is (its work kept),
    and the pull fails with the other layer's error."""


class CacheVanished(StorageError):
    default_hint = "was it deleted or unmounted while in use? nothing was published"


class CacheBusy(ModelcarError):
    default_hint = "one modelcar-cache per cache dir; stop the other one or use another --cache-dir"


class ControlError(ModelcarError):
    """The daemon refused or failed a control request (its own one-line reason)."""


class CriError(ModelcarError):
    default_hint = "check --cri-socket and that the runtime's CRI plugin runs"


class WaitingForLease(ModelcarError):
    """A rollout wave: no origin lease was free and no peer held the layers in time."""


class PullCrashed(ModelcarError):
    """An error no check foresaw (a bug, or a decoder's error not yet converted): the
    model fails with it, what was staged is dropped, and the daemon goes on."""

    default_hint = "a bug in modelcar-cache: please report it with the daemon's log"


# --- the API and its clients -----------------------------------------------
#
# The API raises these; its error handler answers ``{"error": {code, message,
# subject, hint}}`` with ``http_status``, and the client turns such an answer
# back into the same class, so a CLI prints the server's own sentence.


class ApiError(ModelcarError):
    pass


class Unauthorized(ApiError):
    http_status = 401
    code = "unauthorized"
    default_hint = "send Authorization: Bearer TOKEN; the CLIs read MODELCAR_API_TOKEN"


class Forbidden(ApiError):
    http_status = 403
    code = "forbidden"
    default_hint = "the token's role does not allow this; ask an admin for one that does"


class Missing(ApiError):
    """A model, version, alias, node, policy or token the catalog does not hold."""

    http_status = 404
    code = "not_found"


class Conflict(ApiError):
    http_status = 409
    code = "conflict"


class InvalidRequest(UsageError):
    code = "invalid"


class Malformed(InvalidRequest):
    """A part of a Kubernetes object is not of the type its schema gives it."""


class ApiUnavailable(ApiError):
    http_status = 503
    code = "unavailable"
    default_hint = "check the API address and that the API and its database run"


class DatabaseNotReady(ApiError):
    """The database is unreachable or its schema is not at the code's revision."""

    http_status = 503
    code = "database"


API_ERRORS: dict[int, type[ApiError] | type[UsageError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: Missing,
    409: Conflict,
    422: InvalidRequest,
    503: ApiUnavailable,
}
