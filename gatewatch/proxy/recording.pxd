from gatewatch.telemetry.context cimport RequestRecord
from gatewatch.balancer.context cimport PickResult
