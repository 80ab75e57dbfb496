"""`nox -s original -- PATH_OR_GIT_URL`: judge the original Cloudflare Worker, run for real.

Uses (or clones) a checkout of github:iamalbertly/pluct-business-engine, runs `npm ci` and
`wrangler dev --local` (wrangler from its devDependencies) on loopback with test secrets and
fresh local KV/D1 state, its upstream (`TTT_BASE`) pointed at our TTTranscribe simulator
(`python -m engine simulator`, a separate process), and runs `pluct-conformance --profile seed`
against it. The JSON report goes to `conformance/reports/original-<rev>.json`.

Exit 0 when the suite ran to a verdict (the original is expected to fail checks: that is the
measurement), 2 when it could not run; the suite's own exit code is printed. Skips with a
reason (exit 0) where node or npm is missing. Nothing of the Worker's code is copied here.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "conformance" / "reports"
STARTUP_SECONDS = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def checkout(source: str, work: Path) -> Path:
    """The Worker's checkout: `source` itself when it is a directory, else a fresh clone."""
    path = Path(source)
    if path.is_dir() and (path / "package.json").exists():
        return path.resolve()
    if path.is_dir() and (path / "HEAD").exists():  # a bare mirror
        source = str(path.resolve())
    target = work / "worker"
    subprocess.run(["git", "clone", "-q", source, str(target)], check=True)
    return target


def wait_ready(url: str, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} during start-up")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{what} was not ready at {url} within {STARTUP_SECONDS} s")


def stop(process: subprocess.Popen[bytes] | None) -> None:
    """Stop a process this script started, and its children (it leads its own group)."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: nox -s original -- PATH_OR_GIT_URL [pluct-conformance options]")
        return 2
    source, extra = argv[0], argv[1:]
    missing = [tool for tool in ("node", "npm", "git") if shutil.which(tool) is None]
    if missing:
        print(f"SKIPPED: the original Worker needs {', '.join(missing)} (not installed)")
        return 0
    work = Path(tempfile.mkdtemp(prefix="pluct-original-"))
    jwt_secret, admin_key, ttt_secret = (secrets.token_urlsafe(24) for _ in range(3))
    simulator = worker = None
    try:
        repo = checkout(source, work)
        rev = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        print(f"original Worker at {repo} (revision {rev}): npm ci", flush=True)
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=repo, check=True)
        sim_port, worker_port = free_port(), free_port()
        simulator = subprocess.Popen(
            [sys.executable, "-m", "engine", "simulator", "--port", str(sim_port)],
            env={**os.environ, "TTT_SHARED_SECRET": ttt_secret},
            start_new_session=True,
        )
        sim_url = f"http://127.0.0.1:{sim_port}"
        wait_ready(f"{sim_url}/health", simulator, "the simulator")
        wrangler = repo / "node_modules" / ".bin" / "wrangler"
        log = (work / "wrangler.log").open("wb")
        worker = subprocess.Popen(
            [
                str(wrangler),
                "dev",
                "--local",
                "--ip",
                "127.0.0.1",
                "--port",
                str(worker_port),
                "--persist-to",
                str(work / "state"),
                "--var",
                f"ENGINE_JWT_SECRET:{jwt_secret}",
                "--var",
                f"ENGINE_ADMIN_KEY:{admin_key}",
                "--var",
                f"TTT_SHARED_SECRET:{ttt_secret}",
                "--var",
                f"TTT_BASE:{sim_url}",
                "--var",
                f"BUILD_REF:{rev}",
            ],
            cwd=repo,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "WRANGLER_SEND_METRICS": "false", "CI": "1"},
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{worker_port}"
        wait_ready(f"{url}/health", worker, "wrangler dev")
        print(f"wrangler dev serving the original at {url}; upstream {sim_url}", flush=True)
        REPORTS.mkdir(parents=True, exist_ok=True)
        report = REPORTS / f"original-{rev}.json"
        started = time.perf_counter()
        code = subprocess.run(
            [
                "pluct-conformance",
                "run",
                "--url",
                url,
                "--profile",
                "seed",
                "--simulator-url",
                sim_url,
                "--json",
                str(report),
                *extra,
            ],
            env={
                **os.environ,
                "PLUCT_JWT_SECRET": jwt_secret,
                "PLUCT_ADMIN_KEY": admin_key,
                "PLUCT_SIMULATOR_SECRET": ttt_secret,
            },
            check=False,
        ).returncode
        print(
            f"pluct-conformance (seed) against the original {rev}: exit {code} in"
            f" {time.perf_counter() - started:.1f} s; report {report.relative_to(ROOT)}"
        )
        return 0 if code in (0, 1) else code
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"cannot run the original Worker: {exc}")
        return 2
    finally:
        stop(worker)
        stop(simulator)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
