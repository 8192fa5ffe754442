"""Telemetry settings: the config file's `telemetry:` section merged with OTEL_* variables (env wins).

(Named test_telemetry_config.py, not test_config.py: tests/ has no packages, so two test_config modules would
clash at collection with tests/test_config.py.)
"""

from __future__ import annotations

import pytest

from gatewatch.telemetry.config import TelemetryConfig, resolve


def cfg(**data) -> TelemetryConfig:
    return TelemetryConfig.model_validate(data)


# --- service name --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("config", "env", "expected"), [
    ({}, {}, "gatewatch-edge"),
    ({"service_name": "from-config"}, {}, "from-config"),
    ({"service_name": "from-config"}, {"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs"}, "from-attrs"),
    ({"service_name": "from-config"}, {"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs",
                                       "OTEL_SERVICE_NAME": "from-env"}, "from-env"),
    ({}, {"OTEL_SERVICE_NAME": "from-env"}, "from-env"),
    ({"service_name": "from-config"}, {"OTEL_SERVICE_NAME": ""}, "from-config"),  # empty means unset
    ({"service_name": "from-config"}, {"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod"}, "from-config"),
    ({}, {"OTEL_RESOURCE_ATTRIBUTES": " service.name = spaced , x=1"}, "spaced"),
    ({}, {"OTEL_RESOURCE_ATTRIBUTES": "service.name=a%20b"}, "a b"),  # values are percent-decoded
])
def test_service_name_precedence(config, env, expected):
    resolved = resolve(cfg(**config), "gatewatch-edge", env)
    assert resolved.service_name == expected
    assert resolved.resource_attributes["service.name"] == expected


def test_resource_attributes_merge_env_over_config():
    resolved = resolve(cfg(resource_attributes={"team": "edge", "region": "eu"}), "gw",
                       {"OTEL_RESOURCE_ATTRIBUTES": "region=us,broken,=novalue,zone=a=b"})
    assert resolved.resource_attributes == {"team": "edge", "region": "us", "zone": "a=b", "service.name": "gw"}


# --- exporter endpoint, protocol, headers, timeout -----------------------------------------------------------------

@pytest.mark.parametrize(("otlp", "env", "traces", "logs", "protocol"), [
    ({}, {}, None, None, "http/protobuf"),
    ({"endpoint": "http://file:4318"}, {}, "http://file:4318/v1/traces", "http://file:4318/v1/logs",
     "http/protobuf"),
    ({"endpoint": "http://file:4317", "protocol": "grpc"}, {}, "http://file:4317", "http://file:4317", "grpc"),
    ({"endpoint": "http://file:4318"}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318/"},
     "http://env:4318/v1/traces", "http://env:4318/v1/logs", "http/protobuf"),
    # A signal-specific endpoint is used as-is and only for its signal.
    ({}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318",
          "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4318/custom"},
     "http://traces:4318/custom", "http://env:4318/v1/logs", "http/protobuf"),
    ({}, {"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://logs:4318/v1/logs"}, None, "http://logs:4318/v1/logs",
     "http/protobuf"),
    ({"protocol": "grpc"}, {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, None, None, "http/protobuf"),
    ({"protocol": "http/protobuf"}, {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, None, None, "grpc"),
    ({"endpoint": "http://file:4318", "protocol": "grpc"}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "",
                                                            "OTEL_EXPORTER_OTLP_PROTOCOL": ""},
     "http://file:4318", "http://file:4318", "grpc"),  # empty variables mean unset
])
def test_endpoint_and_protocol(otlp, env, traces, logs, protocol):
    resolved = resolve(cfg(otlp=otlp), "gw", env)
    assert (resolved.traces_endpoint, resolved.logs_endpoint, resolved.protocol, resolved.warnings) == (
        traces, logs, protocol, [])


@pytest.mark.parametrize(("env", "parent_based", "enabled"), [
    ({}, True, True),
    ({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.5"}, True, True),
    ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.5"}, False, True),
    ({"OTEL_TRACES_SAMPLER": "always_off"}, False, True),
    ({"OTEL_SDK_DISABLED": "true"}, True, False),
])
def test_parent_based_and_disabled(env, parent_based, enabled):
    resolved = resolve(cfg(), "gw", env)
    assert (resolved.parent_based, resolved.enabled) == (parent_based, enabled)


@pytest.mark.parametrize("bad", ["http/json", "GRPC", "http"])
def test_unsupported_protocol_warns_and_falls_back(bad):
    resolved = resolve(cfg(otlp={"protocol": "grpc"}), "gw", {"OTEL_EXPORTER_OTLP_PROTOCOL": bad})
    assert resolved.protocol == "http/protobuf"
    assert resolved.warnings == [f"OTEL_EXPORTER_OTLP_PROTOCOL: unsupported {bad!r}; using http/protobuf"]


def test_config_rejects_unknown_protocol():
    with pytest.raises(ValueError):
        cfg(otlp={"protocol": "http/json"})


def test_headers_merge_env_over_config():
    resolved = resolve(cfg(otlp={"headers": {"api-key": "file", "x-team": "edge"}}), "gw",
                       {"OTEL_EXPORTER_OTLP_HEADERS": "api-key=env%3D%3D,x-extra=1"})
    assert resolved.headers == {"api-key": "env==", "x-team": "edge", "x-extra": "1"}


@pytest.mark.parametrize(("config_s", "env", "timeout_s", "warnings"), [
    (5.0, {}, 5.0, []),
    (7.5, {}, 7.5, []),
    (5.0, {"OTEL_EXPORTER_OTLP_TIMEOUT": "10000"}, 10.0, []),  # milliseconds
    (5.0, {"OTEL_EXPORTER_OTLP_TIMEOUT": "250"}, 0.25, []),
    (5.0, {"OTEL_EXPORTER_OTLP_TIMEOUT": ""}, 5.0, []),
    (5.0, {"OTEL_EXPORTER_OTLP_TIMEOUT": "10s"}, 5.0,
     ["OTEL_EXPORTER_OTLP_TIMEOUT: expected milliseconds in (0, 60000], got '10s'; using 5.0s"]),
])
def test_timeout(config_s, env, timeout_s, warnings):
    resolved = resolve(cfg(otlp={"timeout_s": config_s}), "gw", env)
    assert (resolved.timeout_s, resolved.warnings) == (timeout_s, warnings)


@pytest.mark.parametrize("value", ["-1000", "nan", "inf"])
def test_out_of_range_timeout_warns_and_keeps_config(value):
    resolved = resolve(cfg(otlp={"timeout_s": 5.0}), "gw", {"OTEL_EXPORTER_OTLP_TIMEOUT": value})
    assert resolved.timeout_s == 5.0
    assert len(resolved.warnings) == 1 and resolved.warnings[0].startswith("OTEL_EXPORTER_OTLP_TIMEOUT: ")


# --- sampling ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("config_ratio", "env", "ratio", "warnings"), [
    (0.3, {}, 0.3, []),
    (0.3, {"OTEL_TRACES_SAMPLER": "always_on"}, 1.0, []),
    (0.3, {"OTEL_TRACES_SAMPLER": "parentbased_always_on"}, 1.0, []),
    (0.3, {"OTEL_TRACES_SAMPLER": "always_off"}, 0.0, []),
    (0.3, {"OTEL_TRACES_SAMPLER": "parentbased_always_off"}, 0.0, []),
    (0.3, {"OTEL_TRACES_SAMPLER": " Always_On "}, 1.0, []),  # case and spaces forgiven
    (0.3, {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}, 0.25, []),
    (0.3, {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"}, 0.0, []),
    (0.3, {"OTEL_TRACES_SAMPLER": "traceidratio"}, 1.0, []),  # no argument: the spec's default, 1.0
    (0.3, {"OTEL_TRACES_SAMPLER_ARG": "0.1"}, 0.3, []),  # an argument without a sampler is ignored
    (0.3, {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"}, 0.3,
     ["OTEL_TRACES_SAMPLER_ARG: not a number 'half'; using 0.3"]),
    (0.3, {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"}, 0.3,
     ["OTEL_TRACES_SAMPLER_ARG: 1.5 is outside [0, 1]; using 0.3"]),
    (0.3, {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "-0.1"}, 0.3,
     ["OTEL_TRACES_SAMPLER_ARG: -0.1 is outside [0, 1]; using 0.3"]),
    (0.3, {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "nan"}, 0.3,
     ["OTEL_TRACES_SAMPLER_ARG: nan is outside [0, 1]; using 0.3"]),
    (0.3, {"OTEL_TRACES_SAMPLER": "jaeger_remote"}, 0.3,
     ["OTEL_TRACES_SAMPLER: unsupported sampler 'jaeger_remote'; using ratio 0.3"]),
    (0.3, {"OTEL_TRACES_SAMPLER": "always_on", "OTEL_SDK_DISABLED": "true"}, 0.0, []),
    (0.3, {"OTEL_SDK_DISABLED": "TRUE"}, 0.0, []),
    (0.3, {"OTEL_SDK_DISABLED": "false"}, 0.3, []),
])
def test_sampling(config_ratio, env, ratio, warnings):
    resolved = resolve(cfg(sampling={"ratio": config_ratio}), "gw", env)
    assert (resolved.sampling_ratio, resolved.warnings) == (ratio, warnings)


def test_warnings_accumulate():
    resolved = resolve(cfg(), "gw", {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json", "OTEL_EXPORTER_OTLP_TIMEOUT": "x",
                                     "OTEL_TRACES_SAMPLER": "nope"})
    assert resolved.warnings == [
        "OTEL_EXPORTER_OTLP_PROTOCOL: unsupported 'http/json'; using http/protobuf",
        "OTEL_EXPORTER_OTLP_TIMEOUT: expected milliseconds in (0, 60000], got 'x'; using 5.0s",
        "OTEL_TRACES_SAMPLER: unsupported sampler 'nope'; using ratio 1.0",
    ]


def test_file_only_settings_pass_through():
    resolved = resolve(cfg(local_dir="/tmp/t", queue_size=10, batch_size=5, export_interval_s=0.5), "gw", {})
    assert (resolved.local_dir, resolved.queue_size, resolved.batch_size, resolved.export_interval_s) == \
        ("/tmp/t", 10, 5, 0.5)

