# Augmenting declarations (Cython pure-Python mode): a pool as an extension type, its per-request state typed.
cdef class Pool:
    cdef public object config, name, scheme, algorithm, hash_key, affinity, clock, notify, source, endpoints
    cdef public dict instances, _by_id, in_flight, _affinity_keys, ejection_events
    cdef public bint passive_health, panic
    cdef public set full
    cdef public object _state, _pick, _choices
    cdef public Py_ssize_t limit, _version
    cdef public object _view, primary_priority, active_priority, failover_event, _cause
    cpdef view(self)
    cpdef acquire(self, endpoint)
    cpdef release(self, endpoint)
