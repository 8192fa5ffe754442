"""Grafana dashboards, Grafana provisioning and Prometheus alert rules, generated as code (docs/dashboards.md).

    promql.py        PromQL from telemetry.names only (series names, selectors, rates, quantiles)
    loki.py          LogQL for the decision logs as Loki stores them
    panels.py        grafana-foundation-sdk helpers: datasources, panel shapes, the raw-panel escape hatch
    overview.py, journey.py, balancer_health.py, decisions.py, itself.py, traffic.py,
    protocols.py     the seven boards
    alerts.py        the alert rules (with what each compares, for tests)
    provisioning.py  datasources wired to each other, the dashboard provider
    options.py       build options (SLOs, Grafana URL)
    build.py         render everything to the output layout (`gatewatch dashboards build`)
    generated/       the output with the default options, committed
"""
