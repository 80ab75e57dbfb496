"""The hand-written spec is valid, served by the app, and names exactly the app's routes."""

from __future__ import annotations

from litestar.testing import TestClient
from openapi_spec_validator import validate

from engine import create_app
from engine.http.app import route_operations
from tests.conftest import make_settings
from tests.spec_check import SPEC_PATH, check_response, spec


def test_spec_is_valid_openapi_3_1() -> None:
    validate(spec())
    assert spec()["openapi"].startswith("3.1")


def test_app_routes_and_spec_operations_are_the_same_set(tmp_path: object) -> None:
    app = create_app(make_settings(f"sqlite:///{tmp_path}/x.db"))
    declared = {
        (method.upper(), path)
        for path, item in spec()["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    }
    assert route_operations(app) == declared


def test_app_serves_the_spec_file_verbatim(tmp_path: object) -> None:
    with TestClient(create_app(make_settings(f"sqlite:///{tmp_path}/x.db"))) as client:
        response = client.get("/openapi.yaml")
    assert response.status_code == 200
    assert response.text == SPEC_PATH.read_text()


def test_checker_rejects_a_body_that_breaks_the_spec() -> None:
    bad = b'{"ok":true,"userId":"u","balance":2.5,"main":2,"bonus":0,"updatedAt":"x"}'
    assert check_response("GET", "/v1/credits/balance", 200, bad, "application/json")
    assert check_response("GET", "/v1/credits/balance", 418, b"{}", "application/json")


def test_conformance_ships_the_same_spec() -> None:
    shipped = SPEC_PATH.parents[1] / "conformance" / "src" / "pluct_conformance" / "openapi.yaml"
    assert shipped.read_text() == SPEC_PATH.read_text(), "copy spec/openapi.yaml into conformance"
