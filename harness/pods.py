"""Kubernetes pod specs run for real: podman's ``kube play`` (podman 4.3, runc), with
the storage and ``containers.conf`` of ``make image`` (scripts/image.py), so the images
it built are there.

``kube play`` is not kubelet. What it does differently, and what :func:`as_kubelet_would`
changes in the test's copy of a spec (never in the chart or in KServe's pod):

- ``$$`` and ``$(VAR)`` in ``command``/``args``: kubelet expands them (``$$`` is a
  literal ``$``); ``kube play`` passes them through. They are expanded here, with
  kubelet's rules (:func:`expand`).
- ``emptyDir``: ``kube play`` makes a named volume, shared by every pod that uses the
  name and owned by root 0755; kubelet makes a fresh 0777 directory per pod. Here: a
  fresh 0777 directory.
- ``secret`` volumes: podman 4.3 crashes on them; ``configMap`` volumes need podman's
  own objects. Here: a directory holding the items at the ``defaultMode``, group
  ``fsGroup``, as kubelet writes them.
- ``fieldRef: spec.nodeName`` is not supported: the node's name instead.
- ``hostPath``: under a directory standing for the node's root filesystem.
- ``persistentVolumeClaim``: a podman volume owned by ``fsGroup`` (kubelet chowns it).
- The pods share the host's network (``hostNetwork``) so they reach the test's servers
  on 127.0.0.1; a Service URL in an env var is swapped for the 127.0.0.1 one.
- ``restartPolicy`` becomes ``Never``: podman 4.3 applies the pod's policy to init
  containers too, so under ``Always`` (a Deployment's) it reruns them forever. A test
  that restarts a container does so itself (``podman start``).
- Probes are dropped (podman would turn them into healthchecks); the tests call the
  endpoints themselves. ``ports`` too: on the host network they are the process's own.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import image as image_script  # noqa: E402  # make image's storage, conf and names

_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """kubelet's expansion of command and args: ``$$`` is ``$``, ``$(VAR)`` is VAR's
    value when the container defines it (otherwise left as written)."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        m = _VAR.match(text, i)
        if m:
            out.append(env.get(m.group(1), m.group(0)))
            i = m.end()
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


class Podman:
    """The project's podman: make image's storage and containers.conf."""

    def __init__(self) -> None:
        self.env = image_script.podman_env()
        self.base = [
            "podman",
            "--storage-driver",
            "vfs",
            "--root",
            str(image_script.WORK / "storage"),
            "--runroot",
            str(image_script.WORK / "run"),
        ]

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*self.base, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode:
            raise AssertionError(f"podman {' '.join(args)} failed: {proc.stderr[-2000:]}")
        return proc

    def play(
        self, docs: list[dict[str, Any]], work: Path, *, check: bool = True
    ) -> tuple[Path, subprocess.CompletedProcess[str]]:
        """``kube play`` the documents (images from the test registry over plain HTTP);
        the file to ``down`` and what ``kube play`` answered. It runs the init containers
        first and fails if one does."""
        path = work / f"play-{uuid.uuid4().hex[:8]}.yaml"
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        proc = self("kube", "play", "--tls-verify=false", str(path), check=check, timeout=600)
        return path, proc

    def down(self, path: Path) -> None:
        self("kube", "down", str(path), check=False, timeout=120)

    def wait(self, container: str, timeout: float = 120) -> int:
        """The container's exit code once it has exited."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # bounded
            state = self(
                "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", container
            ).stdout.split()
            if state[0] in ("exited", "stopped"):
                return int(state[1])
            time.sleep(0.3)
        raise AssertionError(f"{container} still running after {timeout}s")

    def logs(self, container: str) -> str:
        r = self("logs", container, check=False)
        return r.stdout + r.stderr


class Node:
    """A stand-in for one node: its root filesystem for hostPaths, its name."""

    def __init__(self, root: Path, name: str = "node-a"):
        self.root = root
        self.name = name
        root.mkdir(parents=True, exist_ok=True)

    def path(self, host_path: str) -> Path:
        return self.root / host_path.lstrip("/")


def as_kubelet_would(
    pod: dict[str, Any],
    node: Node,
    podman: Podman,
    *,
    secrets: dict[str, dict[str, str]] | None = None,
    config_maps: dict[str, dict[str, str]] | None = None,
    replace: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The test's copy of ``pod`` with the differences above taken care of.

    ``secrets``, ``config_maps``: name -> data; ``replace``: text -> text in env values, command
    and args (a Service URL -> the 127.0.0.1 one)."""
    pod = copy.deepcopy(pod)
    spec = pod["spec"]
    spec["hostNetwork"] = True
    spec["restartPolicy"] = "Never"
    spec.pop("serviceAccountName", None)
    group = spec.get("securityContext", {}).get("fsGroup")
    volumes = []
    for vol in spec.get("volumes", []):
        vol = dict(vol)
        if "emptyDir" in vol:
            d = Path(tempfile.mkdtemp(prefix="emptydir-", dir=node.root))
            d.chmod(0o777)
            vol = {"name": vol["name"], "hostPath": {"path": str(d), "type": "Directory"}}
        elif "secret" in vol or "configMap" in vol:
            source = vol.get("secret") or vol["configMap"]
            name = source.get("secretName") or source["name"]
            data = {**(secrets or {}), **(config_maps or {})}[name]
            d = _files_dir(source, data, group, node)
            vol = {"name": vol["name"], "hostPath": {"path": str(d), "type": "Directory"}}
        elif "hostPath" in vol:
            host = node.path(vol["hostPath"]["path"])
            if vol["hostPath"].get("type") == "DirectoryOrCreate":
                host.mkdir(parents=True, exist_ok=True)
            vol["hostPath"] = {**vol["hostPath"], "path": str(host)}
        elif "persistentVolumeClaim" in vol:
            name = f"{vol['persistentVolumeClaim']['claimName']}-{uuid.uuid4().hex[:6]}"
            podman("volume", "create", name)
            if group is not None:
                mount = podman("volume", "inspect", "--format", "{{.Mountpoint}}", name)
                os.chown(mount.stdout.strip(), group, group)
            vol = {"name": vol["name"], "persistentVolumeClaim": {"claimName": name}}
        volumes.append(vol)
    spec["volumes"] = volumes
    for c in spec.get("initContainers", []) + spec.get("containers", []):
        values = {}
        for e in c.get("env", []):
            if e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName":
                e.pop("valueFrom")
                e["value"] = node.name
            if "value" in e:
                e["value"] = _replace(e["value"], replace)
            values[e["name"]] = e.get("value", "")
        for key in ("command", "args"):
            if key in c:
                c[key] = [_replace(expand(a, values), replace) for a in c[key]]
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            c.pop(probe, None)
        c.pop("ports", None)  # kube play would map them, which the host network refuses
    return pod


def _files_dir(source: dict[str, Any], data: dict[str, str], group: int | None, node: Node) -> Path:
    """A Secret's or ConfigMap's items as kubelet writes them: at ``defaultMode``
    (0644 unless given), group ``fsGroup``."""
    d = Path(tempfile.mkdtemp(prefix="volume-", dir=node.root))
    d.chmod(0o755)
    items = source.get("items") or [{"key": k, "path": k} for k in data]
    for item in items:
        path = d / item["path"]
        path.write_text(data[item["key"]])
        path.chmod(source.get("defaultMode", 0o644))
        if group is not None:
            os.chown(path, 0, group)
    return d


def _replace(text: str, pairs: dict[str, str] | None) -> str:
    for old, new in (pairs or {}).items():
        text = text.replace(old, new)
    return text
