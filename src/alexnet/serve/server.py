"""Running the app with uvicorn: in the foreground (``alexnet serve``) or in a background thread."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from typing import Any

from ..errors import UserError

__all__ = ["run_server", "ServerThread", "is_loopback", "listen"]

# Connections served at once; past it uvicorn answers 503 instead of queueing without bound.
LIMIT_CONCURRENCY = 64


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


def _config(app: Any, log_level: str, **kwargs: Any) -> Any:
    import uvicorn

    return uvicorn.Config(
        app, log_level=log_level, limit_concurrency=LIMIT_CONCURRENCY, timeout_keep_alive=5, access_log=False, **kwargs
    )


def run_server(app: Any, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info") -> None:
    """Serve ``app`` until interrupted."""
    import uvicorn

    sock = listen(host, port)
    uvicorn.Server(_config(app, log_level)).run(sockets=[sock])


class ServerThread:
    """``with ServerThread(app) as server:`` uvicorn serving ``app`` on ``server.url`` in a thread."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning") -> None:
        import uvicorn

        self.sock = listen(host, port)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.server = uvicorn.Server(_config(app, log_level))
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
