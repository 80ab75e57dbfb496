"""`GET /meta`: TikTok metadata, fetched safely and cached with a jittered TTL.

The TTL is drawn between 1 and 6 hours so that entries cached together do not expire
together (no thundering herd).  Failures are never cached.
"""

from __future__ import annotations

import html
import random
import re
from collections.abc import Callable

import msgspec

from engine.domain.credits import Clock
from engine.domain.urls import handle_of, normalise_tiktok_url
from engine.store.protocol import Store
from engine.upstream.fetcher import PageFetcher

MIN_TTL_SECONDS = 3600.0
MAX_TTL_SECONDS = 6 * 3600.0
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.S | re.I)
_OG = re.compile(r'<meta[^>]+property="og:(\w+)"[^>]+content="([^"]*)"', re.I)
_AUTHOR = re.compile(r'"(?:author|nickname)"\s*:\s*"([^"]{1,200})"')
_UNIQUE_ID = re.compile(r'"uniqueId"\s*:\s*"([A-Za-z0-9_.-]{1,64})"')
_DURATION = re.compile(r'"duration"\s*:\s*([0-9]{1,7})(?:\.[0-9]+)?')


class Metadata(msgspec.Struct, kw_only=True):
    title: str
    author: str
    description: str
    duration: int
    handle: str
    url: str
    cached: bool = False


def parse_page(page: str, url: str, final_url: str) -> Metadata:
    og = {name.lower(): html.unescape(value) for name, value in _OG.findall(page)}
    title_tag = _TITLE.search(page)
    handle = handle_of(final_url) or handle_of(url)
    if not handle and (unique := _UNIQUE_ID.search(page)):
        handle = unique.group(1)
    author = _AUTHOR.search(page)
    duration = _DURATION.search(page)
    title = og.get("title") or (html.unescape(title_tag.group(1).strip()) if title_tag else "")
    return Metadata(
        title=title[:300] or "TikTok video",
        author=(author.group(1) if author else handle or "unknown")[:200],
        description=og.get("description", "")[:2000],
        duration=int(duration.group(1)) if duration else 0,
        handle=handle,
        url=url,
    )


class MetadataService:
    def __init__(
        self,
        store: Store,
        fetcher: PageFetcher,
        clock: Clock,
        ttl: Callable[[], float] = lambda: random.uniform(MIN_TTL_SECONDS, MAX_TTL_SECONDS),
    ) -> None:
        self._store = store
        self._fetcher = fetcher
        self._clock = clock
        self._ttl = ttl

    async def resolve(self, raw_url: str) -> Metadata:
        url = normalise_tiktok_url(raw_url)
        key = "meta:" + url
        cached = await self._store.cache_get(key, self._clock())
        if cached is not None:
            meta = msgspec.json.decode(cached, type=Metadata)
            meta.cached = True
            return meta
        final_url, page = await self._fetcher.fetch(url)
        meta = parse_page(page, url, final_url)
        await self._store.cache_set(key, msgspec.json.encode(meta), self._ttl(), self._clock())
        return meta
