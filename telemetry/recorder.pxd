# Augmenting declarations (Cython pure-Python mode): the records `finish` reads, as extension types.
from gatewatch.telemetry.context cimport RequestRecord, AttemptRecord, DecisionRecord
from gatewatch.telemetry.fastmetrics cimport FastHistogram, FastCounter

cdef class Telemetry:
    cdef public object config, metrics, resource_attributes, sink, destination, journal
    cdef public FastHistogram _server, _client
    cdef public FastCounter _decisions, _verdicts, _instances, _pool_requests, _cache_requests
    cdef public frozenset _known_methods
    cdef public bint _allow_logs_sampled_only
    cpdef finish(self, RequestRecord r)
    cpdef bint exports_allowed_decisions(self, bint sampled)
