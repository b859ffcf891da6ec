"""Bearer-token authentication as a gRPC server interceptor.

`authorization: Bearer <token>` metadata is required on every SearchService RPC when a token is
configured, and on the write RPCs (AddImages, RemoveImages) whenever the server listens on a
non-loopback address (then without a configured token those RPCs are refused outright).
The standard health and reflection services stay open so that probes and `grpcurl list` work.
"""

from __future__ import annotations

import hmac
from pathlib import Path

import grpc

SERVICE_PREFIX = "/dffsearch.v1.SearchService/"
WRITE_METHODS = frozenset({SERVICE_PREFIX + "AddImages", SERVICE_PREFIX + "RemoveImages"})


class TokenFileError(ValueError):
    """The token file is missing, unreadable or empty."""


def read_token_file(path: str | Path) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise TokenFileError(f"cannot read token file {path}: {exc.strerror or exc}") from exc
    if not token:
        raise TokenFileError(f"token file {path} is empty; put the bearer token on its first line")
    if any(c.isspace() for c in token):
        raise TokenFileError(f"token file {path}: the token must be one word without spaces")
    return token


def is_loopback(host: str) -> bool:
    return host in {"127.0.0.1", "::1", "localhost", "[::1]"} or host.startswith("127.")


def _abort_handler(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    def unary(request, context):
        context.abort(code, message)

    def streaming(request_iterator, context):
        context.abort(code, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(streaming)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(unary)
    return grpc.unary_unary_rpc_method_handler(unary)


def token_problem(expected: bytes, metadata) -> str | None:
    """Why `metadata` ((key, value) pairs) does not carry `expected` (b"Bearer <token>"); None when it does."""
    supplied = dict(metadata or ()).get("authorization")
    if supplied is None:
        return (
            "missing 'authorization: Bearer <token>' metadata; pass --token-file to dff-query "
            "or token= to SearchClient"
        )
    if isinstance(supplied, str):
        supplied = supplied.encode()
    if not hmac.compare_digest(supplied, expected):
        return "wrong bearer token; check the token file"
    return None


class BearerTokenInterceptor(grpc.ServerInterceptor):
    def __init__(self, token: str | None, require_for_writes_without_token: bool = False) -> None:
        self._expected = f"Bearer {token}".encode() if token else None
        self._writes_locked = require_for_writes_without_token and token is None

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if not method.startswith(SERVICE_PREFIX):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        if self._expected is None:
            if self._writes_locked and method in WRITE_METHODS:
                return _abort_handler(
                    handler,
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"{method.rsplit('/', 1)[-1]} needs a bearer token on a server that listens on a "
                    "non-loopback address; restart dff-serve with --token-file FILE",
                )
            return handler
        problem = token_problem(self._expected, handler_call_details.invocation_metadata)
        if problem is not None:
            return _abort_handler(handler, grpc.StatusCode.UNAUTHENTICATED, problem)
        return handler
