"""The running daemon's control socket, ``<cache dir>/control.sock``: how the CLI on the
same node asks it what it is doing and has it change the cache (the daemon stays the
only writer of its dir).

One JSON request line, answered by one JSON line (``{"ok": true, "result": …}`` or
``{"ok": false, "error": "…"}``); ``events`` answers with one line per event for as
long as the client stays. The socket is mode 0600 and every peer's uid is checked
(``SO_PEERCRED``): only the daemon's own uid and root may use it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from modelcar.contract import control as ctl
from modelcar.errors import ControlError, ModelcarError, UsageError

log = logging.getLogger("modelcar.cache")

SOCKET_NAME = "control.sock"
MAX_REQUEST = 64 << 10
RECENT_EVENTS = 1000

Handler = Callable[[str, dict[str, Any]], Any]


class Events:
    """The daemon's state changes: the last ones kept, each one sent to followers."""

    def __init__(self) -> None:
        self._recent: deque[str] = deque(maxlen=RECENT_EVENTS)
        self._followers: list[queue.Queue[str]] = []
        self._lock = threading.Lock()

    def publish(self, line: str) -> None:
        with self._lock:
            self._recent.append(line)
            for q in self._followers:
                with contextlib.suppress(queue.Full):  # a slow follower misses events
                    q.put_nowait(line)

    @contextlib.contextmanager
    def follow(self) -> Iterator[queue.Queue[str]]:
        q: queue.Queue[str] = queue.Queue(maxsize=10_000)
        with self._lock:
            for line in self._recent:
                q.put_nowait(line)
            self._followers.append(q)
        try:
            yield q
        finally:
            with self._lock:
                self._followers.remove(q)


@contextlib.contextmanager
def _address(path: Path) -> Iterator[str]:
    """The socket's address: a long path (over the 108 bytes AF_UNIX allows) is
    reached through its directory's file descriptor."""
    if len(str(path).encode()) < 100:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def _send(conn: socket.socket, obj: dict[str, Any]) -> None:
    conn.sendall(json.dumps(obj, sort_keys=True).encode() + b"\n")


class ControlServer:
    """Serves ``handler(op, args)`` on the socket, one thread per connection."""

    def __init__(self, root: Path, handler: Handler, events: Events):
        self.path = root / SOCKET_NAME
        self.handler = handler
        self.events = events
        self._stopped = threading.Event()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    def start(self) -> ControlServer:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a dead daemon's; the cache dir lock says we own the dir
        old = os.umask(0o177)
        try:
            with _address(self.path) as address:
                self._sock.bind(address)
        except OSError as e:
            raise UsageError(
                f"cannot create the control socket ({e.strerror})", subject=str(self.path)
            ) from None
        finally:
            os.umask(old)
        self.path.chmod(0o600)
        self._sock.listen(16)
        threading.Thread(target=self._accept, daemon=True, name="control").start()
        log.info("control socket %s", self.path)
        return self

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed by stop()
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                uid = _peer_uid(conn)
                if uid not in (0, os.geteuid()):
                    _send(conn, {"ok": False, "error": f"uid {uid} may not use this daemon"})
                    return
                conn.settimeout(30)
                op, args = self._read(conn)
                if op == "events":
                    self._stream(conn, bool(args.get("follow")))
                    return
                try:
                    result = self.handler(op, args)
                except ModelcarError as e:
                    _send(conn, {"ok": False, "error": e.one_line()})
                    return
                _send(conn, {"ok": True, "result": result})
            except ValueError as e:  # a malformed request: say so, keep serving
                with contextlib.suppress(OSError):
                    _send(conn, {"ok": False, "error": f"bad control request: {e}"})
            except OSError:
                pass  # the client went away
            except Exception as e:  # a bug must not stop the daemon
                log.exception("control request failed")
                with contextlib.suppress(OSError):
                    _send(conn, {"ok": False, "error": f"internal error: {type(e).__name__}"})

    @staticmethod
    def _read(conn: socket.socket) -> tuple[str, dict[str, Any]]:
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_REQUEST:
                raise ValueError(f"request over {MAX_REQUEST} bytes")
        try:
            request = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise ValueError("not one JSON line") from None
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            raise ValueError('expected {"op": "…", …}')
        args = request.get("args") or {}
        if not isinstance(args, dict):
            raise ValueError('"args" must be an object')
        return request["op"], args

    def _stream(self, conn: socket.socket, follow: bool) -> None:
        with self.events.follow() as q:
            while True:
                try:
                    line = q.get(timeout=1.0)
                except queue.Empty:
                    if not follow or self._stopped.is_set():
                        return
                    continue  # a client that left is noticed at the next event
                conn.sendall(line.encode() + b"\n")


def connect(root: Path, timeout: float | None = 600) -> socket.socket | None:
    """A connection to the daemon of ``root``; None when no daemon is running there."""
    path = Path(root) / SOCKET_NAME
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with _address(path) as address:
            sock.connect(address)
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
        sock.close()
        return None
    except PermissionError:
        sock.close()
        raise UsageError(
            "may not use the running daemon's control socket",
            subject=str(path),
            hint="run as the daemon's user (or root)",
        ) from None
    return sock


def _lines(sock: socket.socket) -> Iterator[str]:
    buf = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            if buf:
                yield buf.decode()
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.decode()


def request(root: Path, op: str, timeout: float | None = 600, **args: Any) -> Any:
    """Ask the running daemon; its result. None if no daemon runs on ``root`` (the
    caller then works in-process); ControlError with the daemon's reason if it refused."""
    sock = connect(root, timeout)
    if sock is None:
        return None
    with sock:
        _send(sock, {"op": op, "args": args})
        line = next(_lines(sock), "")
    try:
        answer = json.loads(line)
    except json.JSONDecodeError:
        raise ControlError("the daemon gave no answer", subject=str(root)) from None
    if not answer.get("ok"):
        raise ControlError(answer.get("error") or "refused", subject=str(root))
    return answer.get("result")


def status(root: Path) -> ctl.LiveStatus | None:
    """What the running daemon does now; None if none runs on ``root``."""
    answer = request(root, "status", timeout=10)
    return None if answer is None else ctl.LiveStatus.model_validate(answer)


def gc(root: Path, args: ctl.GcArgs) -> ctl.GcResult | None:
    answer = request(root, "gc", **args.model_dump())
    return None if answer is None else ctl.GcResult.model_validate(answer)


def pull(root: Path, ref: str) -> ctl.PullResult | None:
    answer = request(root, "pull", **ctl.PullArgs(ref=ref).model_dump())
    return None if answer is None else ctl.PullResult.model_validate(answer)


def verify(root: Path, args: ctl.VerifyArgs) -> list[ctl.VerifyResult] | None:
    answer = request(root, "verify", **args.model_dump())
    return None if answer is None else TypeAdapter(list[ctl.VerifyResult]).validate_python(answer)


def events(root: Path, follow: bool) -> Iterator[str] | None:
    """The daemon's events (the recent ones, then new ones while ``follow``); None
    if no daemon runs on ``root``."""
    sock = connect(root, timeout=None)
    if sock is None:
        return None

    def lines() -> Iterator[str]:
        with sock:
            _send(sock, {"op": "events", "args": {"follow": follow}})
            for line in _lines(sock):
                if line.startswith('{"error"') or line.startswith('{"ok": false'):
                    raise ControlError(json.loads(line).get("error", "refused"))
                yield line

    return lines()
