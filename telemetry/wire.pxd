# Augmenting declarations (Cython pure-Python mode): the records `encode_one` reads, as extension types.
from gatewatch.telemetry.context cimport RequestRecord, AttemptRecord, DecisionRecord, TraceContext
