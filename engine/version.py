"""The engine's version, read by the build backend and reported by `/health`."""

__version__ = "1.0.0"
