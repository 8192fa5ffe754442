"""Panel and dashboard helpers over grafana-foundation-sdk: the few shapes the Gatewatch boards use.

Primitives: the three datasource refs (`PROMETHEUS`, `TEMPO`, `LOKI`, fixed uids the provisioning declares),
`prom(...)` (one PromQL target), panel makers (`timeseries`, `stat`, `table`, `state_timeline`, `logs`,
`traceql_table`, `trace_view`, `service_map`, `text`), `raw_panel` (the escape hatch: any panel type with raw
options, for what the SDK has no builder for, e.g. the `traces` panel), `new_dashboard` (uid, tags, shared
links, time settings) and `render` (the final JSON dict with stable panel ids).

Every panel carries a description: it is what an SRE reads when they hover the (i) icon at 3 a.m.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from grafana_foundation_sdk.builders import common as gcb
from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import logs as glogs
from grafana_foundation_sdk.builders import loki as gloki
from grafana_foundation_sdk.builders import nodegraph as gnode
from grafana_foundation_sdk.builders import prometheus as gprom
from grafana_foundation_sdk.builders import stat as gstat
from grafana_foundation_sdk.builders import statetimeline as gstate
from grafana_foundation_sdk.builders import table as gtable
from grafana_foundation_sdk.builders import tempo as gtempo
from grafana_foundation_sdk.builders import text as gtext
from grafana_foundation_sdk.builders import timeseries as gts
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as gc
from grafana_foundation_sdk.models import dashboard as gm
from grafana_foundation_sdk.models import text as gmtext

PROMETHEUS = gc.DataSourceRef(type_val="prometheus", uid="prometheus")
TEMPO = gc.DataSourceRef(type_val="tempo", uid="tempo")
LOKI = gc.DataSourceRef(type_val="loki", uid="loki")
TAG = "gatewatch"

UID = {
    "overview": "gatewatch-overview",
    "journey": "gatewatch-journey",
    "balancer": "gatewatch-balancer",
    "decisions": "gatewatch-decisions",
    "self": "gatewatch-self",
    "traffic": "gatewatch-traffic",
    "protocols": "gatewatch-protocols",
}


def prom(expr: str, legend: str = "", *, ref: str = "A", instant: bool = False, exemplar: bool = False,
         table: bool = False) -> gprom.Dataquery:
    q = gprom.Dataquery().expr(expr).ref_id(ref).datasource(PROMETHEUS)
    q = q.legend_format(legend or "__auto")
    q = q.instant() if instant else q.range()
    if table:
        q = q.format(gprom.prometheus.PromQueryFormat.TABLE)
    return q.exemplar(exemplar)


def _refs(targets: list) -> list:
    """Give targets distinct refIds A, B, C... (a panel's queries must be told apart)."""
    for i, t in enumerate(targets):
        t.ref_id(chr(ord("A") + i))
    return targets


def link(title: str, url: str) -> gd.DashboardLink:
    return gd.DashboardLink(title).url(url)


def dashboard_url(key: str, **vars_: str) -> str:
    """A link into another Gatewatch board that keeps the time range (and sets the given variables)."""
    params = "".join(f"&var-{k}={v}" for k, v in vars_.items())
    return f"/d/{UID[key]}?${{__url_time_range}}{params}"


def explore_traces_url(traceql: str) -> str:
    """Grafana Explore on the Tempo datasource with a TraceQL query, over the panel's time range."""
    left = json.dumps({"datasource": TEMPO.uid, "queries": [
        {"refId": "A", "datasource": {"type": "tempo", "uid": TEMPO.uid}, "queryType": "traceql",
         "query": traceql}], "range": {"from": "${__from}", "to": "${__to}"}}, separators=(",", ":"))
    return "/explore?left=" + quote(left, safe="${}:,/")


def timeseries(title: str, description: str, targets: list, unit: str, *, stack: bool = False,
               links: list | None = None, w: int = 12, h: int = 8, max_: float | None = None) -> gts.Panel:
    p = (gts.Panel().title(title).description(description).datasource(PROMETHEUS).unit(unit)
         .targets(_refs(targets)).span(w).height(h).fill_opacity(10 if not stack else 40))
    if stack:
        p = p.stacking(gcb.StackingConfig().mode(gc.StackingMode.NORMAL))
    if links:
        p = p.data_links(links)
    if max_ is not None:
        p = p.max(max_)
    return p.legend(gcb.VizLegendOptions().display_mode(gc.LegendDisplayMode.TABLE)
                    .placement(gc.LegendPlacement.BOTTOM).show_legend(True).calcs(["mean", "max"]))


def stat(title: str, description: str, targets: list, unit: str, *, w: int = 6, h: int = 4,
         thresholds: list[tuple[float | None, str]] | None = None) -> gstat.Panel:
    p = (gstat.Panel().title(title).description(description).datasource(PROMETHEUS).unit(unit)
         .targets(_refs(targets)).span(w).height(h))
    if thresholds:
        p = p.thresholds(gd.ThresholdsConfig().mode(gm.ThresholdsMode.ABSOLUTE).steps(
            [gm.Threshold(value=v, color=c) for v, c in thresholds]))
    return p


def table(title: str, description: str, targets: list, unit: str = "", *, w: int = 12, h: int = 8,
          links: list | None = None, rename: dict[str, str] | None = None) -> gtable.Panel:
    p = (gtable.Panel().title(title).description(description).datasource(PROMETHEUS)
         .targets(_refs(targets)).span(w).height(h)
         .with_transformation(gm.DataTransformerConfig(id_val="merge", options={}))
         .with_transformation(gm.DataTransformerConfig(id_val="organize", options={
             "excludeByName": {"Time": True}, "renameByName": rename or {}})))
    if unit:
        p = p.unit(unit)
    if links:
        p = p.data_links(links)
    return p


def state_timeline(title: str, description: str, targets: list, *, w: int = 12, h: int = 8,
                   colors: list[tuple[float | None, str]] | None = None) -> gstate.Panel:
    p = (gstate.Panel().title(title).description(description).datasource(PROMETHEUS)
         .targets(_refs(targets)).span(w).height(h).show_value(gc.VisibilityMode.AUTO))
    if colors:
        p = p.thresholds(gd.ThresholdsConfig().mode(gm.ThresholdsMode.ABSOLUTE).steps(
            [gm.Threshold(value=v, color=c) for v, c in colors]))
        p = p.color_scheme(gd.FieldColor().mode(gm.FieldColorModeId.THRESHOLDS))
    return p


def logs(title: str, description: str, logql: str, *, w: int = 24, h: int = 10) -> glogs.Panel:
    return (glogs.Panel().title(title).description(description).datasource(LOKI)
            .with_target(gloki.Dataquery().expr(logql).ref_id("A").datasource(LOKI))
            .span(w).height(h).show_time(True).enable_log_details(True).wrap_log_message(True)
            .sort_order(gc.LogsSortOrder.DESCENDING))


def traceql_table(title: str, description: str, traceql: str, *, limit: int = 20, w: int = 24,
                  h: int = 9, spans: bool = False) -> gtable.Panel:
    """Recent traces (or, with `spans`, spans) matching a TraceQL query; `| select(...)` adds columns."""
    table_type = gtempo.tempo.SearchTableType.SPANS if spans else gtempo.tempo.SearchTableType.TRACES
    q = (gtempo.Dataquery().ref_id("A").datasource(TEMPO).query_type("traceql").query(traceql).limit(limit)
         .table_type(table_type))
    return gtable.Panel().title(title).description(description).datasource(TEMPO).with_target(q).span(w).height(h)


def service_map(title: str, description: str, *, w: int = 24, h: int = 10) -> gnode.Panel:
    q = gtempo.Dataquery().ref_id("A").datasource(TEMPO).query_type("serviceMap")
    return gnode.Panel().title(title).description(description).datasource(TEMPO).with_target(q).span(w).height(h)


def raw_panel(panel_type: str, title: str, description: str, *, datasource: gc.DataSourceRef,
              targets: list[dict[str, Any]], options: dict[str, Any] | None = None, w: int = 24,
              h: int = 10) -> gd.Panel:
    """The escape hatch: the SDK's generic panel with a raw type, raw targets and raw options."""
    return (gd.Panel().type(panel_type).title(title).description(description).datasource(datasource)
            .targets([_RawTarget(t) for t in targets]).options(options or {}).span(w).height(h))


def trace_view(title: str, description: str, trace_id_expr: str, *, h: int = 14) -> gd.Panel:
    """A `traces` panel showing one trace by id (the SDK has no builder for this panel type)."""
    return raw_panel("traces", title, description, datasource=TEMPO, h=h, targets=[{
        "refId": "A", "datasource": {"type": "tempo", "uid": TEMPO.uid}, "queryType": "traceql",
        "query": trace_id_expr}])


def event_id_box() -> gd.TextBoxVariable:
    """The `event_id` text box of the boards with state-change events: `.*` (every event) or one event id."""
    return (gd.TextBoxVariable("event_id").label("Event id").default_value(".*").description(
        "Keep one state-change event in the Loki panels: paste a gatewatch.event.id (16 hex digits), e.g. one of "
        "a request span's gatewatch.event.ids. `.*` shows every event."))


def text(title: str, markdown: str, *, w: int = 24, h: int = 3) -> gtext.Panel:
    return gtext.Panel().title(title).content(markdown).mode(gmtext.TextMode.MARKDOWN).span(w).height(h)


class _RawTarget:
    """A target given as raw JSON, wrapped so the SDK's panel builder accepts it."""

    def __init__(self, payload: dict[str, Any]):
        self.payload = payload

    def build(self) -> "_RawTarget":
        return self

    def to_json(self) -> dict[str, Any]:
        return self.payload


def query_var(name: str, label: str, query: str, description: str, *, multi: bool = True) -> gd.QueryVariable:
    # The query as a plain `label_values(...)` string: every Grafana version runs it as written (and migrates it
    # to its current editor model on load), where the object forms differ between versions.
    v = (gd.QueryVariable(name).label(label).description(description).datasource(PROMETHEUS).query(query)
         .definition(query).refresh(gm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(gm.VariableSort.ALPHABETICAL_ASC))
    if multi:
        v = v.multi(True).include_all(True).all_value(".*")
    return v


def new_dashboard(key: str, title: str, description: str) -> gd.Dashboard:
    """A Gatewatch board: fixed uid, shared tag, a dropdown of the other boards carrying time and variables."""
    return (gd.Dashboard(title).uid(UID[key]).description(description).tags([TAG]).editable()
            .time("now-1h", "now").refresh("30s").timezone("browser").tooltip(gm.DashboardCursorSync.CROSSHAIR)
            .link(gd.DashboardLink("Gatewatch").type(gm.DashboardLinkType.DASHBOARDS).tags([TAG])
                  .as_dropdown(True).include_vars(True).keep_time(True)))


def render(board: gd.Dashboard) -> dict[str, Any]:
    """The dashboard JSON: encoded by the SDK, panels numbered 1..n in layout order (stable across builds)."""
    model = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    n = 0
    for panel in model.get("panels", []):
        n += 1
        panel["id"] = n
        for inner in panel.get("panels", []):
            n += 1
            inner["id"] = n
    return model
