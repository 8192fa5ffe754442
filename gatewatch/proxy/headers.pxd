# Augmenting declarations (Cython pure-Python mode): the header rules every request goes through, as C functions
# (cpdef: still callable by name). engine.pxd cimports this module, so `hdr.upstream_request_headers(...)` is a
# direct call, and the helpers below call one another without a lookup or an argument tuple.
cpdef request_id(inbound, rng)
cpdef _first(headers, lname)
cpdef _one(headers, lname, index)
cpdef _all(headers, lname, index)
cpdef combined(headers, lname, index)
cpdef list _without(headers, frozenset drop)
cpdef bint has_underscored_name(dict index)
cpdef tuple upstream_request_headers(headers, client_address, scheme, host, upstream_host, bint preserve_host,
                                     bint trust_forwarded, request_id, traceparent, tracestate, version, baggage,
                                     index=*)
cpdef via_hop(version)
