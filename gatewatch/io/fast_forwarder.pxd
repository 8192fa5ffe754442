# Augmenting declarations (Cython pure-Python mode): the per-exchange objects as extension types.
from gatewatch.io.interfaces cimport UpstreamRequest
from gatewatch.io.http1 cimport BodyQueue, Deadlines, serialize_head

cdef class EndpointPool:
    cdef public object host, port, tls, server_name
    cdef public Py_ssize_t max_connections
    cdef public double idle_s
    cdef public object idle
    cdef public Py_ssize_t open
    cdef public object _waiters
    cdef public bint retired, literal
    cpdef take_idle(self)
    cpdef release(self, conn)
    cpdef forget(self, conn)

cdef class RawForwarder:
    cdef public dict _limits, _pools, _tls
    cdef public object _default_tls
    cdef public Deadlines _deadlines
    cdef public object h2_pools, _h2, _default_h2_tls
    cpdef EndpointPool _pool(self, name, host, port, scheme)
    cpdef Deadlines _head_deadlines(self, loop)

cdef class UpstreamConnection

cdef class RawResponse:
    cdef public EndpointPool _pool
    cdef public UpstreamConnection _conn
    cdef public object status, reason, headers, head_block, dated, peer_address, peer_port, _idle_s, _pump
    cdef public bint _released
    cdef public object _whole

cdef class UpstreamConnection:
    cdef public object pool, loop, transport, flow, parser, closed, busy, idle_since, peer, head
    cdef public BodyQueue body
    # the response head being parsed: typed, so the parser callbacks work on it without a lookup by name
    cdef public list _headers
    cdef public Py_ssize_t _head_bytes
    cdef public object _te, _status_reason, complete, is_head_request, until_close, keep_alive
    cdef public object awaiting, forgotten, tls_version, tls_cipher, upgrading, tunnel, leftover
    cdef public bint _has_length, _fresh
    cpdef _feed(self, data)
    cpdef begin(self, method, head=*, upgrade=*)
    cpdef _simple(self, data)

cdef class _Awaiting:
    cdef public EndpointPool ep
    cdef public UpstreamConnection conn
    cdef public double response_s
    cdef public object idle_s, timing, callback, arg
    cdef public Deadlines deadlines
    cdef public object tick
    cdef public double sent
    cdef public object status_head
    cdef public bint settled
