"""TTTranscribe's webhook (upstream reference §8): only correctly signed deliveries count,
each once, and only for jobs the engine knows."""

from __future__ import annotations

import json

import httpx

from pluct_conformance.registry import Skip, check, expect, expect_code, said
from pluct_conformance.target import Target, webhook_delivery

PATH = "/webhooks/tttranscribe"
PROMISE = "spec: /webhooks/tttranscribe (upstream reference §8.3)"


async def _deliver(
    client: httpx.AsyncClient, body: dict[str, object], headers: dict[str, str]
) -> httpx.Response:
    return await client.post(PATH, content=json.dumps(body).encode(), headers=headers)


@check(
    "webhooks",
    "strict",
    "a webhook with a forged signature is 401 invalid_signature",
    promise=PROMISE,
)
async def forged_signature(target: Target) -> None:
    async with target.client() as client:
        body, headers = webhook_delivery("not-the-webhook-secret", "job-forged", "req-forged")
        expect_code(await _deliver(client, body, headers), 401, "invalid_signature")
        headers.pop("X-TTTranscribe-Signature")
        expect_code(await _deliver(client, body, headers), 401, "invalid_signature")


@check(
    "webhooks",
    "strict",
    "a signed webhook for an unknown requestId is 404; a replayed idempotencyKey is 409",
    promise=PROMISE,
)
async def signed_delivery_rules(target: Target) -> None:
    if not target.webhook_secret:
        raise Skip("needs --webhook-secret (TTT_WEBHOOK_SECRET, else TTT_SHARED_SECRET)")
    async with target.client() as client:
        unknown = webhook_delivery(
            target.webhook_secret, f"job-{target.run_id}", f"unknown-{target.run_id}"
        )
        expect_code(await _deliver(client, *unknown), 404, "request_not_found")
        for job_id, request_id in await _candidates(client, target):
            body, headers = webhook_delivery(target.webhook_secret, job_id, request_id)
            first = await _deliver(client, body, headers)
            if first.status_code == 404:
                continue  # not the id the engine sent upstream; try the next one
            expect(first.status_code == 200, f"a signed delivery was refused: {said(first)}", first)
            expect_code(await _deliver(client, body, headers), 409, "already_processed")
            return
        # No requestId of a real job is visible from outside: the replay of the unknown
        # delivery must still never be accepted.
        again = await _deliver(client, *unknown)
        expect(again.status_code in (404, 409), f"a replay was accepted: {said(again)}", again)


async def _candidates(client: httpx.AsyncClient, target: Target) -> list[tuple[str, str]]:
    """(upstream jobId, requestId) pairs that may name a job submitted now: the engine's job
    id as the requestId, with the upstream id the simulator saw polled (when its URL and
    secret were given) or the ids the deployment shows; none without a working upstream."""
    try:
        await target.require_upstream(client)
        await target.funded(client, "webhook", 1)
        token = await target.vend(client, "webhook")
    except Exception:  # no job to replay: the fallback rule below still applies
        return []
    submitted = await target.submit(client, token)
    if submitted.status_code not in (200, 202):
        return []
    job_id = str(submitted.json().get("jobId"))
    bodies = [submitted.json()]
    polled = await client.get(f"/ttt/status/{job_id}", headers=target.service(token))
    if polled.status_code == 200:
        bodies.append(polled.json())
    pairs: list[tuple[str, str]] = []
    upstream = await target.last_upstream_job()
    if upstream:
        pairs.append((upstream, job_id))
    ids = {b.get("requestId") for b in bodies} | {job_id}
    pairs += [(job_id, i) for i in ids if isinstance(i, str) and i]
    return pairs
