"""troupe's small exception hierarchy; the HTTP edge translates each into the OpenAI error shape."""

from __future__ import annotations


class TroupeError(Exception):
    """Base of every error troupe raises on purpose. `status` and `code` drive the HTTP translation."""

    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def __reduce__(self):  # survives pickling across Ray actor boundaries
        return (_rebuild, (type(self), self.message, self.param))


def _rebuild(cls: type[TroupeError], message: str, param: str | None) -> TroupeError:
    return cls(message, param=param)


class ConfigError(TroupeError):
    """Bad configuration found at start-up (settings, persona files, database)."""

    status = 500
    type = "server_error"
    code = "configuration_error"


class NotConfigured(TroupeError):
    """A platform route is called while its credentials are not configured."""

    status = 503
    type = "server_error"
    code = "not_configured"


class PersonaNotFound(TroupeError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class BudgetExceeded(TroupeError):
    status = 429
    type = "insufficient_quota"
    code = "budget_exceeded"


class ModelUnavailable(TroupeError):
    status = 503
    type = "server_error"
    code = "model_unavailable"


class SessionLimit(TroupeError):
    status = 503
    type = "server_error"
    code = "at_capacity"


class StoreUnavailable(TroupeError):
    status = 503
    type = "server_error"
    code = "store_unavailable"


class InvalidRequest(TroupeError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class TroupeUnavailable(TroupeError):
    """troupe cannot take the turn right now (restarting, every session mid-turn); try again shortly."""

    status = 503
    type = "server_error"
    code = "unavailable"
