"""Sessions people run locally and CI runs: `nox -s tests lint notebooks conformance bench`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["lint", "tests", "notebooks"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
NOTEBOOKS = sorted(str(p) for p in (ROOT / "notebooks").glob("*.ipynb"))


def _ensure_redis_server(session: nox.Session) -> None:
    """The Redis tests need a real `redis-server`; install it on Debian when we may."""
    if shutil.which("redis-server"):
        return
    if shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        session.run("apt-get", "update", "-qq", external=True)
        session.run("apt-get", "install", "-y", "-qq", "redis-server", external=True)
        return
    session.error("redis-server is required for the tests: apt-get install redis-server")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, both stores, real servers."""
    _ensure_redis_server(session)
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, mypy --strict, and notebooks committed without outputs."""
    session.install("-e", ".[test]", "-e", "./conformance", "ruff", "mypy", "types-PyYAML")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy", "--strict", "engine")
    session.run(
        "mypy",
        "--strict",
        "--config-file",
        "conformance/pyproject.toml",
        "conformance/src/pluct_conformance",
    )
    session.run("python", "tools/check_notebooks.py", *NOTEBOOKS)


@nox.session
def notebooks(session: nox.Session) -> None:
    """Execute every notebook top to bottom."""
    _ensure_redis_server(session)
    session.install("-e", ".[test,notebooks]", "-e", "./conformance")
    session.run(
        "pytest",
        "--nbmake",
        "--nbmake-timeout=120",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        *NOTEBOOKS,
        *session.posargs,
    )


@nox.session
def conformance(session: nox.Session) -> None:
    """Strict conformance against our engine (SQLite, then Redis), or `-- --url ...` remote."""
    session.install("-e", ".", "-e", "./conformance[test]")
    if "--url" in session.posargs:
        session.run("pluct-conformance", "run", *session.posargs)
        return
    _ensure_redis_server(session)
    # The judge first (each check against its defect fixture), then our engine judged.
    session.run("pytest", "conformance/tests", "-o", "addopts=", "-p", "no:cacheprovider")
    session.run("python", "tools/conformance_local.py", *session.posargs)


@nox.session
def original(session: nox.Session) -> None:
    """Seed conformance of the original Worker under `wrangler dev --local`:
    `nox -s original -- PATH_OR_GIT_URL`; writes conformance/reports/original-<rev>.json."""
    if not session.posargs:
        session.error("usage: nox -s original -- PATH_OR_GIT_URL")
    missing = [tool for tool in ("node", "npm", "git") if not shutil.which(tool)]
    if missing:
        session.skip(f"the original Worker needs {', '.join(missing)}, not installed here")
    session.install("-e", ".", "-e", "./conformance")
    session.run("python", "tools/conformance_original.py", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Throughput and latency with wrk; writes bench-results/ and prints a table."""
    _ensure_redis_server(session)
    if not shutil.which("wrk"):
        session.error("wrk is required: apt-get install wrk")
    session.install("-e", ".")
    session.run("python", "tools/bench.py", *session.posargs)


@nox.session
def dev(session: nox.Session) -> None:
    """Run the engine with generated dev secrets, SQLite and the upstream simulator."""
    session.install("-e", ".")
    session.run("pluct-engine", "serve", "--dev", *session.posargs)


@nox.session
def lab(session: nox.Session) -> None:
    """Open the notebooks in JupyterLab."""
    session.install("-e", ".[notebooks]", "-e", "./conformance", "jupyterlab")
    session.run("jupyter", "lab", "notebooks", *session.posargs)
