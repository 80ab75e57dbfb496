"""What `pluct-engine serve` checks before it serves, and the secrets `serve --dev` keeps.

Every problem found here is a `StartupError` whose message is one line naming the variable
or flag and what to do; the CLI prints it and exits 2, before anything says it is serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
import tempfile
from collections.abc import MutableMapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from engine.config import (
    ADMIN_KEY_NAMES,
    JWT_SECRET_NAMES,
    TTT_SECRET_NAMES,
    ConfigError,
    generate_missing_secrets,
)
from engine.store import StoreUnavailable, store_from_url

DEFAULT_DEV_SECRETS = "data/dev-secrets.env"
STORE_CHECK_SECONDS = 10.0


class StartupError(Exception):
    """One line for stderr: what is wrong, which variable or flag, what to do."""


def redacted(url: str) -> str:
    """A store URL without its password, fit for a log line or an error message."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def check_port(host: str, port: int, name: str = "--port / ENGINE_PORT") -> None:
    """Bind the address once, as uvicorn will, so "in use" is found before anything runs."""
    if not 0 < port < 65536:
        raise StartupError(f"{name}: {port} is not a port; use 1-65535")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == 98:  # EADDRINUSE
                raise StartupError(
                    f"{name}: {host}:{port} is already in use; stop what listens there or"
                    " choose another port"
                ) from None
            raise StartupError(
                f"--host / ENGINE_HOST: cannot listen on {host}:{port} ({exc.strerror});"
                " use an address of this machine, e.g. 127.0.0.1"
            ) from None


def check_store(url: str) -> None:
    """Open the store once and close it: a bad URL, an unreadable file or an unreachable Redis
    is reported now, not as a traceback in every worker."""
    shown = redacted(url)
    try:
        store = store_from_url(url)
    except ConfigError as exc:
        raise StartupError(f"--store / ENGINE_STORE_URL: {exc}") from None

    async def probe() -> None:
        async with asyncio.timeout(STORE_CHECK_SECONDS):
            await store.open()
            try:
                if not await store.ping():
                    raise StoreUnavailable("it does not answer")
            finally:
                await store.close()

    try:
        asyncio.run(probe())
    except (OSError, sqlite3.Error, StoreUnavailable, TimeoutError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StartupError(
            f"--store / ENGINE_STORE_URL: cannot open {shown} ({reason}); check the path and"
            " its permissions, or that the server is up"
        ) from None
    except Exception as exc:  # a driver's own error type: still one line, never a traceback
        raise StartupError(
            f"--store / ENGINE_STORE_URL: cannot open {shown} ({type(exc).__name__}: {exc})"
        ) from None


def _read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and name and not name.startswith("#"):
            values[name] = value
    return values


def dev_secrets(env: MutableMapping[str, str], path: Path) -> bool:
    """Fill in the secrets `env` lacks from `path`, generating (and saving) any the file lacks.

    The file is `NAME=value` lines (`set -a; . data/dev-secrets.env; set +a` loads it into a
    shell), mode 0600, so tokens minted against one dev run still work after a restart.
    Returns whether the file was written.
    """
    try:
        stored = _read_env_file(path) if path.exists() else {}
    except OSError as exc:
        raise StartupError(f"--dev-secrets: cannot read {path} ({exc.strerror})") from None
    groups = (JWT_SECRET_NAMES, ADMIN_KEY_NAMES, TTT_SECRET_NAMES)
    for names in groups:
        if not any(env.get(name, "").strip() for name in names) and stored.get(names[0]):
            env[names[0]] = stored[names[0]]
    generated = generate_missing_secrets(env)
    if not generated:
        return False
    env.update(generated)
    stored.update(generated)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write("# pluct-engine serve --dev: generated secrets, reused on every start\n")
            out.writelines(f"{name}={value}\n" for name, value in stored.items())
        os.replace(temporary, path)
    except OSError as exc:
        raise StartupError(
            f"--dev-secrets / ENGINE_DEV_SECRETS: cannot write {path} ({exc.strerror});"
            " choose a writable path"
        ) from None
    return True


def prepare_multiprocess_metrics(env: MutableMapping[str, str]) -> None:
    """Several workers share metrics through files in `PROMETHEUS_MULTIPROC_DIR`: a fresh
    directory per start (stale files from an earlier run would be counted again)."""
    configured = env.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
    if not configured:
        env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="pluct-metrics-")
        return
    directory = Path(configured)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):  # only prometheus_client's own files
            stale.unlink()
    except OSError as exc:
        raise StartupError(
            f"PROMETHEUS_MULTIPROC_DIR: cannot empty {directory} ({exc.strerror})"
        ) from None
