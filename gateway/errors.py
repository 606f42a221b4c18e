"""One exception tree for the gateway; `gateway.api.errors` maps it to the OpenAI envelope.

GatewayError
 ├── ConfigError              start-up: a bad setting, named with its key and file
 ├── ModelLoadError           start-up: a model or adapter that cannot be loaded
 ├── ClientError              the request is at fault (4xx)
 │    ├── InvalidRequest           400 invalid_request_error
 │    │    ├── UnsupportedParameter     400, names the parameter
 │    │    └── ContextLengthExceeded    400 context_length_exceeded
 │    ├── AuthenticationFailed     401
 │    ├── PermissionDenied         403
 │    ├── ModelNotFound            404 model_not_found
 │    ├── PayloadTooLarge          413
 │    └── RateLimited              429 with Retry-After
 └── ServiceError             the gateway or a dependency is at fault (5xx)
      ├── Overloaded               503 with Retry-After
      ├── NotReady                 503
      ├── EngineFailure            500
      └── EscalationFailed         502 (only when a policy says `on_escalation_error: error`)
"""

from __future__ import annotations


class GatewayError(Exception):
    status_code: int = 500
    error_type: str = "server_error"
    code: str = "internal"  # every error carries a code; subclasses name a closer one

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class ConfigError(GatewayError):
    """A setting or policy file is wrong; start-up stops with this one message."""

    code = "config_error"


class ModelLoadError(GatewayError):
    """The base model, its tokenizer or the adapter could not be loaded."""

    code = "model_load_error"


class ClientError(GatewayError):
    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class InvalidRequest(ClientError):
    code = "invalid_value"


class UnsupportedParameter(InvalidRequest):
    code = "unsupported_parameter"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class AuthenticationFailed(ClientError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(ClientError):
    status_code = 403
    error_type = "permission_error"
    code = "permission_denied"


class ModelNotFound(ClientError):
    status_code = 404
    code = "model_not_found"


class PayloadTooLarge(ClientError):
    status_code = 413
    code = "request_too_large"


class RateLimited(ClientError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooManyFailedAuthentications(RateLimited):
    code = "too_many_failed_authentications"


class ServiceError(GatewayError):
    status_code = 500
    error_type = "server_error"
    code = "server_error"


class Overloaded(ServiceError):
    status_code = 503
    code = "overloaded"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotReady(ServiceError):
    status_code = 503
    code = "not_ready"


class EngineFailure(ServiceError):
    code = "engine_error"


class EscalationFailed(ServiceError):
    status_code = 502
    error_type = "upstream_error"
    code = "escalation_failed"
