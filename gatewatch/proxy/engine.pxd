# Augmenting declarations (Cython pure-Python mode): the engine, and the per-request types of its typed locals.
from gatewatch.proxy.context cimport RequestContext, AttemptContext
from gatewatch.telemetry.context cimport (RequestRecord, AttemptRecord, format_traceparent, hex64, hex128,
                                         new_span_id, start_trace)
from gatewatch.edge.paths cimport canonical_path, split_target, target_authority
from gatewatch.io.interfaces cimport RequestHead, UpstreamRequest
from gatewatch.balancer.context cimport PickResult, PickContext
from gatewatch.proxy.plan cimport RoutePlan, Target

from gatewatch.telemetry.recorder cimport Telemetry
from gatewatch.proxy cimport recording
from gatewatch.proxy cimport headers as hdr

cdef class Engine:
    cdef public object snapshot, layer, layer_value, _forwarder, _send_now, clock_ns, monotonic, rng
    cdef public Telemetry telemetry
    cdef public object sampling_ratio, parent_based, telemetry_enabled, _tasks, caches, _split_requests, mirrors
    cdef public object websockets
    # The phase methods of one exchange call one another as C functions (cpdef: still callable by name, and
    # overridable by a Python subclass); a call by name costs a method lookup and an argument tuple each.
    cpdef handle_now(self, RequestHead head, down)
    cpdef _end(self, RequestContext ctx)
    cpdef _new_record(self, snap, RequestHead head)
    cpdef route(self, RequestContext ctx)
    cpdef _forward_begin(self, RequestContext ctx)
    cpdef _forward_end(self, RequestContext ctx)
    cpdef _next_attempt(self, RequestContext ctx)
    cpdef pick(self, RequestContext ctx, PickContext picking, n)
    cpdef _attempt_begin(self, RequestContext ctx, AttemptContext a)
    cpdef _attempt_end(self, RequestContext ctx, AttemptContext a)
    cpdef _answered(self, RequestContext ctx, AttemptContext a, response)
    cpdef _forward_now(self, RequestContext ctx)
    cpdef _attempt_over(self, RequestContext ctx, AttemptContext a)
    cpdef _upstream_answered(self, RequestContext ctx, result)
    cpdef _upstream_request(self, RequestContext ctx, AttemptContext a)
    cpdef _response_head(self, RequestContext ctx, response)
    cpdef _response_tail(self, RequestContext ctx, list headers)
    cpdef _relay_block_now(self, RequestContext ctx, AttemptContext a, response, block)
    cpdef _respond_now(self, RequestContext ctx, AttemptContext a, response, headers, whole, block=*)
    cpdef _attempt_clock(self, AttemptContext a)
    cpdef _trace_response(self, RequestContext ctx)
    cpdef record(self, RequestContext ctx)
    cpdef _fail_now(self, RequestContext ctx, outcome, error_type)
    cpdef _local_answer(self, RequestContext ctx, outcome, status, extra, message)
    cpdef _client_gone(self, RequestContext ctx)
    cpdef _internal_error_now(self, RequestContext ctx)
