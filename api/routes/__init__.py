"""HTTP routes, one module per resource."""

from typing import Any

from modelcar.contract.wire import ErrorBody

_ERR = {"model": ErrorBody}
#: Error answers every route may give, documented in OpenAPI.
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {**_ERR, "description": "Unreadable request body"},
    401: {**_ERR, "description": "No or invalid token"},
    403: {**_ERR, "description": "The token's role does not allow this"},
    404: {**_ERR, "description": "Unknown model, version, alias, node, policy or token"},
    409: {**_ERR, "description": "Conflicts with the catalog's state"},
    413: {**_ERR, "description": "Request body too large"},
    422: {**_ERR, "description": "Invalid request"},
    503: {**_ERR, "description": "Database unavailable"},
}
