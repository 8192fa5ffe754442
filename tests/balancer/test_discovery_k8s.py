"""Kubernetes discovery against a stand-in API server on loopback (tests/support/k8s_api.py) that speaks the real
list-and-watch protocol: LIST then WATCH from the list's resourceVersion, changes streamed as they happen, BOOKMARK
events moving the resume point, ERROR events and 410 Gone (relist), reconnects with backoff, endpoint conditions
(ready / serving / terminating → draining), in-cluster credentials over TLS."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from gatewatch.balancer.config import KubernetesDiscoveryConfig
from gatewatch.balancer.discovery import Failed, Found
from gatewatch.balancer.discovery.kubernetes import EndpointSliceSource, slice_instances
from gatewatch.telemetry.names import Attr, DiscoveryResult, Event

from tests.balancer.test_discovery_dns import balancer, until
from tests.support.certs import Pki
from tests.support.k8s_api import K8sApi, endpoint_slice

FAST = {"backoff_base_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 5}
A = {"ip": "10.1.0.1", "pod": "api-a", "ready": True, "zone": "eu-1a"}
B = {"ip": "10.1.0.2", "pod": "api-b", "ready": True}
C = {"ip": "10.1.0.3", "pod": "api-c", "ready": True}


@pytest.fixture
async def api(tmp_path):
    server = K8sApi(token="s3cret")
    server.base = await server.start()
    server.token_file = tmp_path / "token"
    server.token_file.write_text("s3cret\n")
    yield server
    await server.close()


def pool(api: K8sApi, **k8s) -> dict:
    return {"name": "p", "discovery": {"kubernetes": {"namespace": "shop", "service": "api", "api_server": api.base,
                                                      "token_file": str(api.token_file), **FAST, **k8s}}}


@pytest.mark.parametrize(("conditions", "expected"), [
    ({"ready": True}, "serving"),
    ({}, "serving"),  # unset ready means ready (EndpointConditions)
    ({"ready": False}, None),  # starting or failing readiness: left out
    ({"ready": False, "serving": True, "terminating": True}, "draining"),
    ({"ready": False, "serving": False, "terminating": True}, "draining"),
])
def test_endpoint_conditions(conditions, expected):
    sl = endpoint_slice("api-x", "api", [{"ip": "10.1.0.9", "pod": "api-x", **conditions}])
    instances, problem = slice_instances({"api-x": sl}, None)
    assert problem is None
    got = None if not instances else ("draining" if instances[0].draining else "serving")
    assert got == expected


def test_port_by_name_number_or_the_only_one():
    sl = endpoint_slice("s", "api", [A], ports=[{"name": "http", "port": 8080}, {"name": "metrics", "port": 9090}])
    assert [i.port for i in slice_instances({"s": sl}, "metrics")[0]] == [9090]
    assert [i.port for i in slice_instances({"s": sl}, 8080)[0]] == [8080]
    instances, problem = slice_instances({"s": sl}, None)
    assert instances == () and "set 'port'" in problem
    one = endpoint_slice("s", "api", [A])
    assert [(i.id, i.host, i.port, i.zone) for i in slice_instances({"s": one}, None)[0]] == [
        ("api-a", "10.1.0.1", 8080, "eu-1a")]


async def test_list_then_watch_follows_changes(api):
    api.apply(endpoint_slice("api-1", "api", [A, B]))
    api.apply(endpoint_slice("other-1", "other", [C]))  # another Service's slice: not selected
    async with balancer(pool(api)) as b:
        assert b.ids() == ["api-a", "api-b"]
        kind, params = api.requests[0]
        assert kind == "list" and params["labelSelector"] == "kubernetes.io/service-name=api"
        await until(lambda: api.watchers == 1, "the watch")
        kind, params = api.requests[-1]
        assert kind == "watch" and params["resourceVersion"] == "102" and params["allowWatchBookmarks"] == "true"
        rv = api.apply(endpoint_slice("api-1", "api", [A, {**B, "terminating": True, "ready": False}, C]))
        await until(lambda: b.ids() == ["api-a", "api-b", "api-c"], "the modified slice")
        assert b.rt.pools["p"].states()["api-b"] == "draining"
        change = b.events(Event.DISCOVERY_CHANGE)[-1].attributes
        assert change[Attr.DISCOVERY_DETAIL] == f"k8s EndpointSlice shop/api-1 modified rv {rv}"
        assert (change[Attr.DISCOVERY_ADDED], change[Attr.DISCOVERY_UPDATED]) == (["api-c"], ["api-b"])
        api.apply(endpoint_slice("api-2", "api", [{"ip": "10.1.0.4", "pod": "api-d"}]))
        await until(lambda: "api-d" in b.ids(), "a new slice")
        api.delete("api-1")
        await until(lambda: b.ids() == ["api-d"], "a deleted slice")
        assert [k for k, _ in api.requests] == ["list", "watch"]  # all of it on one watch
        state = b.rt.state()["p"]
        assert state["source"] == "k8s" and state["instances"][0]["source"] == "k8s"


async def test_bookmarks_move_the_resume_point_without_a_relist(api):
    api.apply(endpoint_slice("api-1", "api", [A]))
    async with balancer(pool(api)) as b:
        await until(lambda: api.watchers == 1, "the watch")
        rv = api.bookmark()
        await asyncio.sleep(0)  # let the stream carry it; the assertion below waits on the outcome
        await until(lambda: b.rt._discovery["p"].source.rv == str(rv), "the bookmark")
        api.end_watches()  # the server ends the watch (timeoutSeconds): resume from the bookmark
        await until(lambda: len(api.requests) == 3 and api.watchers == 1, "the resumed watch")
        assert [k for k, _ in api.requests] == ["list", "watch", "watch"]
        assert api.requests[-1][1]["resourceVersion"] == str(rv)
        assert b.events(Event.DISCOVERY_FAILURE) == []


async def test_410_gone_relists(api):
    api.apply(endpoint_slice("api-1", "api", [A]))
    async with balancer(pool(api)) as b:
        await until(lambda: api.watchers == 1, "the watch")
        api.end_watches()
        api.apply(endpoint_slice("api-1", "api", [A, B]))  # happens while nobody watches ...
        api.compact()  # ... and is compacted away: resuming from the old resourceVersion gets 410
        await until(lambda: b.ids() == ["api-a", "api-b"], "the relist")
        kinds = [k for k, _ in api.requests]
        assert kinds[:3] == ["list", "watch", "watch"] and "list" in kinds[3:]
        assert b.sample("gatewatch_discovery_refreshes_total", source="k8s", result="expired") >= 1
        [expired] = b.events(Event.DISCOVERY_FAILURE)[:1]
        assert expired.attributes[Attr.DISCOVERY_RESULT] == "expired" and "relisting" in expired.body


async def test_error_event_on_an_open_watch(api):
    api.apply(endpoint_slice("api-1", "api", [A]))
    async with balancer(pool(api)) as b:
        await until(lambda: api.watchers == 1, "the watch")
        api.error(410, "too old resource version")
        await until(lambda: [k for k, _ in api.requests].count("list") == 2, "the relist")
        await until(lambda: api.requests[-1][0] == "watch" and api.watchers == 1, "the new watch")
        api.error(500, "etcd is sad")
        await until(lambda: b.sample("gatewatch_discovery_refreshes_total", source="k8s", result="error") >= 1,
                    "the error counted")
        await until(lambda: api.watchers == 1, "the watch again")
        assert b.ids() == ["api-a"]


async def test_http_errors_back_off_and_keep_the_last_good_set(api, tmp_path):
    api.apply(endpoint_slice("api-1", "api", [A]))
    async with balancer(pool(api)) as b:
        await until(lambda: api.watchers == 1, "the watch")
        api.fail_next = [500, 503, 403]
        api.end_watches()
        await until(lambda: not api.fail_next and api.watchers == 1, "the recovery")
        assert b.ids() == ["api-a"]
        assert b.sample("gatewatch_discovery_refreshes_total", source="k8s", result="error") == 3
        details = [e.attributes[Attr.DISCOVERY_DETAIL] for e in b.events(Event.DISCOVERY_FAILURE)]
        assert details == ["k8s shop/api: watch: HTTP 500: injected failure"]  # one event for the streak
        api.apply(endpoint_slice("api-1", "api", [A, B]))
        await until(lambda: b.ids() == ["api-a", "api-b"], "changes after the recovery")
        assert [e.attributes[Attr.DISCOVERY_RESULT] for e in b.events(Event.DISCOVERY_FAILURE)] == ["error", "ok"]


async def test_wrong_token_is_an_error(api):
    api.token_file.write_text("wrong")
    async with balancer(pool(api)) as b:
        assert b.ids() == []
        [failed] = b.events(Event.DISCOVERY_FAILURE)
        assert failed.attributes[Attr.DISCOVERY_DETAIL] == "k8s shop/api: list: HTTP 401: Unauthorized"


async def test_paged_list():
    api = K8sApi()
    base = await api.start()
    try:
        for n in range(5):
            api.apply(endpoint_slice(f"api-{n}", "api", [{"ip": f"10.1.0.{n}", "pod": f"api-{n}"}]))
        src = EndpointSliceSource(KubernetesDiscoveryConfig(namespace="shop", service="api", api_server=base),
                                  page_size=2)
        seen: list = []
        task = asyncio.ensure_future(src.run(seen.append))
        await until(lambda: seen, "the list")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert [p["continue"] for k, p in api.requests if k == "list" and "continue" in p] == ["2", "4"]
        [found] = seen
        assert isinstance(found, Found) and [i.id for i in found.instances] == [f"api-{n}" for n in range(5)]
        assert found.detail == "k8s EndpointSlice list rv 105 (5 slices)"
    finally:
        await api.close()


async def test_in_cluster_credentials_over_tls(tmp_path):
    pki = Pki(tmp_path)
    leaf = pki.leaf("apiserver", names=["127.0.0.1"])
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(leaf.cert, leaf.key)
    api = K8sApi(token="in-cluster-token")
    await api.start(ssl_context=ctx)
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("in-cluster-token")
    (sa / "ca.crt").write_text(open(pki.ca_file).read())
    api.apply(endpoint_slice("api-1", "api", [A]))
    try:
        env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(api.port)}
        src = EndpointSliceSource(KubernetesDiscoveryConfig(namespace="shop", service="api"), env=env,
                                  sa_dir=str(sa))
        seen: list = []
        task = asyncio.ensure_future(src.run(seen.append))
        await until(lambda: seen, "the list")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert isinstance(seen[0], Found) and [i.id for i in seen[0].instances] == ["api-a"]
        outside = EndpointSliceSource(KubernetesDiscoveryConfig(namespace="shop", service="api"), env={})
        failed: list = []
        task = asyncio.ensure_future(outside.run(failed.append))
        await until(lambda: failed, "the failure")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert isinstance(failed[0], Failed) and failed[0].result is DiscoveryResult.ERROR
        assert "not in a cluster" in failed[0].detail
    finally:
        await api.close()
