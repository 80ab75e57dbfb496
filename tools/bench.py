"""Benchmark the engine with wrk: throughput and latency against the machine's own ceiling.

For each store (SQLite, Redis), worker count (1, 2) and state (an empty store, and with
`--prefill N` the same store grown by `pluct-engine ledger prefill` to N entries first) a real
engine is started and driven on loopback, each scenario for a fixed time per round, rounds
interleaved (default 10 x 2 s):

  ceiling        GET /health/services  the same server doing no store work
  vend           POST /v1/vend-token, ample credits, own user and idempotency key per request
  vend-observed  the same on a second engine started with `--observed-env` (access log and
                 metrics on), to show what observability costs in the same run: the pair runs
                 back to back, alternating which goes first (see bench_pair.py), and is
                 compared round by round, by throughput and by each engine's CPU per request
  health         GET /health           one store ping
  balance        GET /v1/credits/balance, a different user per request
  audit          GET /v1/admin/audit?userId=..., a different user per request
  vend-hot       POST /v1/vend-token, many connections, one user, a balance that runs out

Every wrk run sends idempotency keys of its own (a prefix per run), and after each vend run
the bench counts the credits it really spent (the bench users' balances, read from the store):
a run whose 200s outnumber its spends by more than 1 % is refused, since a replayed key is
answered without any charge (the figures before this check counted replays as vends).  The
rate limit stays on (set very high), so its store round trip is measured too.  After each
state `ledger verify` must pass (its entries/s and peak RSS are reported): a fast wrong answer
is no result.  Results (medians over the rounds, and the worst p99) go to
bench-results/bench.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from engine.local import LocalEngine, RedisServer

# `bench_store` and `bench_pair` live beside this file, which tests load by path.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_pair
import bench_store

USERS = 2000
HOT_BALANCE = 2000
EXPECTED_REFUSALS = {"402", "429"}
# A run whose 2xx vends spent fewer credits than this share of them is refused: it measured
# idempotent replays, not vends.
MAX_REPLAY_FRACTION = 0.01
# The settings of the access log and metrics (issue 20): every engine but the observed one runs
# with both off, the observed one with both on, so `vend` and `vend-observed` are the pair of
# issue 20 item 9.  An engine without these settings ignores them, and the two rows then
# measure the same thing.
PLAIN_ENV = "ACCESS_LOG=off"
OBSERVED_ENV = "LOG_FORMAT=json,ACCESS_LOG=on,METRICS_TOKEN=bench-metrics-token"

# Each request is the same bytes `wrk.format` would build, but its head is built once per
# token in `init`: wrk runs on the same two cores as the engine, so every microsecond its Lua
# spends on a request is taken from the server (and more from a POST with a body than a GET).
# For the same reason the `response` hook, which makes wrk copy every response's headers and
# body into Lua, is installed only where statuses must be told apart (402 from 500 where
# refusals are expected); elsewhere wrk's own count of responses >= 400 proves them all 2xx/3xx.
COUNT_STATUSES = """
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
"""
LUA = """
local tokens = {%(tokens)s}
local paths = {%(paths)s}
local method, keyed, auth = "%(method)s", %(keyed)s, "%(auth)s"
local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end
function init(args)
  statuses = {}
  n = 0
  -- Every run's own idempotency keys: a key of an earlier run would be replayed, not spent.
  prefix = args[1] or "bench"
  heads = {}
  for i = 1, math.max(#tokens, #paths) do
    local token, path = tokens[(i - 1) %% #tokens + 1], paths[(i - 1) %% #paths + 1]
    heads[i] = method .. " " .. path .. " HTTP/1.1\\r\\nHost: " .. wrk.host .. ":" .. wrk.port
      .. "\\r\\n" .. auth .. token .. "\\r\\nContent-Type: application/json\\r\\n"
    if not keyed then heads[i] = heads[i] .. "\\r\\n" end
  end
end
function request()
  n = n + 1
  local head = heads[((id * 7919 + n) %% #heads) + 1]
  if not keyed then return head end
  local body = '{"clientRequestId":"' .. prefix .. '-' .. id .. '-' .. n .. '"}'
  return head .. "Content-Length: " .. #body .. "\\r\\n\\r\\n" .. body
end
%(response)s
function done(summary, latency, requests)
  local totals = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      totals[status] = (totals[status] or 0) + count
    end
  end
  local e = summary.errors
  if next(totals) == nil then
    totals["2xx/3xx"] = summary.requests - e.status
    if e.status > 0 then totals[">=400"] = e.status end
  end
  local socket_errors = e.connect + e.read + e.write + e.timeout
  if socket_errors > 0 then totals["socket errors"] = socket_errors end
  local parts = {}
  for status, count in pairs(totals) do table.insert(parts, '"' .. status .. '":' .. count) end
  io.write("STATUSES {" .. table.concat(parts, ",") .. "}\\n")
  io.write(string.format("LATENCY %%d %%d %%d\\n",
    latency:percentile(50), latency:percentile(99), summary.requests))
end
"""


@dataclass
class Result:
    store: str
    workers: int
    scenario: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    statuses: dict[str, int]
    ratio_to_ceiling: float = 0.0
    ratio_to_health: float = 0.0
    ledger_clean: bool | None = None
    worst_p99_ms: float = 0.0
    ratios_by_round: list[float] = field(default_factory=list)
    state: str = "empty"
    # Vend runs: credits the run really spent, and the share of its 2xx that spent nothing.
    spent: int | None = None
    replay_fraction: float | None = None
    # The engine's CPU time (all its processes) per request; for `vend-observed`, its
    # throughput and CPU against `vend` of the same round (median of the rounds' ratios).
    cpu_us_per_request: float = 0.0
    ratio_to_plain: float | None = None
    ratios_to_plain: list[float] = field(default_factory=list)
    cpu_ratio_to_plain: float | None = None

    @property
    def unexpected(self) -> int:
        return sum(
            n
            for s, n in self.statuses.items()
            if not s.startswith("2") and s not in EXPECTED_REFUSALS
        )

    @property
    def replays_refused(self) -> bool:
        return self.replay_fraction is not None and self.replay_fraction > MAX_REPLAY_FRACTION


@dataclass(frozen=True)
class Scenario:
    name: str
    paths: list[str]
    method: str
    tokens: list[str]
    keyed: bool = False
    auth: str = "Authorization: Bearer "
    observed: bool = False  # driven at the engine with access log and metrics on

    @property
    def spends(self) -> bool:
        return self.name.startswith("vend")


def _lua(scenario: Scenario, folder: Path) -> Path:
    count_statuses = scenario.name == "vend-hot"
    script = folder / f"{scenario.name}-{len(scenario.tokens)}-{len(scenario.paths)}.lua"
    script.write_text(
        LUA
        % {
            "tokens": ",".join(f'"{t}"' for t in scenario.tokens),
            "paths": ",".join(f'"{p}"' for p in scenario.paths),
            "method": scenario.method,
            "auth": scenario.auth,
            "keyed": "true" if scenario.keyed else "false",
            "response": COUNT_STATUSES if count_statuses else "",
        }
    )
    return script


def _wrk(
    url: str, script: Path, args: argparse.Namespace, prefix: str = "bench"
) -> tuple[float, float, float, int, dict[str, int]]:
    out = subprocess.run(
        [
            "wrk",
            f"-t{args.threads}",
            f"-c{args.connections}",
            f"-d{args.duration}s",
            "--latency",
            "-s",
            str(script),
            url,
            "--",
            prefix,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50_us, p99_us, total = map(int, re.search(r"LATENCY (\d+) (\d+) (\d+)", out).groups())  # type: ignore[union-attr]
    statuses = json.loads(re.search(r"STATUSES (\{.*\})", out).group(1))  # type: ignore[union-attr]
    return rps, p50_us / 1000, p99_us / 1000, total, {str(k): v for k, v in statuses.items()}


def _prepare(engine: LocalEngine, users: list[str], hot: str) -> tuple[list[str], list[str]]:
    with httpx.Client(base_url=engine.url, timeout=30) as client:
        for user in [*users, hot]:
            client.post(
                "/v1/credits/add",
                json={"userId": user, "amount": HOT_BALANCE if user == hot else 1_000_000},
                headers=engine.admin_headers,
            ).raise_for_status()
    return [engine.mint_user(u, ttl=7200) for u in users], [engine.mint_user(hot, ttl=7200)]


def _lasting(args: argparse.Namespace, seconds: int) -> argparse.Namespace:
    """`args` for a wrk run of `seconds` instead of the measured duration."""
    return argparse.Namespace(**{**vars(args), "duration": seconds})


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def _ratios(rounds: list[Result], yardsticks: list[float]) -> list[float]:
    """Each round against the yardstick measured in the same round."""
    return [round(r.requests_per_second / y, 3) for r, y in zip(rounds, yardsticks, strict=True)]


def _bracketing(ceilings: list[float]) -> list[float]:
    """Round i's yardstick: the mean of its own ceiling run and the next round's (the last
    round's next is a closing ceiling run), so every run sits between the two ceilings it is
    measured against, and a change of the machine's speed during a round hits both alike."""
    return [(before + after) / 2 for before, after in itertools.pairwise(ceilings)]


def _answered(statuses: dict[str, int]) -> int:
    """Responses a vend answered with a token (2xx)."""
    return sum(n for s, n in statuses.items() if s.startswith("2"))


def _env(pairs: str) -> dict[str, str]:
    """`NAME=VALUE,NAME=VALUE` as a dict."""
    return dict(p.split("=", 1) for p in pairs.split(",") if p)


def _scenarios(tokens: list[str], hot: list[str], users: list[str], admin: str) -> list[Scenario]:
    audit = [f"/v1/admin/audit?userId={u}&limit=50" for u in users]
    # The vend right after the ceiling it is compared with, seconds apart.
    return [
        Scenario("ceiling", ["/health/services"], "GET", tokens[:1]),
        Scenario("vend", ["/v1/vend-token"], "POST", tokens, keyed=True),
        Scenario("vend-observed", ["/v1/vend-token"], "POST", tokens, keyed=True, observed=True),
        Scenario("health", ["/health"], "GET", tokens[:1]),
        Scenario("balance", ["/v1/credits/balance"], "GET", tokens),
        Scenario("audit", audit, "GET", [admin], auth="X-API-Key: "),
        Scenario("vend-hot", ["/v1/vend-token"], "POST", hot),
    ]


def run_combo(
    store: str,
    workers: int,
    args: argparse.Namespace,
    folder: Path,
    state: str = "empty",
    store_url: str | None = None,
) -> tuple[list[Result], dict[str, object]]:
    """Every scenario once per round, rounds interleaved, so a slow spell of this shared
    machine hits all scenarios alike; each figure is the median over the rounds, and each
    ratio is taken within its own round (against the ceiling runs that open and close it)
    before the median.  `store_url`: a store prepared beforehand (the grown state)."""
    redis = RedisServer().start() if store == "redis" and store_url is None else None
    url = store_url or (redis.url if redis else f"sqlite:///{folder / f'{store}-{workers}.db'}")
    tag = f"{state.split()[0]}-{workers}"
    users, hot = [f"bench-{tag}-{i}" for i in range(USERS)], f"bench-{tag}-hot"
    runs: dict[str, list[Result]] = {}
    facts: dict[str, object] = {}
    observed = _env(args.observed_env) if args.observed_env else None
    engines: dict[bool, LocalEngine] = {}
    try:
        # Which engine starts first (and so which one's memory and files are laid out
        # first) alternates with the worker count.
        starts = (False, True) if workers % 2 else (True, False)
        for is_observed in starts if observed is not None else (False,):
            engine = LocalEngine(
                store_url=url,
                workers=workers,
                rate_limit_per_minute=1_000_000_000,
                env=observed if is_observed else _env(args.plain_env),
            )
            engines[is_observed] = engine.start()
        plain = engines[False]
        tokens, hot_tokens = _prepare(plain, users, hot)
        scenarios = [
            s
            for s in _scenarios(tokens, hot_tokens, users, plain.admin_key)
            if not s.observed or observed is not None
        ]
        # Each engine has secrets of its own: the observed one's users need its own tokens.
        if observed is not None:
            own = [engines[True].mint_user(u, ttl=7200) for u in users]
            scenarios = [
                Scenario(s.name, s.paths, s.method, own, s.keyed, s.auth, True) if s.observed else s
                for s in scenarios
            ]
        chosen = set(args.scenarios.split(",")) | {"ceiling"} if args.scenarios else None
        scenarios = [s for s in scenarios if chosen is None or s.name in chosen]
        scripts = {s.name: _lua(s, folder) for s in scenarios}
        target = {s.name: engines[s.observed].url for s in scenarios}
        pids = {s.name: engines[s.observed].pid for s in scenarios}
        by_name = {s.name: s for s in scenarios}
        # Warm-up, unmeasured: every user token is verified once by each engine (a real client
        # reuses its token), and every route has run before its first measured second.
        for s in scenarios:
            if s.name != "vend-hot":  # it would spend the hot balance before the rounds
                seconds = 2 if s.name in (bench_pair.PLAIN, bench_pair.OBSERVED) else 1
                _wrk(target[s.name], scripts[s.name], _lasting(args, seconds), f"warm-{s.name}")
        for round_number in range(1, args.rounds + 1):
            for name in bench_pair.pair_order(list(by_name), round_number):
                s = by_name[name]
                cpu_before = bench_pair.cpu_seconds(pids[s.name])
                before = bench_store.spendable(url, [hot] if s.name == "vend-hot" else users)
                rps, p50, p99, total, statuses = _wrk(
                    target[s.name], scripts[s.name], args, f"{tag}-r{round_number}-{s.name}"
                )
                cpu = bench_pair.cpu_seconds(pids[s.name]) - cpu_before
                result = Result(store, workers, s.name, rps, p50, p99, total, statuses)
                result.state = state
                result.cpu_us_per_request = bench_pair.per_request_us(cpu, total)
                if s.spends:
                    after = bench_store.spendable(url, [hot] if s.name == "vend-hot" else users)
                    result.spent = before - after
                    answered = _answered(statuses)
                    result.replay_fraction = (
                        round(max(0, answered - result.spent) / answered, 4) if answered else 0.0
                    )
                runs.setdefault(s.name, []).append(result)
                print(
                    f"  {store}/{workers}w {state} round {round_number} {s.name:13} {rps:9.0f}",
                    f"req/s p50 {p50:6.2f} ms p99 {p99:6.2f} ms",
                    f"cpu {result.cpu_us_per_request:6.1f} us/req",
                    statuses,
                    "" if result.spent is None else f"spent {result.spent}",
                    flush=True,
                )
                if store == "sqlite":
                    wal = bench_store.footprint(url)["wal_bytes"]
                    facts["max_wal_bytes"] = max(int(facts.get("max_wal_bytes", 0)), wal)  # type: ignore[call-overload]
        closing_ceiling = _wrk(plain.url, scripts["ceiling"], args)[0]
        facts["footprint"] = bench_store.footprint(url)
        facts["verify"] = verify = bench_store.verify(url)
    finally:
        for engine in engines.values():
            engine.close()
        if redis:
            redis.close()
    ceilings = _bracketing([r.requests_per_second for r in runs["ceiling"]] + [closing_ceiling])
    # The issue names `GET /health` as the yardstick too; ours pings the store, so it is shown
    # beside the stricter ceiling rather than instead of it.
    healths = [r.requests_per_second for r in runs.get("health", runs["ceiling"])]
    results = []
    for name, rounds in runs.items():
        statuses: dict[str, int] = {}
        for r in rounds:
            for status, count in r.statuses.items():
                statuses[status] = statuses.get(status, 0) + count
        by_round = _ratios(rounds, ceilings)
        spent = [r.spent for r in rounds if r.spent is not None]
        replays = [r.replay_fraction for r in rounds if r.replay_fraction is not None]
        results.append(
            Result(
                store,
                workers,
                name,
                requests_per_second=_median([r.requests_per_second for r in rounds]),
                p50_ms=_median([r.p50_ms for r in rounds]),
                p99_ms=_median([r.p99_ms for r in rounds]),
                requests=sum(r.requests for r in rounds),
                statuses=statuses,
                ratio_to_ceiling=_median(by_round),
                ratio_to_health=_median(_ratios(rounds, healths)),
                ledger_clean=verify.get("ok") is True if rounds[0].spent is not None else None,
                worst_p99_ms=max(r.p99_ms for r in rounds),
                ratios_by_round=by_round,
                state=state,
                spent=sum(spent) if spent else None,
                replay_fraction=max(replays) if replays else None,
                cpu_us_per_request=bench_pair.per_request_us(
                    sum(r.cpu_us_per_request * r.requests for r in rounds) / 1e6,
                    sum(r.requests for r in rounds),
                ),
            )
        )
    by_scenario = {r.scenario: r for r in results}
    if bench_pair.PLAIN in runs and bench_pair.OBSERVED in runs:
        plain_runs, observed_runs = runs[bench_pair.PLAIN], runs[bench_pair.OBSERVED]
        pair = by_scenario[bench_pair.OBSERVED]
        pair.ratios_to_plain = bench_pair.pair_ratios(
            [r.requests_per_second for r in plain_runs],
            [r.requests_per_second for r in observed_runs],
        )
        pair.ratio_to_plain = _median(pair.ratios_to_plain)
        pair.cpu_ratio_to_plain = round(
            pair.cpu_us_per_request / by_scenario[bench_pair.PLAIN].cpu_us_per_request, 3
        )
    return results, facts


def table(results: list[Result]) -> str:
    lines = [
        "| store | workers | state | scenario | req/s | p50 ms | p99 ms | worst p99 | vs ceiling"
        " | vs /health | statuses | spent | replays | ledger |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for r in results:
        ledger = "" if r.ledger_clean is None else ("clean" if r.ledger_clean else "**BROKEN**")
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(r.statuses.items()))
        spent = "" if r.spent is None else f"{r.spent:,}"
        replays = "" if r.replay_fraction is None else f"{r.replay_fraction:.2%}"
        if r.replays_refused:
            replays = f"**{replays} REFUSED**"
        lines.append(
            f"| {r.store} | {r.workers} | {r.state} | {r.scenario} | {r.requests_per_second:,.0f} "
            f"| {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.worst_p99_ms:.2f} | {r.ratio_to_ceiling:.0%} "
            f"| {r.ratio_to_health:.0%} | {statuses} | {spent} | {replays} | {ledger} |"
        )
    return "\n".join(lines)


def pair_table(results: list[Result]) -> str:
    """Issue 20 item 9: `vend` against `vend-observed` of the same run, by throughput (the
    median of the per-round ratios) and by the engine's CPU time per vend."""
    plain = {(r.store, r.workers, r.state): r for r in results if r.scenario == bench_pair.PLAIN}
    lines = [
        "| store | workers | state | vend req/s | observed req/s | ratio (rounds) | vend CPU µs"
        " | observed CPU µs | CPU ratio |",
        "|---|---|---|---:|---:|---|---:|---:|---:|",
    ]
    for r in results:
        base = plain.get((r.store, r.workers, r.state))
        if r.scenario != bench_pair.OBSERVED or base is None or r.ratio_to_plain is None:
            continue
        rounds = " ".join(f"{x:.2f}" for x in r.ratios_to_plain)
        lines.append(
            f"| {r.store} | {r.workers} | {r.state} | {base.requests_per_second:,.0f} "
            f"| {r.requests_per_second:,.0f} | {r.ratio_to_plain:.1%} ({rounds}) "
            f"| {base.cpu_us_per_request:.1f} | {r.cpu_us_per_request:.1f} "
            f"| {r.cpu_ratio_to_plain:.1%} |"
        )
    return "\n".join(lines)


def grown_table(results: list[Result]) -> str:
    """Each scenario on the grown store next to the empty one of the same run.  The two states
    run one after the other, each against its own ceiling runs: the `vs ceiling` columns
    compare them at the machine's speed of the moment, the raw ratio does not."""
    empty = {(r.store, r.workers, r.scenario): r for r in results if r.state == "empty"}
    lines = [
        "| store | workers | scenario | empty req/s | grown req/s | ratio | empty vs ceiling"
        " | grown vs ceiling | empty p99 | grown p99 | p99 ratio |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        base = empty.get((r.store, r.workers, r.scenario))
        if r.state == "empty" or base is None or r.scenario == "ceiling":
            continue
        lines.append(
            f"| {r.store} | {r.workers} | {r.scenario} | {base.requests_per_second:,.0f} "
            f"| {r.requests_per_second:,.0f} "
            f"| {r.requests_per_second / base.requests_per_second:.0%} "
            f"| {base.ratio_to_ceiling:.0%} | {r.ratio_to_ceiling:.0%} "
            f"| {base.p99_ms:.2f} | {r.p99_ms:.2f} | {r.p99_ms / base.p99_ms:.2f}x |"
        )
    return "\n".join(lines)


def _grown_store(
    store: str, args: argparse.Namespace, folder: Path
) -> tuple[str, dict[str, object], RedisServer | None]:
    """A store prefilled with `--prefill` entries, shared by this store's worker counts."""
    redis = RedisServer().start() if store == "redis" else None
    url = redis.url if redis else f"sqlite:///{folder / 'grown.db'}"
    filled = bench_store.prefill(url, args.prefill, args.prefill_users)
    entries = int(filled["entries"])  # type: ignore[call-overload]
    size = bench_store.footprint(url)
    per_entry = {
        f"{k.removesuffix('_bytes')}_bytes_per_entry": round(v / entries, 1)
        for k, v in size.items()
    }
    print(f"  {store}: prefilled {filled} -> {size} {per_entry}", flush=True)
    return url, {"prefill": filled, "footprint": size, **per_entry}, redis


def sustain(args: argparse.Namespace, folder: Path) -> dict[str, object]:
    """`--sustain S`: one vend run of S seconds on SQLite, the WAL's size sampled twice a
    second throughout (its target: at most 64 MiB under sustained vend load)."""
    url = f"sqlite:///{folder / 'sustain.db'}"
    users = [f"bench-sustain-{i}" for i in range(USERS)]
    sizes: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.5):
            sizes.append(int(bench_store.footprint(url)["wal_bytes"]))

    workers = max(map(int, args.workers.split(",")))
    with LocalEngine(store_url=url, workers=workers, rate_limit_per_minute=1_000_000_000) as e:
        tokens, _ = _prepare(e, users, "bench-sustain-hot")
        script = _lua(Scenario("vend", ["/v1/vend-token"], "POST", tokens, keyed=True), folder)
        before = bench_store.spendable(url, users)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            rps, _, p99, _, statuses = _wrk(e.url, script, _lasting(args, args.sustain), "sustain")
        finally:
            stop.set()
            sampler.join()
        spent = before - bench_store.spendable(url, users)
    result: dict[str, object] = {
        "seconds": args.sustain,
        "workers": workers,
        "vends_per_second": rps,
        "p99_ms": p99,
        "spent": spent,
        "answered": _answered(statuses),
        "max_wal_bytes": max(sizes, default=0),
        "wal_samples": len(sizes),
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=2, help="seconds per scenario run")
    parser.add_argument("--rounds", type=int, default=10, help="runs of every scenario")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stores", default="sqlite,redis")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument(
        "--prefill", type=int, default=0, help="also run on a store grown to N entries"
    )
    parser.add_argument("--prefill-users", type=int, default=None)
    parser.add_argument(
        "--sustain", type=int, default=0, help="first, one SQLite vend run of S s (WAL size)"
    )
    parser.add_argument(
        "--scenarios",
        default="",
        help="comma-separated scenarios to run (default all; `ceiling` always runs)",
    )
    parser.add_argument(
        "--plain-env",
        default=PLAIN_ENV,
        help="comma-separated NAME=VALUE for every other engine (default: access log off)",
    )
    parser.add_argument(
        "--observed-env",
        default=OBSERVED_ENV,
        help="comma-separated NAME=VALUE for the vend-observed engine ('' to skip it; the"
        " plain env for an A/A control of the pairing)",
    )
    args = parser.parse_args()
    args.out.mkdir(exist_ok=True)
    results: list[Result] = []
    facts: dict[str, object] = {}
    started = time.time()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        if args.sustain:
            facts["sustained sqlite vends"] = sustain(args, folder)
        for store in filter(None, args.stores.split(",")):
            grown: tuple[str, dict[str, object], RedisServer | None] | None = None
            if args.prefill:
                grown = _grown_store(store, args, folder)
                facts[f"{store} grown"] = grown[1]
            try:
                for workers in map(int, args.workers.split(",")):
                    combo, seen = run_combo(store, workers, args, folder)
                    results.extend(combo)
                    facts[f"{store}/{workers}w empty"] = seen
                    if grown is not None:
                        state = f"grown {args.prefill:,}"
                        combo, seen = run_combo(store, workers, args, folder, state, grown[0])
                        results.extend(combo)
                        facts[f"{store}/{workers}w {state}"] = seen
            finally:
                if grown is not None and grown[2] is not None:
                    grown[2].close()
    report = {
        "command": " ".join(sys.argv),
        "connections": args.connections,
        "threads": args.threads,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "seconds": round(time.time() - started, 1),
        "results": [{**asdict(r), "unexpected": r.unexpected} for r in results],
        "stores": facts,
    }
    (args.out / "bench.json").write_text(json.dumps(report, indent=2))
    print(table(results))
    print()
    print(pair_table(results))
    if args.prefill:
        print()
        print(grown_table(results))
    print(json.dumps(facts, indent=2))
    broken = [r for r in results if r.unexpected or r.ledger_clean is False or r.replays_refused]
    for r in broken:
        print(
            f"FAILED: {r.store}/{r.workers}w {r.state} {r.scenario}:",
            f"unexpected={r.unexpected} ledger={r.ledger_clean} replays={r.replay_fraction}",
        )
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
