# Augmenting declarations (Cython pure-Python mode): a route's live retry budget and one request's retry state as
# extension types, so the engine (context.pxd types `RequestContext.retries`) opens, reads and closes them with C
# calls and C fields on every request.
cdef class RetryBudget:
    cdef public Py_ssize_t active, retrying

cdef class RetryState:
    cdef public object cfg
    cdef public RetryBudget budget
    cdef public object deadline
    cdef public double per_try_s
    cpdef attempt_timeout(self, double now)
    cpdef attempt_ended(self, Py_ssize_t attempt_number)
    cpdef close(self)
