"""The TTTranscribe simulator served: in the foreground (`pluct-engine simulator`), or on a
free loopback port in a daemon thread (dev mode, tests, notebooks)."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from engine.upstream.simulator import Simulator


def _bound_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def run_simulator(host: str, port: int, secret: str, webhook_url: str = "") -> None:
    """Serve in the foreground (`pluct-engine simulator`)."""
    app = Simulator(secret, webhook_url=webhook_url)
    app.base_url = f"http://{host}:{port}"
    uvicorn.run(app, host=host, port=port, log_level="warning", lifespan="off")


class BackgroundSimulator:
    """The simulator on a free loopback port in a daemon thread (dev mode, tests, notebooks)."""

    def __init__(self, secret: str, host: str = "127.0.0.1") -> None:
        self.app = Simulator(secret)
        self._sock = _bound_socket(host, 0)
        self.url = f"http://{host}:{self._sock.getsockname()[1]}"
        self.app.base_url = self.url
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._sock]},
            daemon=True,
            name="ttt-simulator",
        )

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> BackgroundSimulator:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the simulator did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)


def start_background_simulator(secret: str) -> str:
    return BackgroundSimulator(secret).start().url
