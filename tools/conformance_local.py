"""`nox -s conformance`: strict conformance against our own engine, SQLite then Redis.

Each store gets a fresh engine process (with the bundled upstream simulator) started by
`engine.local`; the suite itself runs as its own CLI, exactly as an operator would run it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from engine.local import LocalEngine, RedisServer


def judge(engine: LocalEngine, label: str, extra: list[str]) -> int:
    started = time.perf_counter()
    command = [
        "pluct-conformance",
        "run",
        "--url",
        engine.url,
        "--profile",
        "strict",
        "--junit",
        f"reports/conformance-{label}.xml",
        "--json",
        f"reports/conformance-{label}.json",
        *extra,
    ]
    # Secrets through the environment: not on the process list, and a generated secret that
    # starts with "-" cannot be mistaken for an option.
    secrets = {"PLUCT_JWT_SECRET": engine.jwt_secret, "PLUCT_ADMIN_KEY": engine.admin_key}
    code = subprocess.run(command, check=False, env={**os.environ, **secrets}).returncode
    print(f"conformance on {label}: exit {code} in {time.perf_counter() - started:.1f} s")
    return code


def main(extra: list[str]) -> int:
    Path("reports").mkdir(exist_ok=True)
    with LocalEngine() as engine:
        sqlite_code = judge(engine, "sqlite", extra)
    with RedisServer() as redis_server, LocalEngine(store_url=redis_server.url) as engine:
        redis_code = judge(engine, "redis", extra)
    return max(sqlite_code, redis_code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
