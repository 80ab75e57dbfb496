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
_entries = msgspec.json.Decoder(list[AuditEntry])
# Users whose ledger heads `read_ledger` asks for at once, and the most archived entries it
# reads for them in one query (a user with more is read a page at a time).
LEDGER_USERS_PER_BATCH = 256
ARCHIVED_ROWS_PER_BATCH = 50_000


def _user(user_id: str) -> str:
    return "{u:" + user_id + "}"


def _entry_at(entry_id: int, raw: bytes) -> AuditEntry:
    """A stored entry with its id (`redis_scripts`; entries written by earlier engines carry
    it already)."""
    if raw.startswith(b'{"id":'):
        return _entry.decode(raw)
    return _entry.decode(b'{"id":%d,' % entry_id + raw[1:])


def _found(found: dict[int, bytes], user_id: str, entry_id: int) -> bytes:
    raw = found.get(entry_id)
    if raw is None:
        raise StoreUnavailable(f"redis: the archive lacks entry {entry_id} of {user_id!r}")
    return raw


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisHistory:
    """What `RedisStore` provides to these methods."""

    _redis: Redis | RedisCluster
    _archive: redis_archive.Archive | None
    _archive_settings: redis_archive.ArchiveSettings | None
    _ledger_head: AsyncScript
    _page_script: AsyncScript
    _head: AsyncScript
    _trim_script: AsyncScript
    _drop_vends: AsyncScript

    if TYPE_CHECKING:  # provided by RedisStore

        def _call(self, *command: Any) -> Awaitable[Any]: ...

        async def _run(
            self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]
        ) -> Any: ...

    def _from_archive(self) -> redis_archive.Archive:
        if self._archive is None:
            raise StoreUnavailable("redis: archived entries, but no AUDIT_ARCHIVE_PATH set")
        return self._archive

    async def _page(self, user_id: str, after_id: int, limit: int) -> list[AuditEntry]:
        """Up to `limit` entries after `after_id`: those up to the trimmed head (and any
        tombstone of earlier engines) from the archive, the rest from the list."""
        key = _user(user_id)
        trimmed, items = await self._run(
            self._page_script, [key + ":bal", key + ":ledger"], [after_id, limit]
        )
        trimmed = int(trimmed)
        archived = list(range(after_id + 1, min(trimmed, after_id + limit) + 1))
        entries: list[AuditEntry] = []
        if archived:
            found = await asyncio.to_thread(self._from_archive().entries, user_id, archived)
            entries = [_entry_at(i, _found(found, user_id, i)) for i in archived]
        listed = trimmed + 1 + max(0, after_id - trimmed)  # the id of items[0]
        return entries + await self._listed(user_id, listed, items)

    async def _listed(self, user_id: str, first_id: int, raw: list[bytes]) -> list[AuditEntry]:
        """Entries read from the list with ids `first_id`..., tombstones from the archive."""
        missing = [first_id + n for n, item in enumerate(raw) if not item]
        found: dict[int, bytes] = {}
        if missing:
            found = await asyncio.to_thread(self._from_archive().entries, user_id, missing)
        return [
            _entry_at(first_id + n, item or _found(found, user_id, first_id + n))
            for n, item in enumerate(raw)
        ]

    async def read_ledger(self, chunk_size: int = 1000) -> AsyncIterator[LedgerChunk]:
        """Users found by SCAN (those with a ledger, and those with only a balance hash), in
        sorted order, a batch at a time: on a single Redis the batch's head scripts share one
        pipelined write, and the batch's archived entries are one query over the archive's
        (user, id) b-tree, read in key order.  Memory: the sorted user ids, one batch of
        heads, and at most `ARCHIVED_ROWS_PER_BATCH` archived entries."""
        users: set[str] = set()
        for pattern, kind in (("{u:*}:ledger", "list"), ("{u:*}:bal", "hash")):
            async for key in self._redis.scan_iter(match=pattern, count=1000, _type=kind):
                name = _text(key)
                users.add(name[3 : name.rindex("}")])
        ordered = sorted(users)
        del users
        batches = [
            ordered[start : start + LEDGER_USERS_PER_BATCH]
            for start in range(0, len(ordered), LEDGER_USERS_PER_BATCH)
        ]
        # The next batch is fetched (Redis, then the archive on its thread) while this one is
        # decoded and checked.
        fetching = asyncio.ensure_future(self._fetch(batches[0], chunk_size)) if batches else None
        for index, batch in enumerate(batches):
            assert fetching is not None
            fetched = await fetching
            fetching = None
            if index + 1 < len(batches):
                fetching = asyncio.ensure_future(self._fetch(batches[index + 1], chunk_size))
            try:
                async for chunk in self._read_users(batch, chunk_size, *fetched):
                    yield chunk
            except BaseException:
                if fetching is not None:
                    fetching.cancel()
                raise

    async def _fetch(self, users: list[str], chunk_size: int) -> tuple[list[Any], set[str], Any]:
        """A batch's heads, then the archived entries of those whose history fits one query."""
        heads = await asyncio.gather(
            *(
                self._run(
                    self._ledger_head, [_user(u) + ":bal", _user(u) + ":ledger"], [chunk_size]
                )
                for u in users
            )
        )
        # Heads first, then the archive: every id up to a head's `trimmed` was fsynced there
        # before it was trimmed.
        together: dict[str, int] = {}
        rows = 0
        for user_id, (_, _, trimmed, _) in zip(users, heads, strict=True):
            if int(trimmed) > 0 and rows + int(trimmed) <= ARCHIVED_ROWS_PER_BATCH:
                together[user_id] = int(trimmed)
                rows += int(trimmed)
        archived: dict[str, list[bytes]] = {}
        if any(int(head[2]) for head in heads):
            archived = await asyncio.to_thread(self._from_archive().heads, together)
        return heads, set(together), archived

    async def _read_users(
        self,
        users: list[str],
        chunk_size: int,
        heads: list[Any],
        together: set[str],
        archived: dict[str, list[bytes]],
    ) -> AsyncIterator[LedgerChunk]:
        for user_id, (raw_balance, length, trimmed, first) in zip(users, heads, strict=True):
            balance = int(raw_balance) if raw_balance not in (b"", "") else None
            trimmed = int(trimmed)
            if user_id in together:
                known = archived.pop(user_id, [])
                if len(known) != trimmed:
                    raise StoreUnavailable(f"redis: the archive lacks entries of {user_id!r}")
                for at in range(0, trimmed, chunk_size):
                    part = b",".join(known[at : at + chunk_size])
                    yield LedgerChunk(user_id, balance, _entries.decode(b"[" + part + b"]"))
            done = 0 if user_id not in together else trimmed
            while done < trimmed:  # a long archived history: a page at a time
                last = min(trimmed, done + chunk_size)
                page = await asyncio.to_thread(self._from_archive().page, user_id, done, last)
                if not page or page[0][0] != done + 1 or page[-1][0] - done != len(page):
                    raise StoreUnavailable(f"redis: the archive lacks entries of {user_id!r}")
                yield LedgerChunk(user_id, balance, [_entry_at(i, raw) for i, raw in page])
                done += len(page)
            if first or not trimmed:
                yield LedgerChunk(user_id, balance, await self._listed(user_id, trimmed + 1, first))
            done, end = trimmed + len(first), trimmed + int(length)
            while done < end:
                entries = await self._page(user_id, done, min(chunk_size, end - done))
                if not entries:
                    break
                yield LedgerChunk(user_id, balance, entries)
                done += len(entries)

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
        archive = self._from_archive()
        key, dropped = _user(user_id), 0
        while True:
            start = int(await self._call("GET", key + ":records") or 0)
            # Archived: up to the trimmed head, or an earlier engine's tombstone cursor.
            trimmed = int(await self._call("HGET", key + ":bal", "trimmed") or 0)
            end = max(trimmed, int(await self._call("GET", key + ":archived") or 0))
            stop = min(end, start + redis_archive.ARCHIVE_BATCH_ENTRIES)
            if start >= stop:
                return dropped
            positions = list(range(start + 1, stop + 1))
            found = await asyncio.to_thread(archive.entries, user_id, positions)
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
        archive, key, moved = self._from_archive(), _user(user_id), 0
        batch = redis_archive.ARCHIVE_BATCH_ENTRIES
        while True:
            trimmed, items = await self._run(self._head, [key + ":bal", key + ":ledger"], [batch])
            trimmed = int(trimmed)
            old = redis_archive.old_prefix(items, cutoff)
            if old == 0:
                return moved
            # Tombstones of earlier engines are in the archive already: trimmed, not stored.
            entries = [(trimmed + n + 1, raw) for n, raw in enumerate(items[:old]) if raw]
            # On disk first (fsynced), then out of RAM: a crash in between repeats the batch.
            if entries:
                await asyncio.to_thread(archive.store, user_id, entries)
            moved += len(entries)
            if not await self._trim(user_id, trimmed, old):
                continue  # another archiver trimmed first: look at the head again
            if old < len(items) or len(items) < batch:
                return moved

    async def _trim(self, user_id: str, trimmed: int, count: int) -> bool:
        """Trim `count` archived entries off the list's head, if it is still at `trimmed`."""
        key = _user(user_id)
        keys = [key + ":bal", key + ":ledger", key + ":archived"]
        return bool(await self._run(self._trim_script, keys, [trimmed, count]))
