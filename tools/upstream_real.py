"""`nox -s upstream-real`: the mobile app's legacy journey against a REAL TTTranscribe.

TTTranscribe is built from its public source (cloned outside our repo by the nox session,
its dependencies from npm) and run on loopback with test secrets.  Everything runs inside a
network namespace of its own (`unshare --net`), which has a loopback interface and nothing
else: the upstream downloads TikTok audio, and from here it must never reach the internet.
So its jobs fail (the download cannot connect); a job reaching `failed` with the failure
surfaced to the client (and refunded, where the engine refunds failed jobs) is a valid
outcome of the journey, and so is `completed`.

What runs:
1. a ready TTTranscribe (`ENGINE_SHARED_SECRET`, a fake `HF_API_KEY`, its webhook pointed at
   the engine's `/webhooks/tttranscribe`) and an engine in front of it;
2. the journey: `/health/services` healthy → grant → balance → vend → transcribe → poll to a
   terminal state, with the user JWT on `/ttt/poll/{jobId}` where the engine has that route,
   else `/ttt/status/{jobId}` with the vended token; then the balance again;
3. a TTTranscribe that is NOT ready (no `HF_API_KEY`): `/health/services` says `degraded`
   with its reason, and `/ttt/transcribe` answers 503 `upstream_unavailable` with
   `Retry-After` while the credit stays usable.
It prints a JSON summary of every step and exits 1 if the engine broke the journey.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from engine.local import LocalEngine, free_port

VIDEO = "https://www.tiktok.com/@scout/video/7300000000000000001"
ENTRY = "dist/TTTranscribe-Server-Main-Entry.js"
JOB_DEADLINE_SECONDS = 180.0
_NAMESPACED = "PLUCT_UPSTREAM_REAL_NAMESPACED"


class Journey:
    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self.broken: list[str] = []

    def step(self, name: str, response: httpx.Response | None = None, **facts: Any) -> None:
        entry: dict[str, Any] = {"step": name, **facts}
        if response is not None:
            entry["status"] = response.status_code
            try:
                entry["body"] = response.json()
            except ValueError:
                entry["body"] = response.text[:300]
        self.steps.append(entry)
        print(json.dumps(entry)[:2000], flush=True)

    def expect(self, ok: bool, what: str) -> None:
        if not ok:
            self.broken.append(what)
            print(f"BROKEN: {what}", flush=True)


class Upstream:
    """One TTTranscribe process on a loopback port."""

    def __init__(
        self, ttt_dir: Path, port: int, secret: str, webhook_url: str, *, ready: bool
    ) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{self.port}"
        self._tmp = Path(tempfile.mkdtemp(prefix="ttt-real-"))
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(self._tmp),
            "NODE_ENV": "development",
            "PORT": str(self.port),
            "BASE_URL": self.url,
            "TMP_DIR": str(self._tmp),
            "ENGINE_SHARED_SECRET": secret,
            "BUSINESS_ENGINE_WEBHOOK_URL": webhook_url,
            "BUSINESS_ENGINE_WEBHOOK_SECRET": secret,
        }
        if ready:
            env["HF_API_KEY"] = "hf_test_key_not_real"
        self.log = self._tmp / "ttt.log"
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(
                ["node", ENTRY],
                cwd=ttt_dir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(self._up, "TTTranscribe to listen", 60)

    def _up(self) -> bool:
        if self._process.poll() is not None:
            raise RuntimeError("TTTranscribe exited:\n" + self.log.read_text()[-3000:])
        try:
            return httpx.get(self.url + "/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
        shutil.rmtree(self._tmp, ignore_errors=True)


def wait_for(condition: Callable[[], bool], what: str, seconds: float) -> None:
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def engine_for(upstream_port: int, secret: str) -> LocalEngine:
    return LocalEngine(
        rate_limit_per_minute=0,
        env={
            "TTT_BASE": f"http://127.0.0.1:{upstream_port}",
            "TTT_SHARED_SECRET": secret,
            "TTT_WEBHOOK_SECRET": secret,
            "TTT_PROBE_INTERVAL_SECONDS": "1",
        },
    )


def ttt_status(engine: LocalEngine) -> dict[str, Any]:
    body: dict[str, Any] = engine.client.get("/health/services").json()
    return body


def happy_path(ttt_dir: Path, journey: Journey) -> None:
    secret = secrets.token_urlsafe(24)
    port = free_port()
    engine = engine_for(port, secret)
    upstream = Upstream(ttt_dir, port, secret, f"{engine.url}/webhooks/tttranscribe", ready=True)
    try:
        engine.start()
        wait_for(lambda: ttt_status(engine)["ttt"]["status"] == "healthy", "healthy", 30)
        journey.step("health/services", engine.client.get("/health/services"))
        user = "real-journey"
        admin = engine.admin_headers
        granted = engine.client.post(
            "/v1/credits/add", json={"userId": user, "amount": 1}, headers=admin
        )
        journey.expect(granted.status_code == 200, "grant")
        balance = engine.client.get("/v1/credits/balance", headers=engine.user_headers(user))
        journey.step("balance", balance)
        journey.expect(balance.json().get("balance") == 1, "balance 1 after the grant")
        vended = engine.client.post(
            "/v1/vend-token",
            json={"userId": user, "clientRequestId": "real-vend-1"},
            headers=engine.user_headers(user),
        )
        journey.step("vend", vended)
        service = {"Authorization": f"Bearer {vended.json()['token']}"}
        submitted = engine.client.post(
            "/ttt/transcribe", json={"url": VIDEO, "clientRequestId": "real-1"}, headers=service
        )
        journey.step("transcribe", submitted)
        journey.expect(submitted.status_code == 202, "transcribe accepted by the real upstream")
        if submitted.status_code != 202:
            return
        job = submitted.json()["jobId"]
        probe = engine.client.get(f"/ttt/poll/{job}", headers=engine.user_headers(user))
        has_poll = not (probe.status_code == 404 and probe.json().get("code") == "route_not_found")
        path, headers = (
            (f"/ttt/poll/{job}", engine.user_headers(user))
            if has_poll
            else (f"/ttt/status/{job}", service)
        )
        journey.step("poll route", route=path.rsplit("/", 1)[0], userJwt=has_poll)
        seen: list[str] = []
        final: httpx.Response | None = None
        end = time.monotonic() + JOB_DEADLINE_SECONDS
        while time.monotonic() < end:
            final = engine.client.get(path, headers=headers)
            state = final.json().get("status") if final.status_code == 200 else None
            seen.append(f"{final.status_code}:{state}:{final.json().get('progress')}")
            if state in ("completed", "failed") or final.status_code >= 500:
                break
            time.sleep(1)
        assert final is not None
        journey.step("final poll", final, polls=seen)
        body = final.json()
        journey.expect(body.get("status") in ("completed", "failed"), "a terminal state")
        if body.get("status") == "failed":
            journey.expect(bool(body.get("error")), "the failure is surfaced in `error`")
        after = engine.client.get("/v1/credits/balance", headers=engine.user_headers(user))
        journey.step(
            "balance after", after, refunded=body.get("creditsRefunded"), jobStatus=body["status"]
        )
        if body.get("status") == "failed" and "creditsRefunded" in body:
            # an engine that refunds failed jobs: once, and the balance is back
            journey.expect(body["creditsRefunded"] == 1, "creditsRefunded: 1")
            journey.expect(after.json().get("balance") == 1, "the failed job's credit refunded")
        verify = engine.ledger_verify()
        journey.step("ledger verify", exitCode=verify.returncode, out=verify.stdout[-500:])
        journey.expect(verify.returncode == 0, "ledger verify")
        # The upstream's webhook (§8) went to the engine's /webhooks/tttranscribe: a 2xx or 409
        # leaves its failed queue empty, anything else (a 404 before that route exists) not.
        markers = ("[webhook] Successfully", "already processed", "[webhook] Failed to deliver")
        try:  # the webhook goes out as the job fails: wait for its outcome in the log
            wait_for(lambda: any(m in upstream.log.read_text() for m in markers), "webhook", 15)
        except TimeoutError:
            journey.step("upstream webhook", attempted=False)
        queue = httpx.get(upstream.url + "/admin/webhook-queue", headers={"X-Engine-Auth": secret})
        receiver = engine.client.post("/webhooks/tttranscribe", json={})
        has_receiver = receiver.json().get("code") != "route_not_found"
        journey.step("upstream webhook queue", queue, engineHasWebhookRoute=has_receiver)
        if has_receiver:
            journey.expect(queue.json().get("totalFailed") == 0, "the webhook was delivered")
        journey.step("upstream log tail", log=upstream.log.read_text()[-1500:])
    finally:
        engine.close()
        upstream.close()


def not_ready_path(ttt_dir: Path, journey: Journey) -> None:
    secret = secrets.token_urlsafe(24)
    port = free_port()
    upstream = Upstream(ttt_dir, port, secret, "http://127.0.0.1:9/webhooks", ready=False)
    engine = engine_for(port, secret)
    try:
        engine.start()
        wait_for(lambda: ttt_status(engine)["ttt"]["status"] == "degraded", "degraded", 30)
        journey.step("not ready: health/services", engine.client.get("/health/services"))
        user = "real-not-ready"
        engine.client.post(
            "/v1/credits/add", json={"userId": user, "amount": 1}, headers=engine.admin_headers
        ).raise_for_status()
        vended = engine.client.post("/v1/vend-token", headers=engine.user_headers(user)).json()
        service = {"Authorization": f"Bearer {vended['token']}"}
        refused = engine.client.post("/ttt/transcribe", json={"url": VIDEO}, headers=service)
        journey.step(
            "not ready: transcribe", refused, retryAfter=refused.headers.get("retry-after")
        )
        journey.expect(
            (refused.status_code, refused.json().get("code")) == (503, "upstream_unavailable"),
            "503 upstream_unavailable from a not-ready upstream",
        )
        journey.expect(refused.headers.get("retry-after") == "30", "Retry-After 30")
        trail = engine.client.get(
            "/v1/admin/audit", params={"userId": user}, headers=engine.admin_headers
        ).json()
        actions = [e["action"] for e in trail["entries"]]
        journey.step("not ready: audit", actions=actions)
        journey.expect(actions == ["grant", "vend"], "nothing but the vend was charged")
    finally:
        engine.close()
        upstream.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ttt-dir", type=Path, required=True, help="a built TTTranscribe")
    args = parser.parse_args()
    if os.environ.get(_NAMESPACED) != "1":
        if not shutil.which("unshare"):
            print("SKIPPED: `unshare` is needed to keep TTTranscribe off the internet")
            return 0
        # A fresh network namespace: only loopback, so nothing can leave the machine.
        command = ["unshare", "--net", "--map-root-user", sys.executable, *sys.argv]
        return subprocess.run(command, env={**os.environ, _NAMESPACED: "1"}, check=False).returncode
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    journey = Journey()
    journey.step(
        "network namespace",
        links=[line.split(":")[1].strip() for line in links.stdout.splitlines()],
    )
    happy_path(args.ttt_dir, journey)
    not_ready_path(args.ttt_dir, journey)
    print(json.dumps({"broken": journey.broken, "steps": len(journey.steps)}))
    return 1 if journey.broken else 0


if __name__ == "__main__":
    sys.exit(main())
