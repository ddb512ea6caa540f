"""The one error tree of the gateway, and how each error is shown to an OpenAI client.

Every failure a client can see is a :class:`TurnoutError`; one exception handler renders it as the
OpenAI envelope ``{"error": {"message", "type", "param", "code"}}`` with the status the class carries.
Upstream failures are mapped to these classes with ``raise ... from`` so the cause stays in the logs
while the client sees a clear, bounded message and never a traceback.

    TurnoutError                      500 internal_error (only for bugs: never raised on purpose)
    +-- InvalidRequest                400 invalid_request_error  (malformed JSON, schema errors)
    |   +-- InvalidAdapter            400 invalid_request_error  (adapter files fail validation)
    |   +-- ConfigRejected            400 invalid_request_error  (a reload found the new file invalid)
    |   +-- UnsupportedEndpoint       400 invalid_request_error  (the target does not serve this endpoint)
    +-- Unauthenticated               401 invalid_request_error  code invalid_api_key
    +-- PermissionDenied              403 invalid_request_error  code permission_denied
    +-- RequestTooLarge               413 invalid_request_error
    +-- ProtocolRefused               400 invalid_request_error  (the HTTP layer's own refusals, before any route:)
    |   +-- RequestTimeout            408 invalid_request_error  (headers or body too slow to arrive)
    |   +-- UrlTooLong                414 invalid_request_error
    |   +-- HeadersTooLarge           431 invalid_request_error
    |   +-- MethodNotImplemented      501 invalid_request_error  (a method HTTP's parser does not know)
    |   +-- ConnectionsExhausted      503 service_unavailable    (server.max_connections open already)
    +-- ClientLeft                    499 (nobody to tell: the client left before its request was whole)
    +-- ModelNotFound                 404 invalid_request_error  code model_not_found
    +-- RouteNotFound                 404 invalid_request_error  (unknown URL)
    +-- MethodNotAllowed              405 invalid_request_error
    +-- CapacityExhausted             503 service_unavailable    (every adapter slot busy)
    +-- Overloaded                    503 service_unavailable    (the gateway's own work is full: retry-after)
    +-- QuotaExceeded                 429 requests|tokens|insufficient_quota  (a key's or tenant's quota: retry-after)
    +-- QuotaStoreUnavailable         503 service_unavailable    (Redis unreachable, limits.on_store_error: closed)
    +-- DeadlineExceeded              504 deadline_exceeded      (no first byte within limits.first_byte_timeout_s)
    +-- RetrievalUnavailable          503 service_unavailable    (vector store or embedder failed)
    +-- CollectionNotFound            404 invalid_request_error
    +-- UpstreamError                 502 upstream_error         (bad answer from a backend)
        +-- UpstreamRejected          4xx as the upstream said   (the backend refused the request)
        +-- UpstreamUnavailable       503 upstream_unavailable   (cannot connect)
        +-- UpstreamTimeout           504 upstream_timeout
        +-- UpstreamModelMissing      502 upstream_error         (backend forgot a model; healed by reload)

Library exceptions and upstream statuses are mapped to these classes in one table,
:mod:`gateway.failures`; the envelope is written by :meth:`TurnoutError.body` alone.

Errors whose class says ``falls_back`` (upstream failures except ``UpstreamRejected``, an invalid
adapter, a target that does not serve the endpoint, exhausted adapter capacity) let the dispatcher try
the decision's next fallback target, as long as nothing has been sent to the client yet.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, ClassVar

import orjson


class TurnoutError(Exception):
    """Base of every error the gateway renders to a client."""

    status: int = 500  # the class's status; an instance may carry another (``status=``), as relayed ones do
    error_type: ClassVar[str] = "internal_error"
    default_code: ClassVar[str | None] = None
    falls_back: ClassVar[bool] = False  # may the next fallback target be tried instead?

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s  # the error's own: sent as retry-after, kept by its twins
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        if status is not None:
            self.status = status
        self.headers: dict[str, str] = {}  # extra response headers, such as the route it was sent on
        if retry_after_s is not None:
            self.headers["retry-after"] = str(retry_after_s)
        self.counted = False  # already counted in the error metrics (by the request's ledger)

    def for_another_request(self) -> TurnoutError:
        """The same error, as a new instance for another request that shares its cause (a load several
        requests waited on): its own headers, counted on its own."""
        twin = copy.copy(self)
        twin.headers = {} if self.retry_after_s is None else {"retry-after": str(self.retry_after_s)}
        twin.counted = False
        return twin

    def add_headers(self, headers: Mapping[str, str]) -> None:
        """Response headers to send with the envelope (the route it was sent on, what it cost)."""
        self.headers.update(headers)

    def claim_count(self) -> bool:
        """True only the first time it is asked: whoever gets True counts the error, so it is counted once
        however many layers see it go by."""
        if self.counted:
            return False
        self.counted = True
        return True

    def envelope(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}

    def body(self) -> bytes:
        """The OpenAI error envelope, serialised: the one place it is written."""
        return orjson.dumps(self.envelope())


class InvalidRequest(TurnoutError):
    status = 400
    error_type = "invalid_request_error"


class InvalidAdapter(InvalidRequest):
    default_code = "invalid_adapter"
    falls_back = True


class ConfigRejected(InvalidRequest):
    default_code = "invalid_config"


class UnsupportedEndpoint(InvalidRequest):
    """The chosen target cannot serve this endpoint at all (a server without the Responses API): the
    request is fine, so another target in the chain may take it; when none does, the client learns which
    target and which endpoint, not a server error."""

    default_code = "unsupported_endpoint"
    falls_back = True


class Unauthenticated(TurnoutError):
    status = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"


class PermissionDenied(TurnoutError):
    status = 403
    error_type = "invalid_request_error"
    default_code = "permission_denied"


class CollectionNotFound(TurnoutError):
    status = 404
    error_type = "invalid_request_error"
    default_code = "collection_not_found"


class RetrievalUnavailable(TurnoutError):
    status = 503
    error_type = "service_unavailable"
    default_code = "retrieval_unavailable"
    falls_back = True


class RequestTooLarge(TurnoutError):
    status = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"


class ProtocolRefused(TurnoutError):
    """Refused by the HTTP layer before any route saw the request (a malformed request line or headers); the
    connection is closed after the envelope."""

    status = 400
    error_type = "invalid_request_error"
    default_code = "invalid_http_request"


class RequestTimeout(ProtocolRefused):
    status = 408
    default_code = "request_timeout"


class UrlTooLong(ProtocolRefused):
    status = 414
    default_code = "url_too_long"


class HeadersTooLarge(ProtocolRefused):
    status = 431
    default_code = "headers_too_large"


class MethodNotImplemented(ProtocolRefused):
    status = 501
    default_code = "method_not_implemented"


class ConnectionsExhausted(ProtocolRefused):
    status = 503
    error_type = "service_unavailable"
    default_code = "too_many_connections"


class ClientLeft(TurnoutError):
    """The client closed the connection before sending its whole request: recorded as a 499 (nginx's
    "client closed request"), never counted as an error answered, since no one is there to read it."""

    status = 499
    error_type = "invalid_request_error"
    default_code = "client_closed_request"


class ModelNotFound(TurnoutError):
    status = 404
    error_type = "invalid_request_error"
    default_code = "model_not_found"


class RouteNotFound(TurnoutError):
    status = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class MethodNotAllowed(TurnoutError):
    status = 405
    error_type = "invalid_request_error"
    default_code = "method_not_allowed"


class CapacityExhausted(TurnoutError):
    status = 503
    error_type = "service_unavailable"
    default_code = "adapter_capacity_exhausted"
    falls_back = True


class Overloaded(TurnoutError):
    """The gateway has as many requests in its own work (parsing, routing, embedding) as it takes, and as
    many waiting as it lets wait: refused at once, with ``retry-after``, rather than queued silently."""

    status = 503
    error_type = "service_unavailable"
    default_code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, retry_after_s=retry_after_s)


class QuotaExceeded(TurnoutError):
    """A key or tenant used what its quota allows: 429 with ``retry-after`` (when the window or period that
    is full ends), typed as OpenAI types its own (``requests``, ``tokens``; ``insufficient_quota`` for money)."""

    status = 429
    error_type = "requests"
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, kind: str, retry_after_s: int) -> None:
        code = "insufficient_quota" if kind == "insufficient_quota" else None
        super().__init__(message, code=code, retry_after_s=max(1, retry_after_s))
        self.error_type = kind  # type: ignore[misc]  # per instance: requests, tokens or insufficient_quota


class QuotaStoreUnavailable(TurnoutError):
    status = 503
    error_type = "service_unavailable"
    default_code = "quota_store_unavailable"


class DeadlineExceeded(TurnoutError):
    """No first byte of an answer within the request's deadline (``limits.first_byte_timeout_s``)."""

    status = 504
    error_type = "deadline_exceeded"
    default_code = "first_byte_deadline_exceeded"


class UpstreamError(TurnoutError):
    status = 502
    error_type = "upstream_error"
    default_code = "upstream_error"
    falls_back = True


class UpstreamRejected(UpstreamError):
    """The backend answered 4xx: the client's request is at fault, so it is relayed, not retried."""

    error_type = "invalid_request_error"
    default_code = "upstream_rejected"
    falls_back = False

    def __init__(self, message: str, *, status: int, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message, param=param, code=code, status=status)  # the upstream's own status


class UpstreamUnavailable(UpstreamError):
    status = 503
    error_type = "upstream_unavailable"
    default_code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    error_type = "upstream_timeout"
    default_code = "upstream_timeout"


class UpstreamModelMissing(UpstreamError):
    default_code = "upstream_model_missing"
