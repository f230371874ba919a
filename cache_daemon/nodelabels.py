"""Label this node ``modelcar.dev/sha256-<20 hex>=ready`` for every ready model.

Pods can then prefer or require nodes that hold their model (the API's pod spec
uses the same key, from ``modelcar.nodecache``). Only labels under the
``modelcar.dev/sha256-`` prefix are touched; a failed patch is logged and tried
again on the next pass.
"""

from __future__ import annotations

import logging
import os

from modelcar.contract.nodecache import LABEL_PREFIX, LABEL_READY, node_label_key

log = logging.getLogger("modelcar.cache")
OURS = f"{LABEL_PREFIX}/sha256-"


class NodeLabeller:
    def __init__(self, node: str, core_api: object):
        self.node = node
        self.core = core_api
        self._applied: dict[str, str] | None = None

    @classmethod
    def from_environment(cls, node: str, kubeconfig: str | None) -> NodeLabeller | None:
        """In a pod (service account) or with ``--kubeconfig``; None outside Kubernetes."""
        if not kubeconfig and not os.environ.get("KUBERNETES_SERVICE_HOST"):
            log.info(
                "node labels: skipped (no Kubernetes API here: no KUBERNETES_SERVICE_HOST "
                "and no --kubeconfig)"
            )
            return None
        from kubernetes import client, config

        try:
            if kubeconfig:
                config.load_kube_config(config_file=kubeconfig)
            else:
                config.load_incluster_config()
        except (config.ConfigException, OSError) as e:
            log.warning("node labels: skipped (%s)", str(e).splitlines()[0][:300])
            return None
        return cls(node, client.CoreV1Api())

    def node_labels(self) -> dict[str, str] | None:
        """The Node object's labels (what policies select on), or None if unreadable."""
        try:
            return dict(self.core.read_node(self.node).metadata.labels or {})  # type: ignore[attr-defined]  # the client's models are untyped
        except Exception as e:
            log.warning("reading node %s failed: %s", self.node, str(e).splitlines()[0][:300])
            return None

    def sync(self, ready: set[str]) -> bool:
        """Make the node's labels say exactly which models are ready; True if in sync."""
        want = {node_label_key(d): LABEL_READY for d in ready}
        if want == self._applied:
            return True
        try:
            current = self.core.read_node(self.node).metadata.labels or {}  # type: ignore[attr-defined]  # the client's models are untyped
            ours = {k: v for k, v in current.items() if k.startswith(OURS)}
            patch: dict[str, str | None] = {k: v for k, v in want.items() if ours.get(k) != v}
            patch |= {k: None for k in ours if k not in want}
            if patch:
                self.core.patch_node(self.node, {"metadata": {"labels": patch}})  # type: ignore[attr-defined]  # the client's models are untyped
                log.info("node %s labels: %s", self.node, patch)
        except Exception as e:  # the API server's errors are many; none may stop the loop
            log.warning("labelling node %s failed: %s", self.node, str(e).splitlines()[0][:300])
            return False
        self._applied = want
        return True
