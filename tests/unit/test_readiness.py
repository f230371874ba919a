"""The daemon's readiness: a pass has run and every model it wanted is published."""

from __future__ import annotations

import json
import threading

from modelcar.cache_daemon.cachedir import CacheDir
from modelcar.cache_daemon.daemon import Daemon, DaemonOptions
from modelcar.cache_daemon.desired import DesiredFromFile, Wanted


class Gate(DesiredFromFile):
    """The models file, read only when the test lets the pass ask for it."""

    def __init__(self, path):
        super().__init__(path)
        self.asked = threading.Event()
        self.answer = threading.Event()

    def desired(self) -> list[Wanted]:
        self.asked.set()
        assert self.answer.wait(60)
        return super().desired()


def test_not_ready_before_the_first_pass_even_with_nothing_wanted(tmp_path):
    config = tmp_path / "models.yaml"
    config.write_text(json.dumps({"models": []}))
    cache = CacheDir(tmp_path / "cache").open()
    gate = Gate(config)
    daemon = Daemon(cache, DaemonOptions(node="n1"), gate)
    runner = threading.Thread(target=daemon.run_once, daemon=True)
    try:
        assert not daemon.ready()  # nothing wanted yet, because nothing was asked yet
        runner.start()
        assert gate.asked.wait(60)
        assert not daemon.ready()  # asking, not answered
        gate.answer.set()
        runner.join(60)
        assert not runner.is_alive()
        assert daemon.ready()  # the pass ran; it wanted nothing
    finally:
        gate.answer.set()
        runner.join(60)
        cache.close()
