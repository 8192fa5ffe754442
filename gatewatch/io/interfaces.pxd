# Augmenting declarations (Cython pure-Python mode): the per-request heads as extension types.
cdef class RequestHead:
    cdef public object method, target, version, headers, client_address, client_port, scheme, server_address
    cdef public object server_port, listener
    cdef public bint has_body
    cdef public dict index
    cdef public object tls
    cpdef header(self, lname)

cdef class UpstreamRequest:
    cdef public object method, host, port, scheme, target, headers
    cdef public bint has_body
    cdef public object upgrade
