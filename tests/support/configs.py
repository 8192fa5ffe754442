"""Config documents of test runtimes: the admin API and the one public listener on port 0, telemetry into JSONL
files under the test's tmp_path and, with an OTLP receiver, also to it over gRPC every 0.1 s."""

from __future__ import annotations

from pathlib import Path

from tests.support.otlp import OtlpReceiver


def telemetry_config(tmp_path: Path, otlp: OtlpReceiver | None = None) -> dict:
    telemetry: dict = {"local_dir": str(tmp_path / "telemetry")}
    if otlp is not None:
        telemetry.update({"otlp": {"endpoint": otlp.grpc_endpoint, "protocol": "grpc"}, "export_interval_s": 0.1})
    return telemetry


def gateway_config(tmp_path: Path, otlp: OtlpReceiver | None, edge: dict, pools: list[dict]) -> dict:
    """`edge` holds everything of the edge but its listener (upstreams, routes); `pools` are the balancer's."""
    return {
        "admin": {"address": "127.0.0.1:0"},
        "telemetry": telemetry_config(tmp_path, otlp),
        "edge": {"listeners": [{"name": "public", "address": "127.0.0.1:0"}], **edge},
        "balancer": {"pools": pools},
    }
