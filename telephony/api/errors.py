"""Every error leaves as JSON with a defined status; nothing leaks a traceback."""
from __future__ import annotations

import logging

from flask import Flask, jsonify
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from ..credentials import CredentialError, UnknownCredential
from ..errors import ApiError, DomainError

log = logging.getLogger(__name__)

# Retry-After for a request the database could not serve (down, hung, or too slow).
DATABASE_RETRY_SECONDS = 5


def error_response(error: ApiError):
    response = jsonify(error.body())
    response.status_code = error.status
    for name, value in error.headers.items():
        response.headers[name] = value
    return response


def api_error(error: DomainError) -> ApiError:
    """The HTTP form of a domain error (status, code, the field at fault, Retry-After)."""
    fields = {error.field: error.message} if error.field else None
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else None
    return ApiError(error.status, error.message, code=error.code, fields=fields, headers=headers)


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def handle_api_error(error: ApiError):
        return error_response(error)

    @app.errorhandler(DomainError)
    def handle_domain_error(error: DomainError):
        return error_response(api_error(error))

    @app.errorhandler(UnknownCredential)
    def handle_unknown_credential(error: UnknownCredential):
        return error_response(ApiError(400, str(error), code="invalid_input", fields={error.field: str(error)}))

    @app.errorhandler(CredentialError)
    def handle_credential_error(error: CredentialError):
        log.error("credential store failure: %s", error)
        return error_response(ApiError(500, "Failed to retrieve API credentials", code="credentials_unavailable"))

    @app.errorhandler(OperationalError)
    @app.errorhandler(PoolTimeout)
    def handle_database_unavailable(error: Exception):
        # Unreachable, not answering within DB_CONNECT_TIMEOUT / DB_POOL_TIMEOUT, or a
        # statement or lock timeout: the request can be retried as it is.
        log.error("database unavailable: %s", error.__class__.__name__)
        return error_response(ApiError(503, "The service is briefly unavailable; retry shortly",
                                       code="unavailable", headers={"Retry-After": str(DATABASE_RETRY_SECONDS)}))

    @app.errorhandler(HTTPException)
    def handle_http_exception(error: HTTPException):
        messages = {404: "Not found", 405: "Method not allowed",
                    413: "Request body too large", 415: "Unsupported media type"}
        status = error.code or 500
        response = error_response(ApiError(status, messages.get(status, error.description or error.name)))
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response

    @app.errorhandler(Exception)
    def handle_unexpected(error: Exception):
        log.exception("unhandled error")
        return error_response(ApiError(500, "Unexpected server error", code="internal_error"))
