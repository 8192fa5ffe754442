# Augmenting declarations (Cython pure-Python mode): the per-exchange objects as extension types.
from gatewatch.io.interfaces cimport RequestHead
from gatewatch.io.http1 cimport serialize_head

cdef class _Exchange:
    cdef public RequestHead head
    cdef public object body
    cdef public bint expect_continue, keep_alive, continue_sent, is_head, http10, started, now, websocket

cdef class HttpConnection

cdef class _Downstream:
    cdef public HttpConnection _conn
    cdef public _Exchange _ex
    cdef public bint started, complete, _chunked
    cdef public object _declared, _written
    cdef public bint _close_after
    cdef public object _pending
    cdef public bint _done
    cpdef bytes _head(self, status, reason, headers, content_length, block=*, bint dated=*)
    cpdef _respond_whole(self, status, reason, headers, body, block, bint dated)

cdef class HttpConnection:
    cdef public object listener, transport, parser, flow, closed, rejected, _pipeline_paused, _inbuf, queue
    cdef public object parsing, running, _serving, _idle
    # the head being parsed: typed, so the parser callbacks work on them without a lookup by name
    cdef public bytearray _url
    cdef public list _headers
    cdef public dict _index
    cdef public Py_ssize_t _header_bytes, _hosts, _byte_limit, _line_limit, _scanned, _head_fed
    cdef public bint _in_trailers
    cdef public object last_active, head_started, peer, sock, now_busy, tls, tunnel, early, _carry
    cdef public object loop, _scheme, _listener_name
    cpdef _simple(self, data)
    cpdef RequestHead _request_head(self, method, target, version, headers, index, has_body)
    cpdef exchange_done(self, _Downstream down)
