"""What the access log and the metrics cost a request, measured in-process.

The observability middleware wraps a stand-in for the vend route (it notes a user and an
outcome, awaits one store call, answers with `PreparedJSON`), so only what issue 20 added is
measured, without the network or the store.  Variants, interleaved round by round:

  bare      the stand-in alone
  off       the middleware with ACCESS_LOG=off and no METRICS_TOKEN (request id only)
  log       plus the access line (written to `--sink`, default /dev/null, in batches)
  metrics   plus the metrics (and the timed store)
  both      log and metrics

    python tools/observability_cost.py [--rounds 30] [--requests 5000] [--sink FILE]

`--sink` a file on disk, as the engine's log is under `LocalEngine`, counts the `write`
system calls too, which /dev/null makes nearly free.

CPU microseconds per request (process time), minimum and median over the rounds.  Compare the
difference between `both` and `off` with a vend's server CPU (~150 µs at 6.6k vends/s on one
worker, see docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

import uvloop

from engine.http.responses import PreparedJSON
from engine.observability.access import Observed
from engine.observability.context import note_outcome, note_user
from engine.observability.logs import AccessLog
from engine.observability.metrics import Metrics, TimedStore

HEADERS = [
    (b"authorization", b"Bearer " + b"x" * 300),
    (b"content-type", b"application/json"),
    (b"user-agent", b"wrk"),
]


class _Store:
    backend = "stand-in"

    async def spend(self, order: object) -> int:
        return 1


def _route(store: Any) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["path_template"] = "/v1/vend-token"
        note_user("user-123")
        note_outcome("charged")
        await store.spend(None)
        await PreparedJSON(b'{"ok":true}', 200)(scope, receive, send)

    return app


def _build(kind: str, sink: Any) -> Any:
    metrics = Metrics() if kind in {"metrics", "both"} else None
    store: Any = _Store() if metrics is None else TimedStore(_Store(), metrics)
    route = _route(store)
    if kind == "bare":
        return route
    log = AccessLog(json_lines=False, stream=sink) if kind in {"log", "both"} else None
    return Observed(route, log, metrics)


async def _run(app: Any, requests: int, per_turn: int) -> float:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: Any) -> None:
        return None

    started = time.process_time()
    for i in range(requests):
        scope = {"type": "http", "method": "POST", "path": "/v1/vend-token", "headers": HEADERS}
        await app(scope, receive, send)
        if i % per_turn == 0:  # let the loop turn, as a server's does between requests
            await asyncio.sleep(0)
    return (time.process_time() - started) / requests * 1e6


async def _main(rounds: int, requests: int, per_turn: int, sink: Any) -> None:
    kinds = ["bare", "off", "log", "metrics", "both"]
    apps = {kind: _build(kind, sink) for kind in kinds}
    results: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(rounds):
        for kind in kinds:
            results[kind].append(await _run(apps[kind], requests, per_turn))
    for kind in kinds:
        values = sorted(results[kind])
        print(f"{kind:8} min {values[0]:6.2f}  median {values[len(values) // 2]:6.2f} µs/request")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--sink", default=os.devnull, help="where access lines go")
    parser.add_argument("--per-turn", type=int, default=32, help="requests per loop turn")
    args = parser.parse_args()
    with open(args.sink, "w") as sink:
        uvloop.run(_main(args.rounds, args.requests, args.per_turn, sink))


if __name__ == "__main__":
    main()
