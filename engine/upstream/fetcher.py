"""An SSRF-safe page fetcher for TikTok metadata.

Every hop is a *logical* URL that must pass `normalise`-style checks: https, an allow-listed
TikTok host, no userinfo, default port.  Redirects are followed by hand, each `Location`
re-checked, at most `MAX_REDIRECTS` times.  The body is streamed and cut at `max_bytes`; the
whole fetch has one deadline.  With `base` set (dev mode, tests) the physical request goes to
`{base}/{host}{path}` instead, so a simulator can stand in for TikTok without weakening any
check on the logical URL.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urljoin, urlsplit

import httpx

from engine.domain.urls import ALLOWED_HOSTS
from engine.errors import UpstreamError, UpstreamTimeout

MAX_REDIRECTS = 5
BROWSER_UA = "Mozilla/5.0 (compatible; pluct-engine metadata)"


def allowed(url: str) -> bool:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    return (
        parts.scheme == "https"
        and parts.username is None
        and parts.password is None
        and (parts.hostname or "") in ALLOWED_HOSTS
        and port in (None, 443)
    )


class PageFetcher:
    def __init__(
        self,
        *,
        base: str,
        timeout: float,
        max_bytes: int,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._base = base.rstrip("/")
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._http = http or httpx.AsyncClient(timeout=httpx.Timeout(None), follow_redirects=False)

    async def aclose(self) -> None:
        await self._http.aclose()

    def _physical(self, url: str) -> str:
        if not self._base:
            return url
        parts = urlsplit(url)
        return f"{self._base}/{parts.hostname}{parts.path}"

    async def fetch(self, url: str) -> tuple[str, str]:
        """(final logical URL, text) of an allow-listed page, or an upstream error."""
        try:
            async with asyncio.timeout(self._timeout):
                return await self._follow(url)
        except TimeoutError:
            raise UpstreamTimeout(
                "The metadata source did not answer in time",
                details={"timeoutSeconds": self._timeout},
            ) from None
        except httpx.HTTPError as exc:
            raise UpstreamError(
                "The metadata source could not be reached",
                code="metadata_fetch_failed",
                details={"error": type(exc).__name__},
            ) from None

    async def _follow(self, url: str) -> tuple[str, str]:
        for _ in range(MAX_REDIRECTS + 1):
            if not allowed(url):
                raise UpstreamError(
                    "The metadata source redirected outside TikTok",
                    code="metadata_redirect_refused",
                )
            request = self._http.build_request(
                "GET", self._physical(url), headers={"User-Agent": BROWSER_UA}
            )
            response = await self._http.send(request, stream=True)
            try:
                if response.is_redirect:
                    url = urljoin(url, response.headers.get("location", ""))
                    continue
                if not response.is_success:
                    raise UpstreamError(
                        "The metadata source refused the page",
                        code="metadata_fetch_failed",
                        details={"upstreamStatus": response.status_code},
                    )
                return url, await self._read_capped(response)
            finally:
                await response.aclose()
        raise UpstreamError("Too many redirects", code="metadata_redirect_refused")

    async def _read_capped(self, response: httpx.Response) -> str:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self._max_bytes:
                raise UpstreamError(
                    "The metadata page is too large",
                    code="metadata_too_large",
                    details={"maxBytes": self._max_bytes},
                )
            chunks.append(chunk)
        return b"".join(chunks).decode(response.encoding or "utf-8", errors="replace")
