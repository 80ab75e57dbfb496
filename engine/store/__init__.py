"""Storage: one `Store` protocol, one backend per store URL scheme."""

from __future__ import annotations

from engine.config import ConfigError, sqlite_path
from engine.store.protocol import Store, StoreUnavailable
from engine.store.sqlite import SQLiteStore

__all__ = ["SQLiteStore", "Store", "StoreUnavailable", "store_from_url"]


def store_from_url(url: str) -> Store:
    """`sqlite:///path/file.db`, `redis://host:port/db` (also `rediss://`), or a Redis Cluster
    through any node: `redis+cluster://host:port`."""
    if url.startswith("sqlite:"):
        return SQLiteStore(sqlite_path(url))
    if url.startswith(("redis://", "rediss://", "redis+cluster://", "unix://")):
        from engine.store.redis import RedisStore
        from engine.store.redis_archive import ArchiveSettings

        # Read here, so that `serve` and `ledger verify` see the same archive.
        return RedisStore(url, archive=ArchiveSettings.from_env())
    raise ConfigError(f"unsupported store URL {url!r}: use sqlite:///path or redis://host:port/db")
