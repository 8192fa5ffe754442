"""gRPC over HTTP/2, the parts a proxy needs (the "gRPC over HTTP2" protocol spec, PROTOCOL-HTTP2.md in the grpc
repository, and its "HTTP to gRPC Status Code Mapping", http-grpc-status-mapping.md):

- `is_grpc(content_type)`: a gRPC request (`application/grpc`, `application/grpc+proto`, `application/grpc;...`);
- `parse_timeout(value)`: the `grpc-timeout` header (at most 8 digits and a unit H M S m u n) in seconds, or None;
- `status_for_http(status, outcome)`: the gRPC status a locally generated error maps to;
- `local_error(...)`: the trailers-only answer (HTTP 200, `grpc-status`, `grpc-message`) gRPC clients can read;
- `service_method(path)`: (`rpc.service`, `rpc.method`) from `/package.Service/Method`;
- `format_timeout`, `propagate_timeout`: the remaining deadline forwarded upstream as `grpc-timeout`.
"""

from __future__ import annotations

import math
from urllib.parse import quote

# gRPC status codes (grpc/doc/statuscodes.md)
OK = 0
CANCELLED = 1
UNKNOWN = 2
INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4
NOT_FOUND = 5
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14
UNAUTHENTICATED = 16

_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}

# http-grpc-status-mapping.md; 504 and our own timeouts are the deadline's (what the client waited for)
_BY_HTTP = {400: INTERNAL, 401: UNAUTHENTICATED, 403: PERMISSION_DENIED, 404: UNIMPLEMENTED, 408: DEADLINE_EXCEEDED,
            413: RESOURCE_EXHAUSTED, 429: UNAVAILABLE, 431: RESOURCE_EXHAUSTED, 502: UNAVAILABLE,
            503: UNAVAILABLE, 504: DEADLINE_EXCEEDED}


def is_grpc(content_type: str | None) -> bool:
    if not content_type or not content_type.startswith("application/grpc"):
        return False
    rest = content_type[len("application/grpc"):]
    return not rest or rest[0] in "+;"


def parse_timeout(value: str | None) -> float | None:
    """`grpc-timeout` → seconds; None when absent or malformed (PROTOCOL-HTTP2.md: TimeoutValue is 1 to 8 ASCII
    digits, TimeoutUnit one of H M S m u n). A malformed one is ignored, as grpc-go and grpc-core do."""
    if not value or len(value) < 2 or len(value) > 9:
        return None
    digits, unit = value[:-1], value[-1]
    if unit not in _UNITS or not digits.isascii() or not digits.isdigit():
        return None
    return int(digits) * _UNITS[unit]


def format_timeout(seconds: float) -> str:
    """Seconds → a `grpc-timeout` value: the finest unit whose value fits the 8 digits PROTOCOL-HTTP2.md allows,
    rounded up (a proxy must not shorten the deadline by rounding; at least 1n)."""
    for unit, scale in (("n", 1e9), ("u", 1e6), ("m", 1e3), ("S", 1.0), ("M", 1 / 60), ("H", 1 / 3600)):
        value = math.ceil(seconds * scale - 1e-6)
        if value < 100_000_000:
            return f"{max(1, value)}{unit}"
    return "99999999H"


def propagate_timeout(headers, value: str, start: float, now: float):
    """The request's headers with `grpc-timeout` set to what is left of the client's deadline at `now` (the
    deadline propagates hop by hop as grpc-timeout, PROTOCOL-HTTP2.md "Timeout"). A malformed value (ignored
    here, as by gRPC servers) is passed on as it came."""
    deadline = parse_timeout(value)
    if deadline is None:
        return headers
    left = format_timeout(max(0.0, start + deadline - now))
    return tuple((k, left) if k.lower() == "grpc-timeout" else (k, v) for k, v in headers)


def time_left(index, start: float, now: float) -> float | None:
    """What is left at `now` of a gRPC call's deadline (`grpc-timeout` counted from `start`), None for a request
    that is not a gRPC call or has no (valid) deadline."""
    if "grpc-timeout" not in index or not is_grpc(index.get("content-type")):
        return None
    deadline = parse_timeout(index["grpc-timeout"])
    return None if deadline is None else max(0.0, start + deadline - now)


def status_for_http(status: int) -> int:
    """The gRPC status for an HTTP status Gatewatch answers with itself (http-grpc-status-mapping.md)."""
    return _BY_HTTP.get(status, UNKNOWN if status >= 400 else OK)


def encode_message(message: str) -> str:
    """`grpc-message` is percent-encoded UTF-8 (PROTOCOL-HTTP2.md: Status-Message)."""
    return quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")


def local_error(http_status: int, message: str, extra=()) -> tuple[int, tuple[tuple[str, str], ...], bytes]:
    """A trailers-only gRPC error (PROTOCOL-HTTP2.md "Responses": HTTP 200, the status in the only HEADERS)."""
    code = status_for_http(http_status)
    return 200, (("content-type", "application/grpc"), ("grpc-status", str(code)),
                 ("grpc-message", encode_message(message)), *extra), b""


def service_method(path: str) -> tuple[str, str] | None:
    """(`rpc.service`, `rpc.method`) of a gRPC request path `/package.Service/Method`, else None."""
    if not path.startswith("/"):
        return None
    parts = path[1:].split("?", 1)[0].split("/")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        return None
    return parts[0], parts[1]


def status_of(headers) -> tuple[int | None, str | None]:
    """(`grpc-status`, `grpc-message`) in a header or trailer list, (None, None) when absent."""
    code = message = None
    for k, v in headers:
        lk = k.lower()
        if lk == "grpc-status" and code is None:
            code = int(v) if v.strip().isdigit() else UNKNOWN
        elif lk == "grpc-message" and message is None:
            message = v
    return code, message
