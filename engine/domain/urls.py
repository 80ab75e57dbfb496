"""TikTok URL validation by parsing, never by substring.

A URL is accepted only when it parses as https, names an allow-listed TikTok host with no
userinfo and no odd port, and has one of the path shapes the upstream accepts.  What comes out
is re-serialised from the parsed parts (query and fragment dropped), so nothing the caller
smuggled in (quotes, spaces, shell metacharacters, `@` tricks) reaches the upstream or a fetch.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from engine.errors import InvalidUrl

MAX_URL_LENGTH = 2048
VIDEO_HOSTS = frozenset({"www.tiktok.com", "tiktok.com", "m.tiktok.com"})
SHORT_HOSTS = frozenset({"vm.tiktok.com", "vt.tiktok.com"})
ALLOWED_HOSTS = VIDEO_HOSTS | SHORT_HOSTS
_VIDEO_PATH = re.compile(r"^/@([A-Za-z0-9_.-]{1,64})/video/([0-9]{1,32})/?$")
_SHORT_PATH = re.compile(r"^/([A-Za-z0-9_]{1,64})/?$")


def _reject(raw: str, why: str) -> InvalidUrl:
    return InvalidUrl(
        details={"providedUrl": raw[:200], "reason": why, "supportedHosts": sorted(ALLOWED_HOSTS)}
    )


def normalise_tiktok_url(raw: str) -> str:
    """The canonical form of a TikTok video URL, or `InvalidUrl` (400)."""
    text = raw.strip()
    if not text or len(text) > MAX_URL_LENGTH:
        raise _reject(raw, "empty or too long")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise _reject(raw, "not a URL") from None
    if parts.scheme.lower() != "https":
        raise _reject(raw, "only https is accepted")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise _reject(raw, "userinfo is not allowed")
    host = (parts.hostname or "").lower()
    if host not in ALLOWED_HOSTS:
        raise _reject(raw, "not a TikTok host")
    if port not in (None, 443):
        raise _reject(raw, "unexpected port")
    if host in VIDEO_HOSTS:
        match = _VIDEO_PATH.match(parts.path)
        if not match:
            raise _reject(raw, "expected /@user/video/<digits>")
        return f"https://www.tiktok.com/@{match.group(1)}/video/{match.group(2)}"
    short = _SHORT_PATH.match(parts.path)
    if not short:
        raise _reject(raw, "expected a short link code")
    return f"https://{host}/{short.group(1)}/"


def handle_of(url: str) -> str:
    """`@user` of a canonical video URL, or '' for a short link."""
    match = _VIDEO_PATH.match(urlsplit(url).path)
    return match.group(1) if match else ""
