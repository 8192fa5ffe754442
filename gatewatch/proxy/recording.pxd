from gatewatch.telemetry.context cimport RequestRecord
from gatewatch.balancer.context cimport PickResult

# The two recordings every request makes, called by the engine as C functions (engine.pxd cimports this module:
# `recording.route(...)` is then a direct call, not a module attribute looked up and called by name).
cpdef route(RequestRecord rec, match, plan, now_ns)
cpdef dict pick(RequestRecord rec, PickResult p, now_ns, bint detail=*)
