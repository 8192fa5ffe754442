import pytest

from tests.edge.policies.support import RedisServer


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path).start()
    yield server
    server.kill()


@pytest.fixture
async def echo_port():
    from tests.edge.policies.support import start_echo

    runner, port = await start_echo()
    yield port
    await runner.cleanup()
