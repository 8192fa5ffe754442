# Augmenting declarations (Cython pure-Python mode): the per-request telemetry records as extension types.
cdef class TraceContext:
    cdef public object trace_id, span_id, parent_span_id
    cdef public bint sampled
    cdef public object treatment, tracestate, baggage, link, cut

cdef class DecisionRecord:
    cdef public object kind, rule, result, reason, time_ns, span_id, attributes, layer

cdef class AttemptRecord:
    cdef public object span_id, layer, upstream, instance, zone, host, port, url_full, method, resend_count
    cdef public object start_ns, end_ns, status, error_type, peer_address, peer_port
    cdef public double duration_s
    cdef public object outcome, lb, backoff_s, pool_wait_s, connect_s, tls_s, request_sent_s, ttfb_s
    cdef public object tls_failure, tls_protocol_version, tls_cipher

cdef class RequestRecord:
    cdef public object layer
    cdef public TraceContext trace
    cdef public object start_ns
    cdef public double start_mono
    cdef public object method, path, query, scheme, host, server_port, client_address, client_port
    cdef public object protocol_version, user_agent, request_id, listener
    cdef public object route, route_template, upstream, outcome, status, error_type, end_ns
    cdef public double duration_s
    cdef public object balance_span_id, balance_start_ns, balance_end_ns, lb, consumer
    cdef public object policies, attempts, decisions
    cdef public object config_version, failover, event_ids, policy_durations, store_rtt_s, tls, headers_dropped
    cdef public object cache, span_attrs
    cdef public bint mirror
    cdef public object tcp, websocket

# Ids and trace context, made for every request (the engine cimports them: C calls).
cpdef format_traceparent(trace_id, span_id, bint sampled)
cpdef hex128(value)
cpdef hex64(value)
cpdef new_span_id(rng)
cpdef new_trace_id(rng)
cpdef TraceContext start_trace(traceparent, tracestate, baggage, trust, double ratio, rng, bint parent_based=*)
