"""`nox -s conformance`: strict conformance against our own engine, SQLite then Redis.

Each store gets a fresh engine process (with the bundled upstream simulator) started by
`engine.local`; the suite itself runs as its own CLI, exactly as an operator would run it,
given every option that deepens the verdict: the simulator's URL and secret (upstream jobs
are counted), the webhook secret and a configured CORS origin.

The SQLite engine runs with two workers (the double-spend race is a cross-worker race) and,
like an offline production host, without META_FETCH_BASE: TikTok is unreachable, so the
checks that need a metadata fetch are inconclusive, never failures, and the run exits 0.
The Redis engine (two workers too) fetches metadata from the simulator, so those checks run
for real there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from engine.local import LocalEngine, RedisServer

CORS_ORIGIN = "https://app.conformance.example"


def judge(engine: LocalEngine, label: str, extra: list[str]) -> int:
    started = time.perf_counter()
    command = [
        "pluct-conformance",
        "run",
        "--url",
        engine.url,
        "--profile",
        "strict",
        "--cors-origin",
        CORS_ORIGIN,
        "--simulator-url",
        engine.simulator.url,
        "--junit",
        f"reports/conformance-{label}.xml",
        "--json",
        f"reports/conformance-{label}.json",
        *extra,
    ]
    # Secrets through the environment: not on the process list, and a generated secret that
    # starts with "-" cannot be mistaken for an option.
    secrets = {
        "PLUCT_JWT_SECRET": engine.jwt_secret,
        "PLUCT_ADMIN_KEY": engine.admin_key,
        "PLUCT_WEBHOOK_SECRET": engine.ttt_secret,
        "PLUCT_SIMULATOR_SECRET": engine.ttt_secret,
    }
    code = subprocess.run(command, check=False, env={**os.environ, **secrets}).returncode
    print(f"conformance on {label}: exit {code} in {time.perf_counter() - started:.1f} s")
    return code


def main(extra: list[str]) -> int:
    Path("reports").mkdir(exist_ok=True)
    offline = {"META_FETCH_BASE": "", "CORS_ORIGINS": CORS_ORIGIN}
    with LocalEngine(workers=2, env=offline) as engine:
        sqlite_code = judge(engine, "sqlite", extra)
    with (
        RedisServer() as redis_server,
        LocalEngine(
            store_url=redis_server.url, workers=2, env={"CORS_ORIGINS": CORS_ORIGIN}
        ) as engine,
    ):
        redis_code = judge(engine, "redis", extra)
    return max(sqlite_code, redis_code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
