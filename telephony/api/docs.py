"""The API explorer at /docs: Swagger UI over /openapi.json.

The flask-swagger-ui package ships Swagger UI's files and this serves them from our
own origin (nothing is loaded from a CDN, so the explorer works offline and under a
strict network policy). "Try it out" sends requests to this same service.
"""
from __future__ import annotations

from flask.blueprints import BlueprintSetupState
from flask_swagger_ui import get_swaggerui_blueprint

from .schema import Body, document

# validatorUrl None: Swagger UI would otherwise show a badge loaded from validator.swagger.io
# (it skips that only for documents on localhost); the document is validated by the tests.
bp = get_swaggerui_blueprint("/docs", "/openapi.json", blueprint_name="docs",
                             config={"app_name": "Telephony backbone API", "displayOperationId": False,
                                     "tryItOutEnabled": False, "validatorUrl": None})


@bp.record
def _describe(state: BlueprintSetupState) -> None:
    """The package defines the view; its description for /openapi.json is added here
    (the view is a fresh function per blueprint, so this changes nothing else)."""
    document(summary="API explorer (Swagger UI): the page at /docs/, its scripts and styles under /docs/",
             tags=["operations"], security=[],
             responses={200: (Body("text/html"), "The page, or one of its files (JavaScript, CSS, images)"),
                        404: (None, "No such file")})(state.app.view_functions["docs.show"])
