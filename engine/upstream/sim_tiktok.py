"""The simulator's TikTok stand-in, for the metadata fetcher in dev mode and tests.

`@huge` is oversized, `@slow` hangs, `@missing` is 404, `@broken` is 500, and the short links
`vm.tiktok.com/EVIL` and `/LOOP` redirect out of the allow-list and in a circle.  Kept apart
from the TTTranscribe simulator because it stands in for another service.
"""

from __future__ import annotations

import asyncio
import re


async def tiktok_page(path: str) -> tuple[int, bytes, dict[str, str]]:
    """`GET /{host}/{path}`: a page, a redirect or a failure, chosen by the path."""
    host, _, rest = path[1:].partition("/")
    html = {"content-type": "text/html; charset=utf-8"}
    if host in ("vm.tiktok.com", "vt.tiktok.com"):
        code = rest.strip("/")
        if code == "EVIL":
            return 302, b"", {"location": "http://127.0.0.1:9/internal"}
        if code == "LOOP":
            return 302, b"", {"location": f"https://{host}/LOOP/"}
        digits = str(int.from_bytes(code.encode()[:6].ljust(6, b"0"), "big"))
        return 301, b"", {"location": f"https://www.tiktok.com/@sim/video/{digits}"}
    match = re.match(r"^@([\w.-]+)/video/(\d+)", rest)
    if not match:
        return 404, b"not found", html
    user, video = match.groups()
    if user == "missing":
        return 404, b"<html>gone</html>", html
    if user == "broken":
        return 500, b"<html>error</html>", html
    if user == "slow":
        await asyncio.sleep(3600)
    if user == "huge":
        return 200, b"<html>" + b"x" * (3 * 1024 * 1024) + b"</html>", html
    page = (
        f"<html><head><title>Video {video} by @{user} | TikTok</title>"
        f'<meta property="og:title" content="Video {video} by @{user}"/>'
        f'<meta property="og:description" content="A simulated clip about credits #pluct"/>'
        f'</head><body><script>{{"author":"{user.title()} Sim","uniqueId":"{user}",'
        f'"duration":37}}</script></body></html>'
    )
    return 200, page.encode(), html
