import socket

import pytest

from tests.support.otlp import OtlpReceiver
from tests.support.procs import Cluster


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
