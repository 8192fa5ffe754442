import os
import socket

import pytest
from hypothesis import settings

from tests.support.otlp import OtlpReceiver
from tests.support.procs import Cluster

# The fuzz tests (hypothesis, issue 18 category 5). `ci`, the suite's: a modest fixed budget, derandomized (the same
# examples on every run, so a failure reproduces), no deadline (the listener fuzz does real I/O), nothing written to
# a .hypothesis database in the checkout. `long`: thousands of examples from a fresh seed, for a run outside the
# suite (HYPOTHESIS_PROFILE=long python -m pytest tests/io/test_fuzz_listener.py tests/test_config_fuzz.py); a
# failure prints the seed and blob that replay it.
settings.register_profile("ci", max_examples=150, derandomize=True, deadline=None, database=None, print_blob=True)
settings.register_profile("long", max_examples=3000, deadline=None, database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config):
    """The warnings a compiled build silences (gatewatch/build_mode.py silenced_warnings: Cython's "never awaited"
    of an unstarted async generator, which CPython does not raise) are silenced inside tests too: pytest replaces
    the process's warning filters with its own for each test."""
    from gatewatch import build_mode

    for message in build_mode.silenced_warnings():
        config.addinivalue_line("filterwarnings", f"ignore:{message}:RuntimeWarning")


@pytest.fixture
def otlp():
    with OtlpReceiver() as rx:
        yield rx


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.stop_all()


@pytest.fixture
def blackhole():
    """An OTLP endpoint that accepts TCP connections and never answers: the worst kind of dead collector."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    srv.close()
