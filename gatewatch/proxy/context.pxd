# Augmenting declarations (Cython pure-Python mode): the per-request contexts as extension types.
from gatewatch.telemetry.context cimport RequestRecord, AttemptRecord
from gatewatch.io.interfaces cimport RequestHead
from gatewatch.proxy.plan cimport RoutePlan, Target
from gatewatch.balancer.retry cimport RetryState

cdef class AttemptContext:
    cdef public Py_ssize_t n
    cdef public object host, port, scheme, instance, zone, layer, endpoint, lb
    cdef public double response_s, start
    cdef public AttemptRecord record
    cdef public object result
    cdef public bint ended

cdef class RequestContext:
    cdef public object snap
    cdef public RequestHead head
    cdef public object body, down
    cdef public RequestRecord rec
    cdef public object listener
    cdef public object path, route
    cdef public RoutePlan plan
    cdef public Target target
    cdef public object policy
    cdef public Py_ssize_t evaluated
    cdef public object response_headers, client_body, upstream_target
    cdef public double backoff_s
    cdef public object picking
    cdef public RetryState retries
    cdef public AttemptContext attempt
    cdef public object mirror, cache
