# Augmenting declarations (Cython pure-Python mode): the per-exchange objects as extension types.
from gatewatch.io.interfaces cimport RequestHead

cdef class _Exchange:
    cdef public RequestHead head
    cdef public object body
    cdef public bint expect_continue, keep_alive, continue_sent, is_head, http10, started, now, websocket

cdef class _Downstream:
    cdef public object _conn
    cdef public _Exchange _ex
    cdef public bint started, complete, _chunked
    cdef public object _declared, _written
    cdef public bint _close_after
    cdef public object _pending
    cdef public bint _done

cdef class HttpConnection:
    cdef public object listener, transport, parser, flow, closed, rejected, _pipeline_paused, _inbuf, queue
    cdef public object parsing, running, _serving, _idle, _url, _headers, _index, _header_bytes, _hosts
    cdef public object _in_trailers, last_active, head_started, peer, sock, now_busy, tls, _byte_limit, _line_limit
    cdef public object _scanned, _head_fed, tunnel, early
