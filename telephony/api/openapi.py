"""Build the OpenAPI 3.1 document from the routes' `document(...)` metadata."""
from __future__ import annotations

import re

from flask import Flask
from pydantic import BaseModel

from ..carriers.registry import get_carriers
from ..errors import ApiError

_CONVERTER = re.compile(r"<(?:[a-z]+:)?([a-zA-Z_][a-zA-Z0-9_]*)>")

ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {"type": "string", "description": "Human-readable message; names the field for input errors."},
        "code": {"type": "string"},
        "fields": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "required": ["error", "code"],
}
SECURITY_SCHEMES = {
    "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                   "description": "Supabase access token (audience `authenticated`)."},
    "apiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                   "description": "Agency server API key (shown once at creation)."},
    "publicKeyAuth": {"type": "apiKey", "in": "header", "name": "x-api-access-key",
                      "description": "Agency public web-call key."},
}


def build_openapi(app: Flask) -> dict:
    schemas: dict[str, dict] = {"Error": ERROR_SCHEMA}
    paths: dict[str, dict] = {}

    def ref(model: type[BaseModel]) -> dict:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in schema.pop("$defs", {}).items():
            schemas[name] = definition
        schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        view = app.view_functions.get(rule.endpoint)
        meta = getattr(view, "_openapi", None)
        if meta is None:
            continue
        path = _CONVERTER.sub(r"{\1}", rule.rule)
        path_params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                       for name in _CONVERTER.findall(rule.rule)]
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            operation: dict = {
                "summary": meta["summary"], "tags": meta["tags"],
                "operationId": f"{rule.endpoint.replace('.', '_')}_{method.lower()}",
                "parameters": path_params + meta["parameters"],
                "responses": {},
            }
            if meta["security"]:
                operation["security"] = [{name: []} for name in meta["security"]]
            else:
                operation["security"] = []
            if meta["request"] is not None and method in ("POST", "PUT", "PATCH"):
                operation["requestBody"] = {"required": True,
                                            "content": {"application/json": {"schema": ref(meta["request"])}}}
            for status, (model, description) in sorted(meta["responses"].items()):
                response: dict = {"description": description}
                if model is not None:
                    response["content"] = {"application/json": {"schema": ref(model)}}
                elif status >= 400:
                    response["content"] = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
                operation["responses"][str(status)] = response
            for status, description in ((400, "Invalid input; `error` names the field."),
                                        (413, "Body larger than the limit.")):
                if "requestBody" in operation:
                    operation["responses"].setdefault(str(status), {
                        "description": description,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
            paths.setdefault(path, {})[method.lower()] = operation

    return {
        "openapi": "3.1.0",
        "info": {"title": "Telephony backbone API", "version": "1.0.0",
                 "description": f"Inbound and outbound calls for Ultravox agents over {_carrier_titles(app)}, "
                                "browser calls, and agency management."},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": SECURITY_SCHEMES},
    }


def _carrier_titles(app: Flask) -> str:
    """"Twilio, Telnyx and Plivo": the app's carriers."""
    titles = [carrier.title for carrier in get_carriers(app)]
    return " and ".join(filter(None, (", ".join(titles[:-1]), *titles[-1:])))


__all__ = ["build_openapi", "ApiError"]
