"""Domain errors. Services raise these; each app maps them to one envelope:
`{"error": {"message", "type", "param", "code"}}` (OpenAI's shape)."""

from __future__ import annotations


class AlignError(Exception):
    status_code = 500
    error_type = "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def envelope(self) -> dict[str, dict[str, str | None]]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(AlignError):
    status_code = 400
    error_type = "invalid_request_error"


class Unauthorized(AlignError):
    status_code = 401
    error_type = "authentication_error"


class Forbidden(AlignError):
    status_code = 403
    error_type = "permission_error"


class NotFound(AlignError):
    status_code = 404
    error_type = "not_found_error"


class Conflict(AlignError):
    status_code = 409
    error_type = "conflict_error"


class PayloadTooLarge(AlignError):
    status_code = 413
    error_type = "invalid_request_error"


class TooManyRequests(AlignError):
    """429; the response carries `Retry-After: retry_after` (seconds)."""

    status_code = 429
    error_type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after: int, param: str | None = None,
                 code: str | None = None):
        super().__init__(message, param=param, code=code)
        self.retry_after = retry_after


class ServiceUnavailable(AlignError):
    status_code = 503
    error_type = "service_unavailable"


class DatabaseNotMigrated(AlignError):
    """The schema is missing or behind the code's migrations."""
