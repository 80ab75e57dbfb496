"""HTTP layer: the Litestar app, its controllers and the error envelope."""

from engine.http.app import create_app

__all__ = ["create_app"]
