# Augmenting declarations (Cython pure-Python mode): the per-request extension types, for typed locals.
from gatewatch.proxy.context cimport RequestContext, AttemptContext
from gatewatch.telemetry.context cimport RequestRecord, AttemptRecord
from gatewatch.io.interfaces cimport RequestHead, UpstreamRequest
