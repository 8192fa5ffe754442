from gatewatch.telemetry.context cimport RequestRecord
