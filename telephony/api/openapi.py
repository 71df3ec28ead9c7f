"""Build the OpenAPI 3.1 document from the routes' `document(...)` metadata.

Every route of the app is described (tests/test_openapi_complete.py walks the URL map),
with the answers every route of its kind can give added here once: 401/403 for
authenticated routes, 404 for their path parameters, 503 when the database cannot
serve them. The events agencies receive at their endpoints are the document's
`webhooks` (api/agency_events.py).
"""
from __future__ import annotations

import re
from typing import Any

from flask import Flask
from pydantic import BaseModel

from ..carriers.registry import get_carriers
from ..errors import ApiError
from .agency_events import DELIVERY_RESPONSES, EVENT_MODELS, EVENT_SUMMARIES, SIGNATURE_HEADERS
from .schema import Body

_CONVERTER = re.compile(r"<(?:[a-z]+:)?([a-zA-Z_][a-zA-Z0-9_]*)>")
_PATH_FORMATS = {"uuid": {"type": "string", "format": "uuid"}, "int": {"type": "integer"}}

ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {"type": "string", "description": "Human-readable message; names the field for input errors."},
        "code": {"type": "string"},
        "fields": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "required": ["error", "code"],
}
ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again", "schema": {"type": "integer"}}}
SECURITY_SCHEMES = {
    "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                   "description": "Supabase access token (audience `authenticated`)."},
    "apiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                   "description": "Agency server API key (shown once at creation)."},
    "publicKeyAuth": {"type": "apiKey", "in": "header", "name": "x-api-access-key",
                      "description": "Agency public web-call key."},
}
# What every operation of a kind can answer, unless its own description says more.
UNAUTHENTICATED = "Missing, malformed, expired or revoked credentials"
FORBIDDEN = "Authenticated, but the role or the API key's scopes do not allow this (or the user has no agency)"
NOT_FOUND = "Not found, or another agency's (the same answer)"
DATABASE_UNAVAILABLE = "The database could not serve the request; retry after Retry-After"
INVALID_INPUT = "Invalid input; `error` names the field."
TOO_LARGE = "Body larger than the limit."


def build_openapi(app: Flask) -> dict:
    schemas: dict[str, dict] = {"Error": ERROR_SCHEMA}
    paths: dict[str, dict] = {}
    operation_ids: set[str] = set()

    def ref(model: type[BaseModel]) -> dict:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in schema.pop("$defs", {}).items():
            schemas[name] = definition
        schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    def query_parameters(model: type[BaseModel]) -> list[dict]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in schema.pop("$defs", {}).items():
            schemas[name] = definition
        required = set(schema.get("required", []))
        parameters = []
        for name, prop in schema.get("properties", {}).items():
            prop = _without_null(prop)
            description = prop.pop("description", None)
            prop.pop("title", None)
            parameter = {"name": name, "in": "query", "required": name in required, "schema": prop}
            if description:
                parameter["description"] = description
            parameters.append(parameter)
        return parameters

    def content(described: type[BaseModel] | Body) -> dict:
        if isinstance(described, Body):
            return {described.media_type: {"schema": described.schema}}
        return {"application/json": {"schema": ref(described)}}

    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        view = app.view_functions.get(rule.endpoint)
        meta = getattr(view, "_openapi", None)
        if meta is None:
            continue  # tests/test_openapi_complete.py names every route left out
        path = _CONVERTER.sub(r"{\1}", rule.rule)
        path_params = [{"name": name, "in": "path", "required": True,
                        "schema": dict(_PATH_FORMATS.get(converter, {"type": "string"}))}
                       for name, converter in _path_converters(rule)]
        query_params = query_parameters(meta["query"]) if meta["query"] is not None else []
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            operation: dict[str, Any] = {
                "summary": meta["summary"], "tags": meta["tags"],
                "operationId": _operation_id(rule, method, operation_ids),
                "parameters": path_params + query_params + meta["parameters"],
                "responses": {},
            }
            if meta["description"]:
                operation["description"] = meta["description"]
            operation["security"] = [{name: []} for name in meta["security"]]
            if method in ("POST", "PUT", "PATCH", "DELETE"):
                bodies: dict[str, Any] = {}
                if meta["request"] is not None and method != "DELETE":
                    bodies.update(content(meta["request"]))
                for body in meta["bodies"]:
                    bodies.update(content(body))
                if bodies:
                    operation["requestBody"] = {"required": True, "content": bodies}
            for status, (described, description) in sorted(meta["responses"].items()):
                response: dict = {"description": description}
                if described is not None:
                    response["content"] = content(described)
                elif status >= 400:
                    response["content"] = ERROR_CONTENT
                operation["responses"][str(status)] = response
            _add_common_answers(operation, validated=meta["request"] is not None or meta["query"] is not None,
                                authenticated=bool(meta["security"]), has_path_params=bool(path_params))
            paths.setdefault(path, {})[method.lower()] = operation

    return {
        "openapi": "3.1.0",
        "info": {"title": "Telephony backbone API", "version": "1.0.0",
                 "description": f"Inbound and outbound calls for Ultravox agents over {_carrier_titles(app)}, "
                                "browser calls, and agency management. The `webhooks` are the signed events "
                                "an agency's endpoints receive (`/api/v1/event-endpoints`)."},
        "paths": paths,
        "webhooks": _agency_events(ref),
        "components": {"schemas": schemas, "securitySchemes": SECURITY_SCHEMES},
    }


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is absent or a string: pydantic's `X | None = None` is just X."""
    schema = dict(schema)
    options = schema.get("anyOf")
    if isinstance(options, list):
        kept = [option for option in options if option != {"type": "null"}]
        if len(kept) == 1:
            del schema["anyOf"]
            schema = {**kept[0], **schema}
    if schema.get("default", ...) is None:
        del schema["default"]
    return schema


def _add_common_answers(operation: dict[str, Any], *, validated: bool, authenticated: bool,
                        has_path_params: bool) -> None:
    responses = operation["responses"]

    def add(status: int, description: str) -> None:
        responses.setdefault(str(status), {"description": description, "content": ERROR_CONTENT})

    if validated:
        add(400, INVALID_INPUT)
    if "requestBody" in operation:
        add(413, TOO_LARGE)
    if authenticated:
        add(401, UNAUTHENTICATED)
        add(403, FORBIDDEN)
        if has_path_params:
            add(404, NOT_FOUND)
        add(503, DATABASE_UNAVAILABLE)
    for retried in ("429", "503"):
        if retried in responses and responses[retried].get("content") == ERROR_CONTENT:
            responses[retried] = {**responses[retried], "headers": RETRY_AFTER}


def _agency_events(ref: Any) -> dict[str, dict]:
    """One webhook per event type: what the agency's endpoint receives, signed."""
    webhooks: dict[str, dict] = {}
    for event_type, model in EVENT_MODELS.items():
        webhooks[event_type] = {"post": {
            "summary": EVENT_SUMMARIES[event_type], "tags": ["agency events"],
            "operationId": f"event_{event_type.replace('.', '_')}",
            "parameters": SIGNATURE_HEADERS,
            "requestBody": {"required": True, "content": {"application/json": {"schema": ref(model)}}},
            "responses": DELIVERY_RESPONSES,
        }}
    return webhooks


def _operation_id(rule: Any, method: str, taken: set[str]) -> str:
    """endpoint_method ("calls_get_call_get"); a view served by two rules (/docs/ and
    /docs/<path>) gets its path variables added for the second one."""
    operation_id = f"{rule.endpoint.replace('.', '_')}_{method.lower()}"
    if operation_id in taken:
        variables = "_".join(name for name, _ in _path_converters(rule))
        operation_id = f"{rule.endpoint.replace('.', '_')}_{variables}_{method.lower()}"
    taken.add(operation_id)
    return operation_id


def _path_converters(rule: Any) -> list[tuple[str, str]]:
    """(name, converter) of each variable of the rule, in order: ("call_id", "uuid")."""
    return [(name, converter or "default") for converter, _, name in
            re.findall(r"<(?:([a-z]+)(\([^)]*\))?:)?([a-zA-Z_][a-zA-Z0-9_]*)>", rule.rule)]


def _carrier_titles(app: Flask) -> str:
    """"Twilio, Telnyx and Plivo": the app's carriers."""
    titles = [carrier.title for carrier in get_carriers(app)]
    return " and ".join(filter(None, (", ".join(titles[:-1]), *titles[-1:])))


__all__ = ["build_openapi", "ApiError"]
