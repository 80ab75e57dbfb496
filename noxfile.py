"""Sessions people run locally and CI runs: `nox -s tests lint notebooks conformance bench`."""

from __future__ import annotations

import os
import shutil
import tempfile
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


TTT_SOURCE = os.environ.get("TTT_SOURCE", "/work/.mirror/iamalbertly+TTTranscribe/repo")
TTT_DIR = Path(os.environ.get("TTT_DIR") or Path(tempfile.gettempdir(), "pluct-tttranscribe"))


@nox.session(name="upstream-real")
def upstream_real(session: nox.Session) -> None:
    """The app's journey against a real TTTranscribe built from its public source, offline.

    Its source is cloned outside this repo (`TTT_SOURCE`, a git URL or directory, into
    `TTT_DIR`), its npm dependencies installed and its TypeScript built; then
    `tools/upstream_real.py` runs it and the engine in a network namespace with only loopback.
    Skipped, with the reason, where git, node, npm, unshare or the source are missing.
    """
    for tool in ("git", "node", "npm", "unshare", "ip"):
        if not shutil.which(tool):
            session.skip(f"`{tool}` is not installed; the real TTTranscribe cannot run here")
    if not (TTT_DIR / ".git").exists():
        if not (TTT_SOURCE.startswith(("http", "git@")) or Path(TTT_SOURCE).exists()):
            session.skip(f"no TTTranscribe source at {TTT_SOURCE} (set TTT_SOURCE)")
        session.run("git", "clone", "--quiet", TTT_SOURCE, str(TTT_DIR), external=True)
    try:
        with session.chdir(TTT_DIR):
            session.run("npm", "ci", "--no-audit", "--no-fund", external=True)
            session.run("npx", "--no-install", "tsc", "-p", ".", external=True)
    except nox.command.CommandFailed:
        session.skip("TTTranscribe's npm dependencies could not be installed or built")
    session.install("-e", ".")
    session.run("python", "tools/upstream_real.py", "--ttt-dir", str(TTT_DIR), *session.posargs)
