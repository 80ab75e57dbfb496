"""The Redis backend's reads of whole histories, and the archiver that moves old entries out
of RAM (`redis_archive`): `RedisStore` inherits them, so the request path stays in `redis.py`.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from engine.store import redis_archive
from engine.store.protocol import StoreUnavailable
from engine.store.records import AuditEntry, LedgerChunk, token_of_vend
from engine.store.redis_jobs import token_key

log = logging.getLogger("engine.store.redis")
_entry = msgspec.json.Decoder(AuditEntry)
# Users whose ledger heads `read_ledger` asks for at once.
LEDGER_USERS_PER_BATCH = 256


def _user(user_id: str) -> str:
    return "{u:" + user_id + "}"


def _entry_at(position: int, raw: bytes) -> AuditEntry:
    """A stored entry with its id, which is its 1-based position in the user's list (entries
    written by earlier engines carry it already)."""
    if raw.startswith(b'{"id":'):
        return _entry.decode(raw)
    return _entry.decode(b'{"id":%d,' % position + raw[1:])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisHistory:
    """What `RedisStore` provides to these methods."""

    _redis: Redis | RedisCluster
    _archive: redis_archive.Archive | None
    _archive_settings: redis_archive.ArchiveSettings | None
    _ledger_head: AsyncScript
    _tombstones: AsyncScript
    _drop_vends: AsyncScript

    if TYPE_CHECKING:  # provided by RedisStore

        def _call(self, *command: Any) -> Awaitable[Any]: ...

        async def _run(
            self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]
        ) -> Any: ...

    async def _entries(self, user_id: str, first_id: int, raw: list[bytes]) -> list[AuditEntry]:
        """Entries from positions `first_id`..., each tombstone's taken from the archive."""
        missing = [first_id + offset for offset, item in enumerate(raw) if not item]
        found: dict[int, bytes] = {}
        if missing:
            if self._archive is None:
                raise StoreUnavailable("redis: archived entries, but no AUDIT_ARCHIVE_PATH set")
            found = await asyncio.to_thread(self._archive.entries, user_id, missing)
        return [
            _entry_at(first_id + offset, item or found[first_id + offset])
            for offset, item in enumerate(raw)
        ]

    async def read_ledger(self, chunk_size: int = 1000) -> AsyncIterator[LedgerChunk]:
        """Users found by SCAN (those with a ledger, then those with only a balance), a batch
        of users' heads at a time: on a single Redis the batch's scripts share one pipelined
        write.  Each user's balance is read with their ledger's length in one script; the
        entries up to that length are then paged with LRANGE.  Memory: one batch of pages and
        the set of user ids seen (SCAN may return a key twice)."""
        seen: set[str] = set()
        for pattern, kind in (("{u:*}:ledger", "list"), ("{u:*}:bal", "hash")):
            batch: list[str] = []
            async for key in self._redis.scan_iter(match=pattern, count=1000, _type=kind):
                name = _text(key)
                user_id = name[3 : name.rindex("}")]
                if user_id not in seen:
                    seen.add(user_id)
                    batch.append(user_id)
                if len(batch) >= LEDGER_USERS_PER_BATCH:
                    async for chunk in self._read_users(batch, chunk_size):
                        yield chunk
                    batch = []
            async for chunk in self._read_users(batch, chunk_size):
                yield chunk

    async def _read_users(self, users: list[str], chunk_size: int) -> AsyncIterator[LedgerChunk]:
        heads = await asyncio.gather(
            *(
                self._run(
                    self._ledger_head, [_user(u) + ":bal", _user(u) + ":ledger"], [chunk_size]
                )
                for u in users
            )
        )
        # The batch's archived entries in one trip to the archive's thread, not one per user.
        missing = {
            user_id: [n + 1 for n, item in enumerate(first) if not item]
            for user_id, (_, _, first) in zip(users, heads, strict=True)
        }
        archived: dict[str, dict[int, bytes]] = {}
        if any(missing.values()):
            if self._archive is None:
                raise StoreUnavailable("redis: archived entries, but no AUDIT_ARCHIVE_PATH set")
            archived = await asyncio.to_thread(self._archive.entries_of, missing)
        for user_id, (raw_balance, length, first) in zip(users, heads, strict=True):
            balance = int(raw_balance) if raw_balance not in (b"", "") else None
            found = archived.get(user_id, {})
            yield LedgerChunk(
                user_id,
                balance,
                [_entry_at(n + 1, item or found[n + 1]) for n, item in enumerate(first)],
            )
            done = len(first)
            while done < int(length):
                stop = min(int(length), done + chunk_size) - 1
                page = await self._call("LRANGE", _user(user_id) + ":ledger", done, stop)
                yield LedgerChunk(user_id, balance, await self._entries(user_id, done + 1, page))
                done += len(page)
                if not page:
                    break

    async def ledger_size(self) -> int | None:
        """Unknown without a pass over every user."""
        return None

    # -- history out of RAM (`redis_archive`) ------------------------------------------------
    async def _archive_forever(self) -> None:
        assert self._archive_settings is not None
        while True:
            await asyncio.sleep(self._archive_settings.interval_seconds)
            try:
                await self.archive_old(time.time())
            except (StoreUnavailable, RedisError, OSError, sqlite3.Error) as exc:
                log.warning("archive skipped: %s", exc)

    async def archive_old(self, now: float) -> int:
        """Move every entry older than the hot window to the archive; returns how many."""
        if self._archive is None or self._archive_settings is None:
            return 0
        hot = self._archive_settings.hot_seconds
        cutoff = redis_archive.cutoff(now, hot)
        records = redis_archive.cutoff(now, max(hot, redis_archive.VEND_RECORD_SECONDS))
        moved = 0
        async for key in self._redis.scan_iter(match="{u:*}:ledger", count=1000, _type="list"):
            name = _text(key)
            user_id = name[3 : name.rindex("}")]
            moved += await self._archive_user(user_id, cutoff)
            await self._drop_records(user_id, records)
        return moved

    async def _drop_records(self, user_id: str, cutoff: str) -> int:
        """Drop the `vend:` and `tok:` records of archived vends older than `cutoff`
        (`redis_archive.VEND_RECORD_SECONDS`); returns how many vends."""
        assert self._archive is not None
        key, dropped = _user(user_id), 0
        while True:
            start = int(await self._call("GET", key + ":records") or 0)
            end = int(await self._call("GET", key + ":archived") or 0)
            stop = min(end, start + redis_archive.ARCHIVE_BATCH_ENTRIES)
            if start >= stop:
                return dropped
            positions = list(range(start + 1, stop + 1))
            found = await asyncio.to_thread(self._archive.entries, user_id, positions)
            old, vends = redis_archive.vends_before([found.get(p) for p in positions], cutoff)
            if old == 0:
                return dropped
            tokens = [token_key(user_id, jti) for v in vends if (jti := token_of_vend(v))]
            await self._run(
                self._drop_vends, [key + ":bal", key + ":records", *tokens], [start + old, *vends]
            )
            dropped += len(vends)
            if old < len(positions):
                return dropped

    async def _archive_user(self, user_id: str, cutoff: str) -> int:
        assert self._archive is not None
        moved = 0
        while True:
            # Where the last completed batch ended; a batch that crashed before its
            # tombstones left the cursor where it was, and is done again.
            start = int(await self._call("GET", _user(user_id) + ":archived") or 0)
            batch = redis_archive.ARCHIVE_BATCH_ENTRIES
            items = await self._call("LRANGE", _user(user_id) + ":ledger", start, start + batch - 1)
            old = redis_archive.old_prefix(items, cutoff)
            if old == 0:
                return moved
            entries = [(start + n + 1, raw) for n, raw in enumerate(items[:old]) if raw]
            # On disk first (fsynced), then out of RAM: a crash in between repeats the batch.
            await asyncio.to_thread(self._archive.store, user_id, entries)
            await self._tombstone(user_id, start + old, [entry_id - 1 for entry_id, _ in entries])
            moved += len(entries)
            if old < len(items) or len(items) < batch:
                return moved

    async def _tombstone(self, user_id: str, cursor: int, positions: list[int]) -> None:
        keys = [_user(user_id) + ":ledger", _user(user_id) + ":archived"]
        await self._run(self._tombstones, keys, [cursor, *positions])
