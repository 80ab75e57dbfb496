"""Races, with Jepsen's bank test as the model: concurrent money movement, then an audit."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx

from pluct_conformance.registry import Failure, check, expect
from pluct_conformance.target import VIDEO_URL, Target, gather_limited

USERS = 20
VENDS_PER_USER = 14
GRANTS_PER_USER = 3
START = 6


@check(
    "races",
    "strict",
    "concurrent vends and grants: balance = grants - vends, never negative, tokens distinct",
)
async def bank(target: Target) -> None:
    async with target.client(connections=300) as client:
        labels = [f"bank-{i}" for i in range(USERS)]
        headers = {label: await target.funded(client, label, START) for label in labels}
        jobs: list[tuple[str, str]] = [
            (label, "vend") for label in labels for _ in range(VENDS_PER_USER)
        ]
        jobs += [(label, "grant") for label in labels for _ in range(GRANTS_PER_USER)]

        async def act(label: str, kind: str) -> tuple[str, str, httpx.Response]:
            if kind == "grant":
                return label, kind, await target.grant(client, label, 1)
            return label, kind, await client.post("/v1/vend-token", headers=headers[label], json={})

        outcomes = await gather_limited([act(label, kind) for label, kind in jobs], limit=300)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        expect(not errors, f"{len(errors)} requests failed at transport level: {errors[:1]!r}")
        tokens: list[str] = []
        for _label, kind, response in outcomes:
            if response.status_code >= 500:
                raise Failure(f"{kind} answered {response.status_code}", response.request)
            if kind == "vend" and response.status_code == 200:
                tokens.append(response.json()["token"])
        expect(len(tokens) == len(set(tokens)), "two successful vends returned the same token")
        for label in labels:
            mine = [o for o in outcomes if o[0] == label]
            grants = sum(1 for _, k, r in mine if k == "grant" and r.status_code == 200)
            vends = sum(1 for _, k, r in mine if k == "vend" and r.status_code == 200)
            balance = await client.get("/v1/credits/balance", headers=headers[label])
            expect(
                balance.status_code == 200, f"balance read failed ({balance.status_code})", balance
            )
            value = balance.json().get("balance")
            expect(
                isinstance(value, int) and value >= 0,
                f"{label}: balance {value!r} is not a non-negative integer",
                balance,
            )
            expected = START + grants - vends
            expect(
                value == expected,
                f"{label}: balance {value}, but {grants} grants and {vends} vends say {expected}",
                balance,
            )


@check(
    "races", "seed", "one idempotency key fired 50 times at once charges once and returns one token"
)
async def one_key_charges_once(target: Target) -> None:
    async with target.client(connections=60) as client:
        headers = await target.funded(client, "idem", 5)
        body = {"userId": target.user_id("idem"), "clientRequestId": f"conf-{target.run_id}-key"}
        responses = await asyncio.gather(
            *(client.post("/v1/vend-token", headers=headers, json=body) for _ in range(50))
        )
        codes = Counter(r.status_code for r in responses)
        expect(codes[200] == 50, f"expected 50 x 200, got {dict(codes)}", responses[0])
        tokens = {r.json().get("token") for r in responses}
        expect(len(tokens) == 1, f"{len(tokens)} distinct tokens for one key", responses[0])
        balance = await client.get("/v1/credits/balance", headers=headers)
        expect(
            balance.json().get("balance") == 4,
            f"balance {balance.json().get('balance')} after one charge of 5",
            balance,
        )


@check("races", "strict", "a zero-balance user replaying another user's key gets nothing of theirs")
async def cross_user_key(target: Target) -> None:
    async with target.client() as client:
        owner = await target.funded(client, "key-owner", 1)
        key = f"conf-{target.run_id}-shared"
        first = await client.post("/v1/vend-token", headers=owner, json={"clientRequestId": key})
        expect(first.status_code == 200, f"owner's vend failed ({first.status_code})", first)
        thief = target.bearer("key-thief")
        stolen = await asyncio.gather(
            *(
                client.post("/v1/vend-token", headers=thief, json={"clientRequestId": key})
                for _ in range(10)
            )
        )
        token = first.json()["token"]
        for response in stolen:
            expect(token not in response.text, "another user's token came back", response)
            expect(
                response.status_code in (402, 429),
                f"expected 402, got {response.status_code}",
                response,
            )


@check("races", "strict", "one vended token fired 30 times at transcribe yields exactly one job")
async def one_token_one_job(target: Target) -> None:
    async with target.client(connections=40) as client:
        await target.require_upstream(client)
        headers = await target.funded(client, "one-job", 1)
        token = await target.vend(client, headers)
        service = {"Authorization": f"Bearer {token}"}
        responses = await asyncio.gather(
            *(
                client.post("/ttt/transcribe", headers=service, json={"url": VIDEO_URL})
                for _ in range(30)
            )
        )
        accepted = [r for r in responses if r.status_code in (200, 202)]
        expect(len(accepted) == 1, f"{len(accepted)} jobs accepted for one token", responses[0])
        for response in responses:
            if response.status_code >= 500:
                raise Failure(f"transcribe answered {response.status_code}", response.request)
