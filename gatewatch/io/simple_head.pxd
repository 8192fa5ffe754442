# Augmenting declarations (Cython pure-Python mode): the byte classes and the bytes the scanner compares with as
# C constants, so the loop over a head's bytes never makes a Python int.
cdef unsigned char TOKEN, VALUE, TARGET, CR, LF, SP, HTAB, COLON, SLASH
