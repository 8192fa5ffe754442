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
