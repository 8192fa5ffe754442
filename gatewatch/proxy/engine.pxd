# Augmenting declarations (Cython pure-Python mode): the engine, and the per-request types of its typed locals.
from gatewatch.proxy.context cimport RequestContext, AttemptContext
from gatewatch.telemetry.context cimport RequestRecord, AttemptRecord
from gatewatch.io.interfaces cimport RequestHead, UpstreamRequest
from gatewatch.balancer.context cimport PickResult, PickContext

cdef class Engine:
    cdef public object snapshot, layer, layer_value, _forwarder, _send_now, telemetry, clock_ns, monotonic, rng
    cdef public object sampling_ratio, parent_based, telemetry_enabled, _tasks, caches, _split_requests, mirrors
    cdef public object websockets
