# Augmenting declarations (Cython pure-Python mode): the route table (trie nodes, compiled routes) as extension
# types, so a match walks it through C fields.
cdef class _Compiled:
    cdef public object route
    cdef public Py_ssize_t index
    cdef public object kind, value
    cdef public tuple segments
    cdef public frozenset hosts
    cdef public tuple wild_hosts
    cdef public bint any_host
    cdef public frozenset methods
    cdef public tuple headers, query
    cdef public object template, static_match
    cpdef match_path(self, str path)

cdef class _Node:
    cdef public dict children
    cdef public _Node wildcard
    cdef public list ends, prefixes

cdef class Router:
    cdef public list _routes
    cdef public _Node _root
