"""Validate real responses against `spec/openapi.yaml`.

Every HTTP test routes its client through `SpecRecorder`, so each response any test sees is
checked against the operation and status the spec declares for it; an undeclared status or a
body that does not match fails the test that received it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_PATH = Path(__file__).resolve().parents[1] / "spec" / "openapi.yaml"
SPEC_URI = "urn:pluct-engine-spec"


@cache
def spec() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text())
    return loaded


@cache
def _registry() -> Registry:
    return Registry().with_resource(SPEC_URI, Resource(contents=spec(), specification=DRAFT202012))


def _pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


@cache
def _templates() -> list[tuple[re.Pattern[str], str]]:
    out = []
    for template in spec()["paths"]:
        pattern = re.sub(
            r"\{[^/}]+\}", r"[^/]+", re.escape(template).replace(r"\{", "{").replace(r"\}", "}")
        )
        out.append((re.compile(f"^{pattern}$"), template))
    return out


def operation_for(method: str, path: str) -> tuple[str, dict[str, Any]] | None:
    for pattern, template in _templates():
        if pattern.match(path):
            operation = spec()["paths"][template].get(method.lower())
            if operation is not None:
                return template, operation
    return None


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = spec()
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def check_response(
    method: str, path: str, status: int, body: bytes, content_type: str
) -> str | None:
    """None when the response matches the spec, else a one-line reason."""
    found = operation_for(method, path)
    if found is None:
        return None if status in (404, 405) else f"{method} {path} is not in the spec"
    template, operation = found
    responses = operation["responses"]
    key = str(status) if str(status) in responses else f"{str(status)[0]}XX"
    if key not in responses:
        return f"{method} {template}: status {status} is not declared"
    response = _resolve(responses[key])
    content = response.get("content", {})
    if not content:
        return None
    media = "application/json" if "json" in content_type else content_type.split(";")[0]
    if media not in content:
        return f"{method} {template} {status}: content type {content_type!r} not declared"
    if media != "application/json":
        return None
    import json

    document = json.loads(body)
    ref = responses[key].get("$ref")
    base = (
        _pointer("components", "responses", ref.rsplit("/", 1)[1])
        if ref
        else _pointer("paths", template, method.lower(), "responses", key)
    )
    schema = {"$ref": f"{SPEC_URI}#/{base}/content/application~1json/schema"}
    errors = sorted(
        Draft202012Validator(schema, registry=_registry()).iter_errors(document), key=str
    )
    if errors:
        first = errors[0]
        return f"{method} {template} {status}: {first.message} at {list(first.absolute_path)}"
    return None


@dataclass
class SpecRecorder:
    """Collects every (method, template, status) seen and every mismatch."""

    seen: set[tuple[str, str, int]] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)

    def observe(self, request: httpx.Request, response: httpx.Response, body: bytes) -> None:
        found = operation_for(request.method, request.url.path)
        if found:
            self.seen.add((request.method, found[0], response.status_code))
        problem = check_response(
            request.method,
            request.url.path,
            response.status_code,
            body,
            response.headers.get("content-type", ""),
        )
        if problem:
            self.problems.append(problem)

    def sync_hook(self) -> Callable[[httpx.Response], None]:
        def hook(response: httpx.Response) -> None:
            response.read()
            self.observe(response.request, response, response.content)

        return hook

    def async_hook(self) -> Callable[[httpx.Response], Any]:
        async def hook(response: httpx.Response) -> None:
            await response.aread()
            self.observe(response.request, response, response.content)

        return hook
