# Augmenting declarations (Cython pure-Python mode): what every request's target goes through, as C functions
# (cpdef: still callable by name; the engine cimports them).
cpdef bint plain_path(str raw)
cpdef str canonical_path(str raw, rules=*)
cpdef tuple split_target(str target)
cpdef target_authority(str target)
