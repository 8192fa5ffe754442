"""Every query the generated boards, rules and provisioning contain, read back from the generated files.

Tests read the output (what Grafana and Prometheus will load), not the generator's internals. Primitives:
`Query` (where it comes from, its kind, its text, whether it asks for exemplars), `all_queries(files)`,
`variables(files)`, `substitute(expr, values)` (what Grafana would send for a range of `window`), and a small
PromQL reader: `promql_metrics`, `promql_labels`, `promql_matchers`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import yaml

from gatewatch.dashboards.build import DASHBOARDS_DIR, DATASOURCES_FILE, RULES_FILE


@dataclass(frozen=True)
class Query:
    where: str  # "gatewatch-overview / Requests/s by route [A]"
    kind: str  # promql | variable | rule | logql | traceql | legend | link
    text: str
    exemplar: bool = False
    signals: tuple[str, ...] = ()  # rules: the sub-expressions they compare


def _walk_panels(panels):
    for p in panels:
        yield p
        yield from _walk_panels(p.get("panels", []))


def dashboards(files: dict[str, str]) -> dict[str, dict]:
    return {path.rsplit("/", 1)[1].removesuffix(".json"): json.loads(text) for path, text in files.items()
            if path.startswith(DASHBOARDS_DIR)}


def all_queries(files: dict[str, str]) -> list[Query]:
    out: list[Query] = []
    for uid, board in dashboards(files).items():
        for panel in _walk_panels(board.get("panels", [])):
            ds = (panel.get("datasource") or {}).get("uid")
            for t in panel.get("targets", []):
                where = f"{uid} / {panel['title']} [{t.get('refId')}]"
                tds = (t.get("datasource") or {}).get("uid", ds)
                if tds == "prometheus":
                    out.append(Query(where, "promql", t["expr"], bool(t.get("exemplar"))))
                    if t.get("legendFormat"):
                        out.append(Query(where, "legend", t["legendFormat"]))
                elif tds == "loki":
                    out.append(Query(where, "logql", t["expr"]))
                elif tds == "tempo" and t.get("queryType") == "traceql":
                    out.append(Query(where, "traceql", t["query"]))
            for link in (panel.get("fieldConfig", {}).get("defaults", {}).get("links") or []):
                out.append(Query(f"{uid} / {panel['title']} (link {link['title']})", "link", link["url"]))
        for v in board.get("templating", {}).get("list", []):
            if v.get("type") == "query":
                query = v["query"] if isinstance(v["query"], str) else v["query"]["query"]
                out.append(Query(f"{uid} / ${v['name']}", "variable", query))
    rules = yaml.safe_load(files[RULES_FILE])
    for group in rules["groups"]:
        for r in group["rules"]:
            out.append(Query(f"rule {r['alert']}", "rule", r["expr"]))
            for k in ("summary", "description", "dashboard"):
                out.append(Query(f"rule {r['alert']} ({k})", "link", r["annotations"][k]))
    ds = yaml.safe_load(files[DATASOURCES_FILE])
    for d in ds["datasources"]:
        for q in d["jsonData"].get("tracesToMetrics", {}).get("queries", []):
            text = q["query"].replace("$$", "$").replace("{$__tags}", "")
            out.append(Query(f"datasource tempo / trace to metrics: {q['name']}", "promql", text))
    return out


VARIABLE = re.compile(r"^label_values\((.*),\s*(\w+)\)$")


def variable_parts(query: str) -> tuple[str, str]:
    """`label_values(selector, label)` → (selector, label)."""
    m = VARIABLE.match(query.strip())
    assert m, f"unsupported variable query {query!r}"
    return m.group(1), m.group(2)


def substitute(expr: str, values: dict[str, str], rate_window: str = "30s", range_: str = "2m") -> str:
    """What Grafana sends: `$__rate_interval`/`$__range` become durations, `$var` the variable's regex."""
    expr = expr.replace("$__rate_interval", rate_window).replace("$__range", range_)
    for name, value in sorted(values.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace("${" + name + ":regex}", value).replace("$" + name, value)
    return expr


# --- a small PromQL reader (enough for the generated expressions) -------------------------------------------

STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
MATCHERS = re.compile(r"\{([^{}]*)\}")
MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*")')
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
IDENT = re.compile(r"(?<![\w$.])([A-Za-z_:][A-Za-z0-9_:]*)\b(?!\s*\()")
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
            "offset", "inf", "nan", "Inf", "NaN"}


def _label_replace_labels(expr: str) -> list[str]:
    labels = []
    for m in re.finditer(r"label_replace\(", expr):
        depth, args, cur, i = 1, [], "", m.end()
        while depth:
            c = expr[i]
            if c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
                if not depth:
                    break
            if c == "," and depth == 1:
                args.append(cur)
                cur = ""
            else:
                cur += c
            i += 1
        args.append(cur)
        labels += [json.loads(args[1].strip()), json.loads(args[3].strip())]
    return labels


def promql_matchers(expr: str) -> list[tuple[str, str, str]]:
    """(label, op, value) of every matcher."""
    out = []
    for block in MATCHERS.findall(expr):
        for label, op, value in MATCHER.findall(block):
            out.append((label, op, json.loads(value)))
    return out


def promql_labels(expr: str) -> set[str]:
    labels = {label for label, _, _ in promql_matchers(expr)}
    for group in GROUPING.findall(expr):
        labels |= {x.strip() for x in group.split(",") if x.strip()}
    return labels | set(_label_replace_labels(expr))


def promql_metrics(expr: str) -> set[str]:
    rest = STRING.sub('""', expr)
    rest = MATCHERS.sub("", rest)
    rest = re.sub(r"\[[^\]]*\]", "", rest)
    rest = GROUPING.sub("", rest)
    rest = re.sub(r"\b\d+(\.\d+)?(e[+-]?\d+)?\b", "", rest)
    return {m for m in IDENT.findall(rest) if m not in KEYWORDS}
