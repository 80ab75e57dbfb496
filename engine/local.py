"""Run a real engine locally: for notebooks, tests and benchmarks.

    with LocalEngine() as engine:                   # temporary SQLite store + simulator
        token = engine.mint_user("alice")
        engine.client.post("/v1/credits/add", json={...}, headers=engine.admin_headers)

`LocalEngine` starts `pluct-engine serve` as a separate process on a free loopback port (the
real server, not an in-process test client), with fresh secrets, a temporary store and the
upstream simulator running in this process, and hands back the base URL, the secrets and a
ready httpx client.  `RedisServer` does the same for a throwaway `redis-server`.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

from engine.config import Settings
from engine.domain.tokens import TRANSCRIBE_SCOPE, TokenAuthority
from engine.upstream.sim_server import BackgroundSimulator

STARTUP_TIMEOUT_SECONDS = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_cluster_port() -> int:
    """A free port whose cluster-bus port (+10000) is free and valid too."""
    for candidate in random.sample(range(20_000, 45_000), 200):
        try:
            for port in (candidate, candidate + 10_000):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return candidate
    raise RuntimeError("no free port pair for a Redis Cluster node")


def _wait_until(
    ready: Callable[[], bool], what: str, process: subprocess.Popen[bytes] | None
) -> None:
    """Start-up synchronisation: poll readiness, fail fast if the process died."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} during start-up")
        if ready():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not become ready in {STARTUP_TIMEOUT_SECONDS} s")


class RedisServer:
    """A throwaway `redis-server` on a free loopback port, AOF on, data in a temp folder."""

    def __init__(self, *, appendonly: bool = True, cluster: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed (Debian: apt-get install redis-server)"
            )
        self._binary = binary
        self._appendonly = appendonly
        self._cluster = cluster
        self.port = free_cluster_port() if cluster else free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = Path(tempfile.mkdtemp(prefix="pluct-redis-"))
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        self._process = subprocess.Popen(  # noqa: S603 - fixed binary, our own arguments
            [
                self._binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self._appendonly else "no",
                "--dir",
                str(self._dir),
                "--protected-mode",
                "yes",
                "--loglevel",
                "warning",
                *self._cluster_args(),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_until(self._answers, "redis-server", self._process)
        except BaseException:
            self.stop()
            raise
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def _cluster_args(self) -> list[str]:
        if not self._cluster:
            return []
        return ["--cluster-enabled", "yes", "--cluster-config-file", str(self._dir / "nodes.conf")]

    def cluster_ok(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"CLUSTER INFO\r\n")
                return b"cluster_state:ok" in sock.recv(4096)
        except OSError:
            return False

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class RedisClusterServers:
    """A throwaway three-primary Redis Cluster on free loopback ports (redis-server + redis-cli)."""

    def __init__(self, nodes: int = 3) -> None:
        self._nodes = [RedisServer(cluster=True) for _ in range(nodes)]
        self.url = f"redis+cluster://127.0.0.1:{self._nodes[0].port}"

    def start(self) -> Self:
        try:
            for node in self._nodes:
                node.start()
            cli = shutil.which("redis-cli")
            if cli is None:
                raise RuntimeError("redis-cli is not installed (apt-get install redis-tools)")
            subprocess.run(  # noqa: S603 - fixed binary, our own arguments
                [
                    cli,
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{n.port}" for n in self._nodes),
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
            _wait_until(lambda: all(n.cluster_ok() for n in self._nodes), "redis cluster", None)
        except BaseException:
            self.close()
            raise
        return self

    def flush(self) -> None:
        """Empty every primary (between tests)."""
        for node in self._nodes:
            with socket.create_connection(("127.0.0.1", node.port), timeout=5) as sock:
                sock.sendall(b"FLUSHALL\r\n")
                sock.recv(64)

    def close(self) -> None:
        for node in self._nodes:
            node.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def exchange(response: httpx.Response, limit: int = 600) -> str:
    """A request and its response as text, the way a notebook shows an HTTP exchange."""
    request = response.request
    shown = ("authorization", "x-api-key", "content-type", "x-client-request-id")
    lines = [f"> {request.method} {request.url.raw_path.decode()}"]
    for name in shown:
        if name in request.headers:
            value = request.headers[name]
            lines.append(f"> {name}: {value[:24] + '…' if len(value) > 28 else value}")
    if request.content:
        lines.append(f"> {request.content.decode(errors='replace')[:limit]}")
    lines.append(f"< {response.status_code} {response.reason_phrase}")
    for name in ("idempotent-replayed", "ratelimit", "retry-after"):
        if name in response.headers:
            lines.append(f"< {name}: {response.headers[name]}")
    lines.append(f"< {response.text[:limit]}")
    return "\n".join(lines)


class LocalEngine:
    """A real engine process with its own secrets, store and upstream simulator."""

    def __init__(
        self,
        *,
        store_url: str | None = None,
        redis: bool = False,
        workers: int = 1,
        rate_limit_per_minute: int = 100,
        env: dict[str, str] | None = None,
    ) -> None:
        """`redis=True` starts a throwaway redis-server for this engine (and stops it after)."""
        self._dir = Path(tempfile.mkdtemp(prefix="pluct-engine-"))
        self._redis = RedisServer().start() if redis and store_url is None else None
        if self._redis is not None:
            store_url = self._redis.url
        self.store_url = store_url or f"sqlite:///{self._dir / 'engine.db'}"
        self.workers = workers
        self.jwt_secret = secrets.token_urlsafe(32)
        self.admin_key = secrets.token_urlsafe(32)
        self.ttt_secret = secrets.token_urlsafe(32)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.simulator = BackgroundSimulator(self.ttt_secret)
        self._env = {
            **os.environ,
            "ENGINE_JWT_SECRET": self.jwt_secret,
            "ENGINE_ADMIN_KEY": self.admin_key,
            "TTT_SHARED_SECRET": self.ttt_secret,
            "TTT_BASE": self.simulator.url,
            "META_FETCH_BASE": self.simulator.url,
            "ENGINE_STORE_URL": self.store_url,
            "RATE_LIMIT_PER_MINUTE": str(rate_limit_per_minute),
            **(env or {}),
        }
        self.settings = Settings.from_env(self._env)
        self._tokens = TokenAuthority(self.settings)
        self._process: subprocess.Popen[bytes] | None = None
        self.log_path = self._dir / "engine.log"
        self.client = httpx.Client(base_url=self.url, timeout=30.0)

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"X-API-Key": self.admin_key}

    def mint_user(self, user_id: str, scope: str = TRANSCRIBE_SCOPE, ttl: int = 3600) -> str:
        return self._tokens.mint_user(user_id, scope, ttl, time.time())

    def user_headers(self, user_id: str, scope: str = TRANSCRIBE_SCOPE) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.mint_user(user_id, scope)}"}

    def start(self) -> Self:
        if not self.simulator.running:
            self.simulator.start()
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(  # noqa: S603 - our own module, our own arguments
                [
                    sys.executable,
                    "-m",
                    "engine",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--workers",
                    str(self.workers),
                    "--log-level",
                    "warning",
                ],
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait_until(self._healthy, "pluct-engine", self._process)
        return self

    def _healthy(self) -> bool:
        try:
            return self.client.get("/health").status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def worker_pids(self) -> list[int]:
        """Children of the server process (the uvicorn workers when `workers > 1`)."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        return [int(pid) for pid in children.read_text().split()] if children.exists() else []

    def kill(self) -> None:
        """SIGKILL the whole server (supervisor and workers): a crash, not a shutdown."""
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(timeout=10)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        self.stop()
        self.start()

    def ledger_verify(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603
            [sys.executable, "-m", "engine", "ledger", "verify", "--store", self.store_url],
            env=self._env,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )

    def close(self) -> None:
        self.stop()
        self.client.close()
        self.simulator.stop()
        if self._redis is not None:
            self._redis.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with contextlib.suppress(Exception):
            self.close()
