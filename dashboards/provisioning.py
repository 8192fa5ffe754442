"""Grafana provisioning: the three datasources (fixed uids) wired to each other, and the dashboard provider.

Correlations, all declared here so they work the moment Grafana starts:
- Prometheus exemplars → Tempo: an exemplar's `trace_id` label opens the trace.
- Tempo → Loki (trace to logs): the trace's decision logs (by trace id) and the state-change events it caused
  (events list the trace ids of their causes in `gatewatch.event.trace_ids`).
- Tempo → Prometheus (trace to metrics): a span's route/instance RED metrics, with Gatewatch's own names.
- Tempo service map and node graph (from Tempo's metrics generator, stored in the same Prometheus).
- Loki → Tempo: the `trace_id` of a record opens its trace; the `gatewatch.event.id` of a state-change event
  opens a TraceQL search for the requests it affected (`span.gatewatch.event.ids = "<id>"`: matching inside an
  array attribute needs Tempo's vParquet4 blocks, the default of recent Tempo 2.x and of 3.x).
Grafana expands `$VAR` in provisioning files from the environment, so a literal `$` is written `$$`.
"""

from __future__ import annotations

from gatewatch.dashboards.promql import CLIENT_BUCKET, CLIENT_COUNT, SERVER_BUCKET, SERVER_COUNT, quantile, sum_rate
from gatewatch.dashboards.loki import field
from gatewatch.telemetry.names import Attr, Label

DATASOURCE_URLS = {"prometheus": "http://prometheus:9090", "tempo": "http://tempo:3200", "loki": "http://loki:3100"}
DASHBOARDS_PATH = "/var/lib/grafana/dashboards"


def _grafana_escape(text: str) -> str:
    return text.replace("$", "$$")


def _trace_to_metrics_queries() -> list[dict]:
    """Queries Grafana runs for a span; `$__tags` becomes the span's mapped tags (route, instance) as matchers."""
    w = "$__rate_interval"
    return [
        {"name": "Edge requests/s of this route",
         "query": sum_rate(SERVER_COUNT + "{$__tags}", Label.LAYER, window=w)},
        {"name": "p99 latency of this route",
         "query": quantile(0.99, SERVER_BUCKET + "{$__tags}", Label.LAYER, window=w)},
        {"name": "Attempts/s to this instance by outcome",
         "query": sum_rate(CLIENT_COUNT + "{$__tags}", Label.INSTANCE, Label.OUTCOME, window=w)},
        {"name": "p99 latency of attempts to this instance",
         "query": quantile(0.99, CLIENT_BUCKET + "{$__tags}", Label.INSTANCE, window=w)},
    ]


def trace_to_logs_query() -> str:
    """What "Related logs" of a span opens: the trace's decision logs and the state-change events it caused.

    Every variable is defined for every span (Grafana hides the link when one is not), so a span attribute such as
    gatewatch.event.ids cannot take part: Grafana would drop the link from every span without it."""
    causes = field(Attr.EVENT_TRACE_IDS)  # a JSON array of trace ids in Loki: matched as a substring
    return f'{{${{__tags}}}} | trace_id="${{__trace.traceId}}" or {causes}=~".*${{__trace.traceId}}.*"'


def affected_requests_traceql() -> str:
    """The TraceQL a state-change event's id opens: the requests it affected (they name it in gatewatch.event.ids,
    an array attribute: vParquet4 blocks)."""
    return f'{{ span.{Attr.EVENT_IDS} = "${{__value.raw}}" }}'


def datasources() -> dict:
    prometheus = {
        "name": "Prometheus", "type": "prometheus", "uid": "prometheus", "access": "proxy",
        "url": DATASOURCE_URLS["prometheus"], "isDefault": True, "editable": False,
        "jsonData": {
            "httpMethod": "POST",
            "timeInterval": "15s",
            "exemplarTraceIdDestinations": [
                {"name": "trace_id", "datasourceUid": "tempo", "urlDisplayLabel": "Trace in Tempo"}],
        },
    }
    tempo = {
        "name": "Tempo", "type": "tempo", "uid": "tempo", "access": "proxy", "url": DATASOURCE_URLS["tempo"],
        "editable": False,
        "jsonData": {
            "tracesToLogsV2": {
                "datasourceUid": "loki", "spanStartTimeShift": "-5m", "spanEndTimeShift": "5m",
                "filterByTraceID": True, "filterBySpanID": False, "customQuery": True,
                "tags": [{"key": "service.name", "value": "service_name"}],
                "query": _grafana_escape(trace_to_logs_query()),
            },
            "tracesToMetrics": {
                "datasourceUid": "prometheus", "spanStartTimeShift": "-5m", "spanEndTimeShift": "5m",
                "tags": [{"key": Attr.ROUTE, "value": Label.ROUTE}, {"key": Attr.INSTANCE, "value": Label.INSTANCE}],
                "queries": [{"name": q["name"], "query": _grafana_escape(q["query"])}
                            for q in _trace_to_metrics_queries()],
            },
            "serviceMap": {"datasourceUid": "prometheus"},
            "nodeGraph": {"enabled": True},
            "search": {"hide": False},
            "lokiSearch": {"datasourceUid": "loki"},
            "traceQuery": {"timeShiftEnabled": True, "spanStartTimeShift": "-30m", "spanEndTimeShift": "30m"},
            "spanBar": {"type": "Tag", "tag": Attr.INSTANCE},
        },
    }
    loki = {
        "name": "Loki", "type": "loki", "uid": "loki", "access": "proxy", "url": DATASOURCE_URLS["loki"],
        "editable": False,
        "jsonData": {
            "maxLines": 1000,
            # A label matcher is a regex tested against each structured-metadata key, unanchored: anchored
            # here, or `trace_id` would also match gatewatch_event_trace_ids (a JSON array, not a trace id).
            "derivedFields": [
                {"name": "trace_id", "matcherType": "label", "matcherRegex": _grafana_escape("^trace_id$"),
                 "datasourceUid": "tempo", "url": _grafana_escape("${__value.raw}"),
                 "urlDisplayLabel": "Trace in Tempo"},
                {"name": field(Attr.EVENT_ID), "matcherType": "label", "matcherRegex": _grafana_escape(f"^{field(Attr.EVENT_ID)}$"),
                 "datasourceUid": "tempo", "url": _grafana_escape(affected_requests_traceql()),
                 "urlDisplayLabel": "Requests this event affected (Tempo)"}],
        },
    }
    return {"apiVersion": 1, "datasources": [prometheus, tempo, loki]}


def dashboard_provider() -> dict:
    return {"apiVersion": 1, "providers": [{
        "name": "gatewatch", "orgId": 1, "folder": "Gatewatch", "folderUid": "gatewatch", "type": "file",
        "disableDeletion": True, "allowUiUpdates": False, "updateIntervalSeconds": 30,
        "options": {"path": DASHBOARDS_PATH, "foldersFromFilesStructure": False}}]}
