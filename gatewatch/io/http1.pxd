# Augmenting declarations (Cython pure-Python mode): a body's queue, the shared deadline wheel and the write-side
# flow as extension types (a response body goes through a BodyQueue on every exchange).
cdef class BodyQueue:
    cdef public object _chunks
    cdef public Py_ssize_t _buffered
    cdef public bint _done
    cdef public object _error, _waiter, _pause, _resume
    cdef public bint _paused
    cdef public object _make_error
    cdef public Py_ssize_t total
    cpdef take_whole(self)
    cpdef feed(self, chunk)
    cpdef finish(self)
    cpdef fail(self, error=*)

cdef class Deadlines:
    cdef public object _loop
    cdef public double _resolution
    cdef public dict _ticks
    cdef public object _make_error
    cpdef add(self, double delay_s, fut)
    cpdef discard(self, tick, fut)

cdef class WriteFlow:
    cdef public bint paused
    cdef public object _waiter
    cdef public bint closed

# A head's bytes, written by both protocols on every exchange (a C call from the modules that cimport it).
cpdef bytes serialize_head(first_line, headers, list extra, block=*)
