"""What this node should hold: the API's assignments, or a static YAML list."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from modelcar.cache_daemon.pull import pinned
from modelcar.cache_daemon.sources import SourceSpec, check_chain, parse_source
from modelcar.contract import wire
from modelcar.contract.client import ApiClient
from modelcar.errors import ModelcarError, UsageError
from modelcar.filestamp import Stamp, stamp
from modelcar.oci.manifest import first_error
from modelcar.trust.policy import Rule

log = logging.getLogger("modelcar.cache")


@dataclass(frozen=True)
class Wanted:
    digest: str
    image: str
    label: str  # name:version or the reference, for logs
    #: What to check before publishing it: its policies' verification rules.
    rules: tuple[Rule, ...] = ()
    #: Rollout waves: fetch from the origin only with a lease from the API.
    rollout: wire.RolloutRule | None = None


class DesiredFromFile:
    """``models: [REPO@sha256:…, …]`` in a YAML file, re-read when it changes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._stamp: Stamp | None = None
        self._wanted: list[Wanted] = []

    def desired(self) -> list[Wanted]:
        now = stamp([self.path])
        if now[0][1] is None:
            raise UsageError("cannot read --config", subject=str(self.path), hint="no such file")
        if now != self._stamp:
            self._wanted = self._read()
            self._stamp = now
            log.info("config %s: %d models", self.path, len(self._wanted))
        return self._wanted

    def _load(self) -> dict[str, Any]:
        try:
            data = yaml.safe_load(self.path.read_text()) or {}
        except yaml.YAMLError as e:
            raise UsageError(
                "--config is not valid YAML", subject=str(self.path), hint=" ".join(str(e).split())
            ) from None
        except OSError as e:
            raise UsageError(
                "cannot read --config", subject=str(self.path), hint=e.strerror
            ) from None
        return data if isinstance(data, dict) else {}

    def sources(self) -> list[SourceSpec]:
        """``sources:`` — the chain, as ``--source`` strings or ``{kind, url, credentials}``."""
        items = self._load().get("sources") or []
        if not isinstance(items, list):
            raise UsageError("--config needs `sources:` as a list", subject=str(self.path))
        specs = []
        for item in items:
            if isinstance(item, str):
                specs.append(parse_source(item))
                continue
            try:
                specs.append(SourceSpec.model_validate(item))
            except ValidationError as e:
                raise UsageError(
                    "invalid source in --config", subject=str(self.path), hint=first_error(e)
                ) from None
        return check_chain(specs)

    def _read(self) -> list[Wanted]:
        data = self._load()
        models = data.get("models")
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise UsageError(
                "--config needs `models:` as a list of pinned image references",
                subject=str(self.path),
            )
        return [Wanted(pinned(m).digest or "", m, m) for m in models]


class DesiredFromApi:
    """The node's assignments from ``modelcar-api`` (aliases resolved there, now)."""

    def __init__(self, client: ApiClient, node: str, labels: dict[str, str]):
        self.client, self.node, self.labels = client, node, labels
        self._last: list[Wanted] | None = None

    def desired(self) -> list[Wanted]:
        try:
            got = self.client.assignments(self.node, self.labels)
        except ModelcarError as e:
            if self._last is None:
                raise
            log.warning("assignments unavailable, keeping the last ones: %s", e.one_line())
            return self._last
        for u in got.unresolved:
            log.warning("policy %s: %s does not resolve: %s", u.policy, u.ref, u.error)
        self._last = [
            Wanted(a.digest, a.image, f"{a.name}:{a.version}", _rules(a), a.rollout)
            for a in got.models
        ]
        return self._last


def _rules(a: wire.Assignment) -> tuple[Rule, ...]:
    return tuple(Rule(r.policy, tuple(r.keys), r.require, r.source_prefix) for r in a.verification)
