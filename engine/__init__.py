"""Pluct Business Engine: credits, vended transcription tokens and a TTTranscribe proxy.

Layers, outermost first: `engine.http` (Litestar controllers) → `engine.domain` (the rules)
→ `engine.store` (one `Store` protocol) → its backends (`sqlite`, `redis`).
"""

from engine.config import Settings
from engine.http.app import create_app
from engine.store import Store, store_from_url
from engine.version import __version__

__all__ = ["Settings", "Store", "__version__", "create_app", "store_from_url"]
