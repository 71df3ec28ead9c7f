"""Request parsing and the OpenAPI description of each route.

Every JSON endpoint parses its body with `parse_body(Model)`; the pydantic
model both validates (strict types, unknown fields refused, sizes bounded) and
documents the request in /openapi.json, so the two cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from flask import jsonify, request
from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import ApiError

M = TypeVar("M", bound=BaseModel)


class RequestModel(BaseModel):
    # strict: "5" is not an int and 5 is not a string; extra="forbid": a typo
    # in a field name is an error, not silently ignored.
    model_config = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=True)


class ResponseModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


def render(model: type[BaseModel], obj: Any, status: int = 200):
    """Validate a response through its documented model, then send it as JSON."""
    return jsonify(model.model_validate(obj).model_dump(mode="json")), status


def validation_error(exc: ValidationError) -> ApiError:
    fields: dict[str, str] = {}
    for error in exc.errors(include_url=False):
        location = ".".join(str(part) for part in error["loc"]) or "body"
        if error["type"] == "json_invalid":
            location, message = "body", "must be valid JSON"
        elif error["type"] in ("model_type", "model_attributes_type", "dict_type") and location == "body":
            message = "must be a JSON object"
        else:
            message = error["msg"]
        fields.setdefault(location, message)
    first_field, first_message = next(iter(fields.items()))
    return ApiError(400, f"{first_field}: {first_message}", code="invalid_input", fields=fields)


def parse_body(model: type[M]) -> M:
    raw = request.get_data(cache=True)
    if not raw.strip():
        raw = b"{}" if request.method in ("DELETE",) else raw
    try:
        parsed = model.model_validate_json(raw or b"null")
    except ValidationError as exc:
        raise validation_error(exc) from None
    _reject_nul(parsed.model_dump(), "")
    return parsed


def parse_query(model: type[M]) -> M:
    try:
        # Query values are strings; allow pydantic's lax conversion here only.
        parsed = model.model_validate(request.args.to_dict(), strict=False)
    except ValidationError as exc:
        raise validation_error(exc) from None
    _reject_nul(parsed.model_dump(), "")
    return parsed


def _reject_nul(value: Any, location: str) -> None:
    """PostgreSQL text cannot hold NUL characters; refuse them as input errors
    (400 naming the field) instead of failing at INSERT time with a 500."""
    if isinstance(value, str):
        if "\x00" in value:
            field = location or "body"
            raise ApiError(400, f"{field}: must not contain NUL characters", code="invalid_input",
                           fields={field: "must not contain NUL characters"})
    elif isinstance(value, dict):
        for key, item in value.items():
            _reject_nul(key, location)
            _reject_nul(item, f"{location}.{key}" if location else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _reject_nul(item, f"{location}.{index}" if location else str(index))


F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Body:
    """A request or response body that is not a JSON pydantic model: CSV, form fields,
    XML, Prometheus text. `schema` is its JSON schema as OpenAPI 3.1 writes it."""
    media_type: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})


Described = type[BaseModel] | Body | None


def document(*, summary: str, tags: list[str], request_model: type[BaseModel] | None = None,
             responses: dict[int, tuple[Described, str]] | None = None,
             security: list[str] | None = None, parameters: list[dict] | None = None,
             query_model: type[BaseModel] | None = None, bodies: list[Body] | None = None,
             description: str | None = None) -> Callable[[F], F]:
    """Attach the OpenAPI description of a view; /openapi.json collects them.

    `query_model` is the model the view gives `parse_query` (its fields become the query
    parameters); `bodies` are request bodies other than `request_model`'s JSON (a CSV
    upload, a carrier's form post). Secured operations get their 401/403 answers, and
    operations with path parameters their 404, without listing them here."""

    def decorator(view: F) -> F:
        view._openapi = {  # type: ignore[attr-defined]
            "summary": summary, "tags": tags, "request": request_model, "responses": responses or {},
            "security": security if security is not None else ["bearerAuth", "apiKeyAuth"],
            "parameters": parameters or [], "query": query_model, "bodies": bodies or [],
            "description": description,
        }
        return view

    return decorator
