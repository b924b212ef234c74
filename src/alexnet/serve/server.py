"""Running the app with uvicorn: in the foreground (``alexnet serve``) or in a background thread.

uvicorn bounds the connections served at once but times out only idle keep-alive connections, so slow
clients could hold every connection (slowloris). Its HTTP/1.1 protocol is used here with what it lacks: a
request's headers must arrive within ``header_timeout`` seconds and its body within ``body_timeout`` (else
a 408 and the connection is closed), and one client address holds at most ``per_client`` connections
(the next is answered 429), so a single client cannot take every connection.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import threading
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import UserError

__all__ = ["run_server", "ServerThread", "is_loopback", "listen"]

# Connections served at once; past it uvicorn answers 503 instead of queueing without bound.
LIMIT_CONCURRENCY = 64
HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 60.0  # 16 uploads of 10 MB at 3 MB/s
PER_CLIENT = LIMIT_CONCURRENCY // 2  # one address never holds more than half of them


def _raw_error(status: int, reason: str, message: str) -> bytes:
    """A whole HTTP response with the app's JSON error body, for a connection the app never saw."""
    body = json.dumps({"error": message}).encode()
    head = f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
    return (head + "connection: close\r\n\r\n").encode() + body


class _GuardedProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with header and body read timeouts and a bound per client address."""

    header_timeout: float = HEADER_TIMEOUT
    body_timeout: float = BODY_TIMEOUT
    per_client: int | None = PER_CLIENT

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._timer: asyncio.TimerHandle | None = None
        self._waiting: str | None = None
        host = self.client[0] if self.client else None
        if self.per_client is not None and host is not None:
            mine = sum(1 for c in self.connections if c.client and c.client[0] == host)  # this one included
            if mine > self.per_client:
                message = f"over {self.per_client} connections at once from {host}"
                transport.write(_raw_error(429, "Too Many Requests", message))
                transport.close()
                self.connections.discard(self)  # counted no more, before asyncio reports it closed
                return
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def _watch(self) -> None:
        """Time what the connection waits for: a request's headers, or the rest of its body."""
        state = self.conn.their_state
        waiting = "headers" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None
        if waiting == self._waiting or self.transport.is_closing():
            return
        if self._timer is not None:
            self._timer.cancel()
        self._waiting, self._timer = waiting, None
        if waiting is not None:
            seconds = self.header_timeout if waiting == "headers" else self.body_timeout
            self._timer = self.loop.call_later(seconds, self._expire, waiting, seconds)

    def _expire(self, waiting: str, seconds: float) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        answering = self.cycle is not None and self.cycle.response_started and not self.cycle.response_complete
        if not answering:  # else the app's own answer is under way: it is only cut short
            self.transport.write(
                _raw_error(408, "Request Timeout", f"request {waiting} not received within {seconds:g} s")
            )
        self.transport.close()


def _protocol(header_timeout: float, body_timeout: float, per_client: int | None) -> type[H11Protocol]:
    attrs = {"header_timeout": header_timeout, "body_timeout": body_timeout, "per_client": per_client}
    return type("GuardedProtocol", (_GuardedProtocol,), attrs)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one); a clear error when it is taken."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    return sock


def _config(
    app: Any,
    log_level: str,
    *,
    header_timeout: float = HEADER_TIMEOUT,
    body_timeout: float = BODY_TIMEOUT,
    per_client: int | None = PER_CLIENT,
) -> Any:
    import uvicorn

    return uvicorn.Config(
        app, log_level=log_level, limit_concurrency=LIMIT_CONCURRENCY, timeout_keep_alive=5, access_log=False,
        http=_protocol(header_timeout, body_timeout, per_client),
    )  # fmt: skip


def run_server(app: Any, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info") -> None:
    """Serve ``app`` until interrupted."""
    import uvicorn

    sock = listen(host, port)
    uvicorn.Server(_config(app, log_level)).run(sockets=[sock])


class ServerThread:
    """``with ServerThread(app) as server:`` uvicorn serving ``app`` on ``server.url`` in a thread; the
    keywords change the slow-client limits (``per_client=None``: no bound, for a load test's one client)."""

    def __init__(
        self, app: Any, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning", **limits: Any
    ) -> None:
        import uvicorn

        self.sock = listen(host, port)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.server = uvicorn.Server(_config(app, log_level, **limits))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server thread did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
