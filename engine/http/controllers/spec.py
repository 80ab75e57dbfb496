"""`GET /openapi.yaml`: the hand-written spec the app is tested against, served as is."""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

from litestar import Response, get


@cache
def spec_text() -> str:
    """The installed copy (wheel) or, in a source checkout, `spec/openapi.yaml`."""
    packaged = resources.files("engine").joinpath("openapi.yaml")
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    return (Path(__file__).resolve().parents[3] / "spec" / "openapi.yaml").read_text(
        encoding="utf-8"
    )


@get("/openapi.yaml", media_type="application/yaml")
async def openapi_spec() -> Response[str]:
    return Response(spec_text(), media_type="application/yaml")
