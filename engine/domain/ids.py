"""What an identifier may be: user ids (body, query, JWT `sub`) and vend request ids.

One pattern, matched whole with `fullmatch`: `re.match` with `$` accepts a trailing newline,
which made `carol\n` a user apart from `carol`.  The set is what the mobile app sends
(`mobile-<16 hex>`, `mobile-error-fallback`, `req_<hex>`) plus `.:@` for other issuers; it
leaves out `|`, which the engine uses to build keys of its own (see `ratelimit.ip_subject`),
so no identifier can collide with them.
"""

from __future__ import annotations

import re

ID_CHARACTERS = "A-Za-z0-9_.:@-"
ID_MAX_LENGTH = 128
_ID = re.compile(f"[{ID_CHARACTERS}]{{1,{ID_MAX_LENGTH}}}")
# For msgspec, which applies a pattern with `re.search`: `\Z`, unlike `$`, is the very end.
ID_PATTERN = f"^[{ID_CHARACTERS}]+\\Z"


def is_valid_id(value: str) -> bool:
    return _ID.fullmatch(value) is not None
