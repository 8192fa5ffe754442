"""The fault-injection soak behind bench/soak.py (issue 18, category 4: faults under sustained load).

One run, top down:

    soak.py       Soak: starts every peer and gatewatch (workers: 2), runs the load client and the monitor, walks
                  the schedule (each action's real start time recorded as an event), waits for the telemetry to
                  settle, takes the final scrapes
    schedule.py   the phases (what is injected when, and what is undone) as data, scaled to --duration
    monitor.py    once a second, in a thread: every worker's /metrics (per worker incarnation), the RSS and CPU of
                  every gatewatch process, the sink's counts, the machine's CPU
    analysis.py   the clients' requests per phase, and which failures each policy documents (judge)
    telemetry.py  every drop counted? gatewatch's counters against the sink's, per worker incarnation
    criteria.py   the pass/fail criteria
    render.py     the printed table and verdicts

What the soak runs against, each in its own process (restartable peers keep their port):

    gateway.py    gatewatch from this tree: its config (rewritten for a reload), its processes (supervisor,
                  workers, exporter children), scraping a worker's /metrics
    peers.py      the restartable peers: backends, the JWKS endpoint, the OTLP sink
    backend.py    a tiny asyncio HTTP/1.1 backend (one instance per process)
    sink.py       an OTLP/HTTP receiver on a fixed port, decoding with the official protobuf messages and counting
                  per gatewatch process
    jwks.py       the JWKS endpoint (aiohttp) and the RS256 key the clients' tokens are signed with
    redis.py      a real redis-server on a temp port
    client.py     the load generator: asyncio, raw HTTP/1.1, fixed concurrency, paced, one line per request

bench/soak.py puts bench/ on sys.path and imports this package as `faults`; it reuses bench/harness/ for child
processes (`harness.procs.Proc`: own process group, killed with the soak), free ports and the tree's state.
"""
