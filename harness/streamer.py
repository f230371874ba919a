"""A real streamed load: runai-model-streamer (its S3 backend, the AWS C++ SDK) reads
every tensor of every safetensors file under an S3 prefix, as vLLM's
``--load-format runai_streamer`` does, and prints each tensor's sha256 as JSON.

    python -m harness.streamer s3://modelcar/sha256-<hex>/ [--count]

``--count`` (the benchmark's) only counts each tensor's bytes, as a server that
copies them to a device would not hash them either.

The endpoint and credentials come from the environment (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` or ``RUNAI_STREAMER_S3_UNSIGNED=1``,
``RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING=0``). Exit 1 with the streamer's error on
any failure: a caller tells a failed load from a wrong one.
"""

from __future__ import annotations

import hashlib
import json
import sys


def main() -> int:
    from runai_model_streamer import SafetensorsStreamer, list_safetensors

    prefix = sys.argv[1]
    count_only = "--count" in sys.argv[2:]
    files = sorted(list_safetensors(prefix))
    if not files:
        print(f"no safetensors under {prefix}", file=sys.stderr)
        return 1
    out: dict[str, dict[str, str]] = {}
    with SafetensorsStreamer() as streamer:
        streamer.stream_files(files)
        for name, tensor in streamer.get_tensors():
            if count_only:
                out[name] = {"bytes": str(tensor.numel() * tensor.element_size())}
                continue
            data = tensor.contiguous().view(-1).view(dtype=__import__("torch").uint8)
            out[name] = {"sha256": hashlib.sha256(data.numpy().tobytes()).hexdigest()}
    print(json.dumps({"files": [f.rsplit("/", 1)[1] for f in files], "tensors": out}))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # the streamer's error, in one line, for the test to show
        print(f"streamer failed: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
