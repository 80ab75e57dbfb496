"""Start-up check of an SQLite store file: refuse one that is not an engine database.

Opened read-only and never created here (the store creates a missing file itself): a file
that is not SQLite, or an SQLite database of something else, would otherwise start an engine
that fails every call.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from engine.config import ConfigError

# Tables every engine database has had since the first release.
_ENGINE_TABLES = {"accounts", "ledger", "responses"}


def check_engine_file(path: Path) -> None:
    """Raise ConfigError (one line) unless `path` is missing, empty or an engine database.

    An SQLite database without tables (made by `sqlite3 file ''`) is accepted too: the
    engine creates its schema there.
    """
    if not path.exists() or path.stat().st_size == 0:
        return
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise ConfigError(f"{path} is not a usable SQLite database ({exc})") from None
    missing = _ENGINE_TABLES - {name for (name,) in rows}
    if rows and missing:
        raise ConfigError(
            f"{path} is an SQLite database but not an engine one (no {', '.join(sorted(missing))}"
            " table); point ENGINE_STORE_URL or --store at the engine's file"
        )
