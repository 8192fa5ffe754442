# Augmenting declarations (Cython pure-Python mode): the records `finish` reads, as extension types.
from gatewatch.telemetry.context cimport RequestRecord, AttemptRecord, DecisionRecord
from gatewatch.telemetry.fastmetrics cimport FastHistogram, FastCounter
