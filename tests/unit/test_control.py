"""The control socket's protocol, without a daemon behind it."""

from __future__ import annotations

import json
import os
import socket

import pytest

from modelcar.cache_daemon.control import ControlServer, Events, events, request
from modelcar.errors import ControlError, ModelcarError


def handler(op: str, args: dict) -> object:
    if op == "fail":
        raise ModelcarError("nothing to do", subject="here")
    return {"op": op, "args": args}


def test_requests_answers_refusals_and_events_even_on_a_long_path(tmp_path):
    root = tmp_path / ("d" * 120)  # over AF_UNIX's 108 bytes
    root.mkdir()
    hub = Events()
    server = ControlServer(root, handler, hub).start()
    try:
        assert request(root, "status", n=1) == {"op": "status", "args": {"n": 1}}
        with pytest.raises(ControlError, match="nothing to do: here"):
            request(root, "fail")
        dir_fd = os.open(root, os.O_RDONLY)
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(f"/proc/self/fd/{dir_fd}/control.sock")  # the path is too long
                s.sendall(b'{"op": "x", "args": [1]}\n')
                answer = json.loads(s.makefile().readline())
        finally:
            os.close(dir_fd)
        assert answer == {"ok": False, "error": 'bad control request: "args" must be an object'}
        hub.publish('{"event": "ready"}')
        lines = events(root, follow=False)
        assert lines is not None and list(lines) == ['{"event": "ready"}']
    finally:
        server.stop()
    assert request(root, "status") is None  # no daemon: the caller works in-process
