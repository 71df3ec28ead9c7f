"""Test helper: check an outgoing `requests.PreparedRequest` against the
Ultravox OpenAPI spec (tests/fixtures/ultravox-openapi.yaml, OpenAPI 3.0.3).

Usage (e.g. inside a `responses` callback, so every mocked request is checked):

    from tests.ultravox_openapi import validate_request

    def answer(request):
        validate_request(request)          # raises AssertionError on any problem
        return 201, {}, json.dumps(call)

Checks, in order:
  1. method + path exist in the spec (any host is accepted: the URL is rebased
     onto the spec's server, so a custom base URL such as http://127.0.0.1:9100
     still validates);
  2. the operation's security (apiKeyAuth = a non-empty `X-API-Key` header);
  3. every query parameter is declared by the operation (openapi-core alone
     ignores unknown ones);
  4. path/query parameter values and the JSON body validate against the
     operation's schemas (openapi-core);
  5. with `strict=True` (the default), no body object carries a property its
     schema does not declare. The spec never says `additionalProperties: false`,
     so without this a typo such as `firstSpeakerSetting` would pass silently.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import requests
import yaml
from openapi_core import OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest
from openapi_core.templating.paths.exceptions import (
    OperationNotFound,
    PathNotFound,
    ServerNotFound,
)

SPEC_PATH = Path(__file__).parent / "fixtures" / "ultravox-openapi.yaml"
API_KEY_HEADER = "X-API-Key"


@functools.lru_cache(maxsize=1)
def load_spec() -> dict[str, Any]:
    """The raw spec dict, parsed once per process (the YAML takes ~0.5 s)."""
    with SPEC_PATH.open(encoding="utf-8") as fh:
        spec = yaml.safe_load(fh)
    _patch_known_spec_defects(spec)
    return spec


@functools.lru_cache(maxsize=1)
def _openapi() -> OpenAPI:
    # Keeps openapi-core's own spec validation on: the only defect it finds is
    # patched in `_patch_known_spec_defects`, so anything new fails loudly.
    return OpenAPI.from_dict(load_spec())


def _patch_known_spec_defects(spec: dict[str, Any]) -> None:
    """Spec quirk: the `timeOfDayEnd` query parameter (4 list endpoints) has
    `format: time` with `default: '23:59:59.999999'`, which jsonschema's time
    checker rejects, so openapi-spec-validator refuses the whole document.
    The default is documentation only, so drop it."""
    for path_item in spec.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict):
                continue
            for param in operation.get("parameters", []):
                schema = param.get("schema", {})
                if schema.get("format") == "time" and "default" in schema:
                    del schema["default"]


def _server_url() -> str:
    return load_spec()["servers"][0]["url"].rstrip("/")


def _find_operation(method: str, path: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(template, path item, operation) for a concrete path, e.g.
    /api/calls/<uuid>/messages -> /api/calls/{call_id}/messages.
    Matching is exact (a trailing slash matters to the Django backend), and
    templates with fewer {placeholders} win, as literal segments should."""
    parts = path.split("/")
    candidates = []
    for template, item in load_spec()["paths"].items():
        tparts = template.split("/")
        if len(tparts) != len(parts) or method.lower() not in item:
            continue
        placeholders = 0
        for t, p in zip(tparts, parts):
            if t.startswith("{") and t.endswith("}") and p:
                placeholders += 1
            elif t != p:
                break
        else:
            candidates.append((placeholders, template, item))
    if not candidates:
        raise AssertionError(f"{method} {path}: no such operation in the Ultravox OpenAPI spec")
    _, template, item = min(candidates, key=lambda c: c[0])
    return template, item, item[method.lower()]


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    spec = load_spec()
    while "$ref" in schema:
        node: Any = spec
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def _declared_query_params(item: dict[str, Any], operation: dict[str, Any]) -> set[str]:
    params = [*item.get("parameters", []), *operation.get("parameters", [])]
    return {p["name"] for p in map(_resolve, params) if p.get("in") == "query"}


# Schemas that only declare a discriminator while the real message carries
# per-type fields the spec does not list: SendCallDataMessage is `{type}` but
# e.g. hang_up adds `message` and forced_agent_message adds `text`/`urgency`.
OPEN_SCHEMAS = frozenset({"#/components/schemas/SendCallDataMessage"})


def _is_open(schema: dict[str, Any]) -> bool:
    return schema.get("$ref") in OPEN_SCHEMAS


def _unknown_properties(instance: Any, schema: dict[str, Any], where: str) -> list[str]:
    """Paths of object properties that `schema` does not declare.

    Only objects whose (allOf-merged) schema lists `properties` and says
    nothing about `additionalProperties` are closed; maps
    (`additionalProperties: {...}`) and free-form objects (no `properties`,
    e.g. templateContext) stay open. oneOf/anyOf are not followed (request
    bodies in this spec only use them for nullable enums)."""
    if _is_open(schema):
        return []
    schema = _resolve(schema)
    if any(_is_open(sub) for sub in schema.get("allOf", [])):
        return []
    properties: dict[str, Any] = dict(schema.get("properties", {}))
    closed = "properties" in schema and "additionalProperties" not in schema
    additional = schema.get("additionalProperties")
    for sub in schema.get("allOf", []):
        sub = _resolve(sub)
        properties.update(sub.get("properties", {}))
        closed = closed or ("properties" in sub and "additionalProperties" not in sub)
        additional = additional if additional is not None else sub.get("additionalProperties")

    problems: list[str] = []
    if isinstance(instance, dict):
        for key, value in instance.items():
            if key in properties:
                problems += _unknown_properties(value, properties[key], f"{where}.{key}")
            elif isinstance(additional, dict):
                problems += _unknown_properties(value, additional, f"{where}.{key}")
            elif closed:
                problems.append(f"{where}.{key}")
    elif isinstance(instance, list) and "items" in schema:
        for index, value in enumerate(instance):
            problems += _unknown_properties(value, schema["items"], f"{where}[{index}]")
    return problems


def _describe(exc: Exception) -> str:
    """openapi-core wraps the useful jsonschema errors in __cause__."""
    cause = exc.__cause__
    errors = getattr(cause, "schema_errors", None) or getattr(exc, "schema_errors", None)
    if errors:
        details = "; ".join(
            f"{'/'.join(str(p) for p in err.absolute_path) or '<root>'}: {err.message}" for err in errors
        )
        return f"{exc} -> {details}"
    return f"{exc}" + (f" ({cause})" if cause else "")


def validate_request(request: requests.PreparedRequest, *, strict: bool = True) -> None:
    """Raise AssertionError with a readable message unless `request` is a valid
    call of an Ultravox API operation. `strict=False` allows body properties
    that the spec does not declare."""
    method = (request.method or "").upper()
    url = urlsplit(request.url or "")
    label = f"{method} {url.path}"
    template, item, operation = _find_operation(method, url.path)

    requires_key = any("apiKeyAuth" in requirement for requirement in operation.get("security", []))
    if requires_key and not request.headers.get(API_KEY_HEADER):
        raise AssertionError(f"{label}: missing or empty {API_KEY_HEADER} header (apiKeyAuth)")

    declared = _declared_query_params(item, operation)
    unknown = sorted({name for name, _ in parse_qsl(url.query, keep_blank_values=True)} - declared)
    if unknown:
        raise AssertionError(f"{label}: query parameters {unknown} are not declared for {template} "
                             f"(known: {sorted(declared)})")

    # openapi-core matches the host against `servers`; rebase so tests may use any base URL.
    server = urlsplit(_server_url())
    rebased = request.copy()
    rebased.url = urlunsplit((server.scheme, server.netloc, url.path, url.query, ""))
    try:
        _openapi().validate_request(RequestsOpenAPIRequest(rebased))
    except (PathNotFound, OperationNotFound, ServerNotFound) as exc:
        raise AssertionError(f"{label}: {exc}") from None
    except Exception as exc:  # openapi-core raises many validation error types
        raise AssertionError(f"{label}: {_describe(exc)}") from None

    if request.body and "requestBody" not in operation:
        raise AssertionError(f"{label}: sends a body but {template} takes none")
    if strict and request.body:
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        body = json.loads(request.body)  # already proven to be JSON by openapi-core
        extra = _unknown_properties(body, schema, "body")
        if extra:
            raise AssertionError(f"{label}: properties not declared in the spec: {extra}")
