"""Warm the node's container runtime: pull a model image through CRI and pin it.

KServe's ``oci://`` modelcar path asks the kubelet to pull the image; if the
runtime already holds it, the pod starts without a pull. ``PullImage`` goes
through the CRI socket (with a long deadline: model images are large); the image
is then pinned with containerd's ``io.cri-containerd.pinned=pinned`` label, which
kubelet image garbage collection leaves alone.

The messages are few and small, so they are encoded here by hand (protobuf wire
format) instead of generating code from the CRI and containerd protos: the
field numbers below are theirs (k8s.io/cri-api runtime/v1, containerd
services/images/v1).
"""

from __future__ import annotations

import logging

from modelcar.errors import CriError

log = logging.getLogger("modelcar.cache")

PINNED_LABEL = "io.cri-containerd.pinned"
CRI_NAMESPACE = "k8s.io"


# --- protobuf wire format, the little that is needed ---------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (strings, bytes, messages)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _fields(data: bytes) -> list[tuple[int, int, bytes | int]]:
    """Decode one message level: (number, wire type, value)."""
    out: list[tuple[int, int, bytes | int]] = []
    i = 0
    while i < len(data):
        key, i = _read_varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(data, i)
            out.append((number, wire, value))
        elif wire == 2:
            length, i = _read_varint(data, i)
            out.append((number, wire, data[i : i + length]))
            i += length
        elif wire == 1:
            out.append((number, wire, data[i : i + 8]))
            i += 8
        elif wire == 5:
            out.append((number, wire, data[i : i + 4]))
            i += 4
        else:
            raise CriError(f"unexpected protobuf wire type {wire}")
    return out


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = data[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _first(data: bytes, number: int) -> bytes | None:
    for n, w, v in _fields(data):
        if n == number and w == 2 and isinstance(v, bytes):
            return v
    return None


# --- the two calls -------------------------------------------------------------


class RuntimeWarmer:
    def __init__(self, socket: str, *, pull_timeout: float = 6 * 3600):
        import grpc

        self._grpc = grpc
        target = socket if socket.startswith("unix:") else f"unix://{socket}"
        self.channel = grpc.insecure_channel(target)
        self.pull_timeout = pull_timeout
        self._pull = self.channel.unary_unary("/runtime.v1.ImageService/PullImage")
        self._get = self.channel.unary_unary("/containerd.services.images.v1.Images/Get")
        self._update = self.channel.unary_unary("/containerd.services.images.v1.Images/Update")

    def pull(self, image: str) -> str:
        """CRI PullImage; returns the runtime's image id."""
        request = _field(1, _field(1, image.encode()))  # PullImageRequest{image: ImageSpec{image}}
        try:
            response = self._pull(request, timeout=self.pull_timeout)
        except self._grpc.RpcError as e:
            raise CriError(f"CRI PullImage failed: {e.details()}", subject=image) from None
        return (_first(response, 1) or b"").decode()

    def pin(self, image: str) -> None:
        """Label the image ``io.cri-containerd.pinned=pinned`` in containerd's k8s.io namespace."""
        meta = (("containerd-namespace", CRI_NAMESPACE),)
        try:
            got = self._get(_field(1, image.encode()), timeout=30, metadata=meta)
        except self._grpc.RpcError as e:
            raise CriError(f"containerd has no image {image}: {e.details()}") from None
        stored = _first(got, 1) or b""
        entry = _field(1, PINNED_LABEL.encode()) + _field(2, b"pinned")
        updated = stored + _field(2, entry)  # one more labels map entry
        mask = _field(1, f"labels.{PINNED_LABEL}".encode())  # FieldMask{paths}
        try:
            self._update(_field(1, updated) + _field(2, mask), timeout=30, metadata=meta)
        except self._grpc.RpcError as e:
            raise CriError(f"pinning the image failed: {e.details()}", subject=image) from None

    def labels(self, image: str) -> dict[str, str]:
        meta = (("containerd-namespace", CRI_NAMESPACE),)
        got = self._get(_field(1, image.encode()), timeout=30, metadata=meta)
        stored = _first(got, 1) or b""
        out = {}
        for number, wire, value in _fields(stored):
            if number == 2 and wire == 2:
                entry = dict((n, v) for n, w, v in _fields(value))  # type: ignore[arg-type]  # protobuf fields: (number, value) pairs
                out[entry.get(1, b"").decode()] = entry.get(2, b"").decode()  # type: ignore[union-attr]  # wire type 2: bytes
        return out

    def warm(self, image: str) -> None:
        image_id = self.pull(image)
        self.pin(image)
        log.info("runtime holds %s (%s), pinned", image, image_id[:19])

    def close(self) -> None:
        self.channel.close()
