# Augmenting declarations (Cython pure-Python mode): a route's plan and target as extension types, held typed
# by `RequestContext` (context.pxd), so the engine reads their fields as C fields.
cdef class RoutePlan:
    cdef public object name, upstream, strip_prefix
    cdef public double connect_s, idle_s
    cdef public object retries
    cdef public Py_ssize_t retry_attempts
    cdef public frozenset retry_statuses
    cdef public double per_try_s
    cdef public object deadline_s
    cdef public bint preserve_host
    cdef public object cache

cdef class Target:
    cdef readonly object upstream, pool, remote, budget, policies, aggregate, split, mirror
