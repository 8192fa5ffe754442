# Augmenting declarations (Cython pure-Python mode): the request path's histograms and counters as extension types,
# their `observe`/`inc` callable directly by the recorder (recorder.pxd cimports them).
cdef class FastHistogram:
    cdef public object name, unit, documentation, labelnames
    cdef public tuple buckets
    cdef public dict _series
    cdef public object _les, _text
    cpdef observe(self, tuple labels, double value, trace_id=*)

cdef class FastCounter:
    cdef public object name, documentation, labelnames
    cdef public dict _values
    cdef public object _text
    cpdef inc(self, tuple labels, double amount=*)
