"""An ASGI app served by uvicorn on 127.0.0.1 in a background thread: how troupe's door and every
fake of an outside party run inside tests and benchmarks."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, Self

import uvicorn


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LoopbackServer:
    """A context manager: entering returns once the server listens; leaving stops it."""

    label = "loopback server"

    def __init__(
        self, app: Any, port: int | None = None, *, lifespan: Literal["auto", "on", "off"] = "off", **config: Any
    ) -> None:
        self.port = port or free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan=lifespan, **config)
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"{self.label} did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve an app (with its lifespan) on a free loopback port; yields its root URL."""
    with LoopbackServer(app, lifespan="auto") as server:
        yield server.root
