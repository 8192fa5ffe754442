# Augmenting declarations (Cython pure-Python mode): the per-exchange objects as extension types.
from gatewatch.io.interfaces cimport UpstreamRequest

cdef class RawResponse:
    cdef public object _pool, _conn, status, reason, headers, peer_address, peer_port, _idle_s, _pump
    cdef public bint _released
    cdef public object _whole

cdef class _Awaiting:
    cdef public object ep, conn
    cdef public double response_s
    cdef public object idle_s, timing, callback, arg, deadlines, tick
    cdef public double sent
    cdef public object status_head
    cdef public bint settled

cdef class UpstreamConnection:
    cdef public object pool, loop, transport, flow, parser, closed, busy, idle_since, peer, head, body
    # the response head being parsed: typed, so the parser callbacks work on it without a lookup by name
    cdef public list _headers
    cdef public Py_ssize_t _head_bytes
    cdef public object _te, _status_reason, complete, is_head_request, until_close, keep_alive
    cdef public object awaiting, forgotten, tls_version, tls_cipher, upgrading, tunnel, leftover
    cdef public bint _has_length
