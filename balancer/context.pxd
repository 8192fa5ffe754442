# Augmenting declarations (Cython pure-Python mode): one pick, and the request's pick state, as extension types.
from gatewatch.balancer.pool cimport Pool

cdef class PickResult:
    cdef public object pool, pick, view, endpoint
    cdef public Py_ssize_t in_flight
    cdef public object hash_key_source, event_ids, algorithm
    cdef public Py_ssize_t candidates
    cdef public object excluded, reason

cdef class PickContext:
    cdef public Pool pool
    cdef public object key, affinity, _tried, _hash_source
    cpdef tried(self, instance_id)
    cpdef PickResult pick(self, rng)
    cpdef repin(self, response_headers, endpoint)
