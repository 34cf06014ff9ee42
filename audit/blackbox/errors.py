"""One-line errors for every way a hosted generator can fail (each a ``ValueError``: the command-line runner
prints the message on one line and exits with status 2)."""
from __future__ import annotations


class ServiceError(ValueError):
    """The service could not be used; ``kind`` names the failure class."""

    kind = "service"

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line


class ConfigError(ServiceError):
    kind = "config"


class AuthError(ServiceError):
    kind = "auth"


class QuotaError(ServiceError):
    kind = "quota"


class RefusedError(ServiceError):
    kind = "refused"


class BadResponseError(ServiceError):
    kind = "bad_response"


class ServiceTimeout(ServiceError):
    kind = "timeout"


class ServerError(ServiceError):
    kind = "server"


class UnreachableError(ServiceError):
    kind = "unreachable"


class BudgetError(ServiceError):
    kind = "budget"


class ReplayMiss(ServiceError):
    kind = "replay"
