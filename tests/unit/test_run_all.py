"""run_all: errgroup's rule, and a wave's missed layers asked again while others run."""

from __future__ import annotations

import threading
import time

import pytest

from modelcar.cache_daemon.blobstream import PeersBusy, SourcesMissed
from modelcar.cache_daemon.ingest import run_all
from modelcar.errors import DigestMismatch


def test_a_missed_layer_is_asked_again_while_others_run_and_then_succeeds():
    calls = {"missed": 0}
    other_done = threading.Event()

    def missed_twice() -> str:
        calls["missed"] += 1
        if calls["missed"] <= 2:
            raise SourcesMissed("nobody yet")
        return "late"

    def slow() -> str:
        time.sleep(0.5)
        other_done.set()
        return "slow"

    out = run_all(2, [missed_twice, slow], threading.Event(), miss_retry=0.05)
    assert out == ["late", "slow"] and calls["missed"] == 3


def test_misses_are_raised_once_nothing_else_runs():
    calls = {"n": 0}

    def never() -> None:
        calls["n"] += 1
        raise PeersBusy("all busy")

    with pytest.raises(PeersBusy):
        run_all(2, [never, lambda: time.sleep(0.3)], threading.Event(), miss_retry=0.05)
    assert 2 <= calls["n"] <= 20  # asked again while the other ran, then given up


def test_the_first_real_error_cancels_the_rest_and_wins():
    cancel = threading.Event()
    started: list[int] = []

    def bad() -> None:
        raise DigestMismatch("bad bytes")

    def task(i: int):
        def run() -> None:
            started.append(i)
            time.sleep(0.05)

        return run

    with pytest.raises(DigestMismatch):
        run_all(1, [bad, *[task(i) for i in range(20)]], cancel)
    assert cancel.is_set() and len(started) <= 1  # tasks not started never start
