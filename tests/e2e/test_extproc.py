"""End-to-end tests of the ext_proc deployment shape (issue 13): a real Envoy running
envoy-config/envoy-extproc.yaml (Envoy's ext_proc filter, the Inference Extension gateways' way)
in front of the mock model servers, calling the real `llm-router-extproc`
(target/release/llm-router-extproc) that runs the unchanged dist/llm_router.wasm.

Every Envoy here runs a variant of the shipped envoy-extproc.yaml (harness ports, the server's
ports, and per test: body mode FULL_DUPLEX_STREAMED or BUFFERED, failure_mode_allow, TLS to the
server). The servers get the plugin configuration of tests/scenarios/routing.json (the one
envoy.yaml inlines) unless a test needs tighter limits.

What the upstream received is read from the mock's echo, as in test_routing.py; where a request
went from `x-mock-instance`; the server's own view from its /metrics.

Build first: `make build`, `cargo build --release -p llm-router-extproc -p llm-router-sidecar`.
A missing binary or .wasm fails these tests.
"""

from __future__ import annotations

import copy
import json
import secrets
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

import harness
import test_hostile as hostile
import test_ratelimit as ratelimit
import test_routing as routing
from harness import get, post_json, post_raw, stream_sse, wait_for

EXTPROC_CONFIG = harness.REPO_ROOT / "envoy-config" / "envoy-extproc.yaml"
SIDECAR_BIN = harness.REPO_ROOT / "target" / "release" / "llm-router-sidecar"
PLUGIN = routing.TABLE["plugin_config"]
CHAT = "/v1/chat/completions"
SMALL_MODEL = routing.SMALL_MODEL
LARGE_MODEL = routing.LARGE_MODEL
TOKEN = secrets.token_hex(16)
ENV = {"LLM_ROUTER_PUSH_TOKEN": TOKEN}
PUSH_PATH = PLUGIN["endpoints"]["push_path"]
EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
MODES = ["FULL_DUPLEX_STREAMED", "BUFFERED"]
SMALL = {"small-1": 8101, "small-2": 8102, "small-3": 8103}
ADDR = {name: f"127.0.0.1:{port}" for name, port in {**SMALL, "large-1": 8201, "large-2": 8202}.items()}


# ---------------------------------------------------------------------------------------------
# Envoy configuration variants


def shipped() -> dict:
    return yaml.safe_load(EXTPROC_CONFIG.read_text())


def hcm_of(cfg: dict) -> dict:
    (listener,) = cfg["static_resources"]["listeners"]
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


def ext_proc_of(cfg: dict) -> dict:
    (f,) = [f for f in hcm_of(cfg)["http_filters"] if f["name"] == "envoy.filters.http.ext_proc"]
    return f["typed_config"]


def cluster_of(cfg: dict, name: str) -> dict:
    (c,) = [c for c in cfg["static_resources"]["clusters"] if c["name"] == name]
    return c


def tls_socket() -> dict:
    """Envoy's TLS to the server without verification (the generated certificate)."""
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "sni": "llm-router-extproc"}}


def health_cluster(name: str, port: int, service: str) -> dict:
    """A cluster whose only job is Envoy's gRPC health check of `service` on the server."""
    return {"name": name, "type": "STATIC", "connect_timeout": "1s",
            "typed_extension_protocol_options": cluster_of(shipped(), "llm_router_extproc")[
                "typed_extension_protocol_options"],
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                             "port_value": port}}}}]}]},
            "health_checks": [{"timeout": "1s", "interval": "0.5s", "no_traffic_interval": "0.5s",
                               "unhealthy_threshold": 1,
                               "healthy_threshold": 1,
                               "grpc_health_check": {"service_name": service}}]}


def gateway_config(srv: harness.ExtProcServer, mode: str = "FULL_DUPLEX_STREAMED",
                   fail_open: bool = False, tls: bool | None = None,
                   health_services: dict[str, str] | None = None) -> tuple[Path, int]:
    """envoy-extproc.yaml pointed at `srv`, on free listener/admin ports; (path, listener)."""
    cfg = shipped()
    listener, admin = harness.free_port(), harness.free_port()
    cfg["admin"]["address"]["socket_address"]["port_value"] = admin
    cfg["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = listener
    ep = ext_proc_of(cfg)
    if mode != "FULL_DUPLEX_STREAMED":
        pm = ep["processing_mode"]
        pm["request_body_mode"] = pm["response_body_mode"] = mode
        # Envoy's ProcessingMode value SKIP (trailers are not sent to the server), not a test skip.
        pm["request_trailer_mode"] = pm["response_trailer_mode"] = "SKIP"
    if fail_open:
        ep["failure_mode_allow"] = True
        # Plain load balancing for what the server could not inspect (see the file's header).
        routes = hcm_of(cfg)["route_config"]["virtual_hosts"][0]["routes"]
        for r in routes:
            if "direct_response" in r:
                r.pop("direct_response")
                r.pop("response_headers_to_add", None)
                r["route"] = {"cluster": "small", "timeout": "300s"}
    ext = cluster_of(cfg, "llm_router_extproc")
    (lb_ep,) = ext["load_assignment"]["endpoints"][0]["lb_endpoints"]
    lb_ep["endpoint"]["address"]["socket_address"]["port_value"] = srv.grpc_port
    lb_ep["endpoint"]["health_check_config"]["port_value"] = srv.health_port
    if tls if tls is not None else srv.tls:
        ext["transport_socket"] = tls_socket()
    for name, service in (health_services or {}).items():
        cfg["static_resources"]["clusters"].append(health_cluster(name, srv.health_port, service))
    return harness.write_config(json.dumps(cfg, indent=1), f"envoy-extproc-{mode}.json"), listener


def in_proxy_config(plugin: dict) -> tuple[Path, int]:
    """The shipped envoy.yaml (Wasm filter in Envoy) with `plugin`, on free ports."""
    cfg = hostile.shipped_config()
    hostile.plugin_of(cfg)["configuration"]["value"] = json.dumps(plugin, indent=2)
    return hostile.write_variant(cfg, "envoy-in-proxy.json")


def with_tenants(limits: dict[str, tuple[int, int]]) -> dict:
    """routing.json's plugin configuration with extra tenant limits {tenant: (rpm, tpm)}."""
    plugin = copy.deepcopy(PLUGIN)
    for t, (rpm, tpm) in limits.items():
        plugin["tenants"]["limits"][t] = {"requests_per_minute": rpm, "tokens_per_minute": tpm}
    return plugin


# ---------------------------------------------------------------------------------------------
# fixtures and helpers


class Stack:
    def __init__(self, srv: harness.ExtProcServer, envoy: harness.EnvoyProcess, port: int,
                 mode: str):
        self.srv, self.envoy, self.port, self.mode = srv, envoy, port, mode

    def chat(self, content: str = "Say hi", model: str = "anything", headers=None, **extra):
        body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
        return post_json(CHAT, body, headers, port=self.port, timeout=30)


@pytest.fixture(scope="module", autouse=True)
def built():
    for path, how in ((harness.WASM_PATH, "make build"),
                      (harness.EXTPROC_BIN, "cargo build --release -p llm-router-extproc"),
                      (SIDECAR_BIN, "cargo build --release -p llm-router-sidecar")):
        if not Path(path).exists():
            pytest.fail(f"{path} is missing: run `{how}`", pytrace=False)


@pytest.fixture(scope="module", params=MODES, ids=["full-duplex", "buffered"])
def stack(request, envoy_bin, mocks):
    """One server (plaintext, routing.json's plugin configuration) and one Envoy calling it in
    the parametrized body mode."""
    with harness.start_extproc(PLUGIN, env=ENV) as srv:
        path, port = gateway_config(srv, request.param)
        with harness.start_envoy(path, concurrency=2) as e:
            yield Stack(srv, e, port, request.param)


def start_stack(extproc_factory, envoy_factory, plugin=PLUGIN, mode="FULL_DUPLEX_STREAMED",
                **kw) -> Stack:
    srv = extproc_factory(plugin, env=ENV, tls=kw.pop("server_tls", False))
    path, port = gateway_config(srv, mode, **kw)
    return Stack(srv, envoy_factory(path, concurrency=2), port, mode)


def served(mocks) -> int:
    return sum(s["total"] for s in mocks.all_stats().values())


def series(text: str, name: str) -> dict[tuple, float]:
    return {tuple(sorted(labels.items())): v for n, labels, v in harness.parse_prometheus(text)
            if n == name}


def push(port: int, snapshot: dict, token: str = TOKEN) -> harness.Response:
    return post_json(PUSH_PATH, snapshot, {"authorization": f"Bearer {token}"}, port=port)


# ---------------------------------------------------------------------------------------------
# 1. The shared scenario table through Envoy + ext_proc, in both body modes


def test_shipped_config_is_the_inference_gateway_shape():
    """What the tests below rely on is what the file ships: fail closed, full duplex with
    trailers, the endpoint from envoy.lb, the same path hardening as envoy.yaml."""
    cfg = shipped()
    ep = ext_proc_of(cfg)
    assert ep["failure_mode_allow"] is False
    pm = ep["processing_mode"]
    assert pm["request_body_mode"] == pm["response_body_mode"] == "FULL_DUPLEX_STREAMED"
    assert pm["request_trailer_mode"] == pm["response_trailer_mode"] == "SEND"
    assert ep["allow_mode_override"] is True and ep["message_timeout"]
    assert ep["metadata_options"]["receiving_namespaces"]["untyped"] == ["envoy.lb"]
    for tier in ("small", "large"):
        c = cluster_of(cfg, f"{tier}_picked")
        assert c["type"] == "ORIGINAL_DST"
        assert c["original_dst_lb_config"]["metadata_key"] == {
            "key": "envoy.lb", "path": [{"key": "x-gateway-destination-endpoint"}]}
    hcm, ref = hcm_of(cfg), hostile.hcm_of(hostile.shipped_config())
    for k in ("normalize_path", "merge_slashes", "path_with_escaped_slashes_action"):
        assert hcm[k] == ref[k], k
    assert any("direct_response" in r and r["match"]["headers"][0]["name"] == ":method"
               for r in hcm["route_config"]["virtual_hosts"][0]["routes"])


@pytest.mark.parametrize("sc", routing.SCENARIOS, ids=[s["name"] for s in routing.SCENARIOS])
def test_scenario(stack, mocks, sc):
    routing.check_scenario(sc, mocks, stack.port)


def settled(srv: harness.ExtProcServer) -> str:
    """/metrics once no stream is open: Envoy ends its ext_proc stream (and the filter counts
    the request) just after the client has its answer."""
    return wait_for(lambda: (m := srv.metrics()) and harness.metric_value(
        m, "llm_router_extproc_streams_active") == 0 and m, what="no ext_proc stream open")


def test_metrics_on_the_server_with_labels(stack, mocks):
    before = settled(stack.srv)
    for _ in range(3):
        assert stack.chat(headers={"x-tenant-id": "metrics"}).status == 200
    for _ in range(2):
        assert stack.chat(model="gpt-4o", headers={"x-tenant-id": "metrics"}).status == 200

    def delta(after, name, **labels):
        return (harness.metric_value(after, name, **labels)
                - harness.metric_value(before, name, **labels))

    after = settled(stack.srv)
    assert delta(after, "llm_router_requests_total", tier="small", model=SMALL_MODEL) == 3, after
    assert delta(after, "llm_router_requests_total", tier="large", model=LARGE_MODEL) == 2, after
    assert delta(after, "llm_router_extproc_streams_total") >= 5
    assert "# TYPE llm_router_extproc_streams_total counter" in after
    names = [line.split("{")[0].split(" ")[0] for line in after.splitlines()
             if line and not line.startswith("#")]
    assert names and not [n for n in names if ";" in n or "=" in n], \
        "a metric name still carries its labels"
    req_series = [dict(k) for k in series(after, "llm_router_requests_total")]
    assert req_series and all({"tier", "model", "status"} <= set(lb) for lb in req_series), \
        req_series


def test_no_stall_per_request(stack, mocks):
    """Sequential small requests through ext_proc take milliseconds. The server once answered
    without TCP_NODELAY: every request then waited for Envoy's delayed ACKs (about 44 ms in
    BUFFERED, 88 ms in FULL_DUPLEX_STREAMED, against under 1 ms in-proxy)."""
    for _ in range(3):
        stack.chat()
    times = sorted(stack.chat(headers={"x-tenant-id": "latency"}).elapsed for _ in range(21))
    assert times[10] < 0.03, f"median {times[10] * 1000:.1f} ms per request: {times}"


# ---------------------------------------------------------------------------------------------
# 2. Limits


def test_rate_limit_is_answered_as_429_in_openai_shape(extproc_factory, envoy_factory, mocks):
    st = start_stack(extproc_factory, envoy_factory, with_tenants({"tight": (3, 1_000_000)}))
    before = served(mocks)
    rs = [st.chat(headers={"x-tenant-id": "tight"}) for _ in range(5)]
    assert [r.status for r in rs] == [200, 200, 200, 429, 429], [r.text[:200] for r in rs]
    assert served(mocks) - before == 3
    for r in rs[:3]:
        assert r.headers["x-ratelimit-limit-requests"] == "3", r.headers
    assert [r.headers["x-ratelimit-remaining-requests"] for r in rs[:3]] == ["2", "1", "0"]
    for r in rs[3:]:
        ratelimit.assert_429(r, "requests", limit_requests=3)


def test_two_envoys_calling_one_server_share_its_limits(extproc_factory, envoy_factory, mocks):
    """One server replica gives a cluster-wide limit: 6 requests per minute in total, whichever
    gateway they come through."""
    srv = extproc_factory(with_tenants({"shared": (6, 1_000_000)}), env=ENV)
    ports = []
    for _ in range(2):
        path, port = gateway_config(srv)
        envoy_factory(path, concurrency=2)
        ports.append(port)
    before = served(mocks)
    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
    rs = harness.burst(16, 8, lambda i: post_json(CHAT, body, {"x-tenant-id": "shared"},
                                                  port=ports[i % 2], timeout=30))
    by_gateway = {p: Counter(r.status for i, r in enumerate(rs) if ports[i % 2] == p)
                  for p in ports}
    statuses = Counter(r.status for r in rs)
    assert statuses == Counter({200: 6, 429: 10}), by_gateway
    assert served(mocks) - before == 6
    # In-proxy, each Envoy would have admitted 6 on its own (12 in total).
    for r in rs:
        if r.status == 429:
            ratelimit.assert_429(r, "requests", limit_requests=6)


# ---------------------------------------------------------------------------------------------
# 3. Endpoint picking from the sidecar's push to the server


def sidecar_config(srv: harness.ExtProcServer, pool: list[str]) -> Path:
    cfg = {"pools": {"small": pool}, "interval_ms": 200, "scrape_timeout_ms": 150,
           "push_url": f"http://127.0.0.1:{srv.metrics_port}{PUSH_PATH}",
           "push_token_env": "LLM_ROUTER_PUSH_TOKEN"}
    return harness.write_config(json.dumps(cfg), "sidecar.json")


def test_endpoint_picked_from_the_sidecar_push(extproc_factory, envoy_factory,
                                               process_factory, mocks):
    st = start_stack(extproc_factory, envoy_factory)
    loads = {"small-1": (4, 2, 0.3), "small-2": (0, 0, 0.05), "small-3": (3, 1, 0.2)}
    try:
        for n, (w, r, kv) in loads.items():
            mocks.set_load(n, waiting=w, running=r, kv_cache=kv)
        # Before any push: no pick, the pool's own round robin.
        rs = [st.chat() for _ in range(6)]
        assert {r.headers["x-mock-instance"] for r in rs} == set(SMALL)
        assert all("x-gateway-destination-endpoint" not in r.mock["headers"] for r in rs)
        # A push with the wrong token is refused by the filter's own push handler.
        bad = push(st.srv.metrics_port, {"pools": {"small": []}}, token="wrong")
        assert bad.status == 403, bad
        sc = process_factory([SIDECAR_BIN, "--config", sidecar_config(st.srv, list(
            ADDR[n] for n in SMALL))], "sidecar", env=ENV)
        wait_for(lambda: "first snapshot pushed" in sc.log_text() or not sc.running(),
                 timeout=5, what="the sidecar's first push")
        assert sc.running(), sc.log_text()
        rs = [st.chat() for _ in range(6)]
        assert [r.headers["x-mock-instance"] for r in rs] == ["small-2"] * 6, \
            [r.headers.get("x-mock-instance") for r in rs]
        for r in rs:
            assert r.mock["headers"]["x-gateway-destination-endpoint"] == ADDR["small-2"]
            assert r.mock["headers"]["x-llm-model-type"] == "small"
        # The load moves: so do the picks (the sidecar's next pushes).
        mocks.set_load("small-2", waiting=5, running=4, kv_cache=0.7)
        mocks.set_load("small-3", waiting=0, running=0, kv_cache=0.01)
        wait_for(lambda: st.chat().headers["x-mock-instance"] == "small-3", timeout=5,
                 what="picks to follow the load to small-3")
        m = st.srv.metrics()
        assert harness.metric_value(m, "llm_router_endpoint_picked_total", pool="small",
                                    endpoint=ADDR["small-2"]) >= 6, m
        assert harness.metric_value(m, "llm_router_extproc_push_requests_total") >= 2
    finally:
        for n in SMALL:
            mocks.set_load(n, waiting=0, running=0, kv_cache=0.0)


# ---------------------------------------------------------------------------------------------
# 4. Streaming


@pytest.mark.parametrize("stack", ["FULL_DUPLEX_STREAMED"], indirect=True)
def test_sse_events_pass_one_by_one(stack, mocks):
    body = {"model": "anything", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "stream please"}]}
    res = stream_sse(CHAT, body, {"x-mock-tokens": "5", "x-mock-token-delay-ms": "250",
                                  "x-tenant-id": "sse"}, port=stack.port)
    assert res.status == 200 and res.done, res.raw[:300]
    times = [e.t for e in res.events if not e.done]
    # 5 tokens 250 ms apart: if the stream were buffered anywhere, all would arrive at once.
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len([g for g in gaps[:4] if g > 0.15]) >= 3, f"events not streamed: gaps {gaps}"
    assert res.usage and res.usage["completion_tokens"] == 5, res.usage
    assert res.headers.get("x-ratelimit-limit-tokens"), res.headers


# ---------------------------------------------------------------------------------------------
# 5. Hostile input


@pytest.mark.parametrize("stack", ["FULL_DUPLEX_STREAMED"], indirect=True)
def test_non_utf8_header_values_are_served_and_inspected(stack, mocks):
    for name, value in hostile.REQUEST_HEADER_CASES.values():
        r = hostile.raw_request(stack.port, "POST", CHAT, [(name, value)],
                                hostile.chat_bytes("obs-text in a request header"))
        assert r.status == 200 and r.mock is not None, (name, r.status, r.body[:300])
        assert r.mock["headers"]["x-llm-model-type"] == "small", (name, r.mock["headers"])
        assert r.mock["body"]["model"] == SMALL_MODEL
    for stream in (False, True):
        extra = {"stream": True} if stream else {}
        r = hostile.raw_request(stack.port, "POST", CHAT,
                                [(b"x-mock-obs-text-header", b"x-upstream-note")],
                                hostile.chat_bytes("obs-text in a response header", **extra))
        assert r.status == 200, r.body[:300]
        assert r.header("x-upstream-note").endswith(hostile.OBS_TEXT), r.headers
        assert r.header("x-ratelimit-limit-tokens") is not None, r.headers
    # The server still serves everybody, routed as before.
    for _ in range(4):
        r = stack.chat(model="gpt-4o")
        assert r.status == 200 and r.mock["headers"]["x-llm-model-type"] == "large"
    assert stack.srv.running()


@pytest.mark.parametrize("stack", ["FULL_DUPLEX_STREAMED"], indirect=True)
@pytest.mark.parametrize("path", hostile.HOSTILE_PATHS)
def test_hostile_path_is_inspected_or_never_reaches_a_pool(stack, mocks, path):
    before = served(mocks)
    r = hostile.raw_request(stack.port, "POST", path, [(b"x-tenant-id", b"probe")],
                            hostile.chat_bytes("which path is this", model="gpt-4o"))
    if served(mocks) == before:
        assert r.mock is None and r.status != 200, (r.status, r.body[:300])
        if "%2" in path.lower():
            assert r.status == 307 and r.header("location").decode().endswith(CHAT), r.headers
        return
    h = r.mock["headers"]
    assert h.get("x-llm-model-type") == "large", f"POST {path} reached a pool uninspected: {h}"
    assert r.mock["body"]["model"] == LARGE_MODEL
    assert r.header("x-ratelimit-limit-tokens") is not None, r.headers


@pytest.mark.parametrize("stack", ["FULL_DUPLEX_STREAMED"], indirect=True)
def test_model_null_and_uninspected_posts(stack, mocks):
    r = post_raw(CHAT, b'{"model": null, "messages": [{"role": "user", "content": "hi"}]}',
                 port=stack.port)
    assert r.status == 200, r.text[:300]
    assert r.mock["headers"]["x-llm-model-type"] == "small"
    assert r.mock["body"]["model"] == SMALL_MODEL
    before = served(mocks)
    for path in ("/v1/files", "/tokenize", "/"):
        r = post_json(path, {"model": "gpt-4o"}, port=stack.port)
        assert r.status == 404 and r.json()["error"]["code"] == "not_found", (path, r)
    assert served(mocks) == before


# ---------------------------------------------------------------------------------------------
# 6. The server goes away mid-run


def test_server_killed_fail_closed_answers_5xx(extproc_factory, envoy_factory, mocks):
    st = start_stack(extproc_factory, envoy_factory)
    assert st.chat().status == 200
    st.srv.kill()
    before = served(mocks)
    rs = [st.chat() for _ in range(6)] + [get("/v1/models", port=st.port)]
    assert all(500 <= r.status < 600 for r in rs), [(r.status, r.text[:100]) for r in rs]
    assert served(mocks) == before, "a request reached a model pool without the server"


@pytest.mark.parametrize("mode", MODES, ids=["full-duplex", "buffered"])
def test_server_killed_fail_open_falls_back_to_plain_load_balancing(extproc_factory,
                                                                    envoy_factory, mocks, mode):
    st = start_stack(extproc_factory, envoy_factory, mode=mode, fail_open=True)
    r = st.chat(model="gpt-4o")
    assert r.status == 200 and r.mock["headers"]["x-llm-model-type"] == "large"
    st.srv.kill()
    killed = time.monotonic()
    if mode == "FULL_DUPLEX_STREAMED":
        # Envoy fails open in this mode only once its health check has marked the server down
        # (envoy-extproc.yaml: interval 2 s); until then a request whose body already went into
        # the dead stream gets 500 (see the file's header).
        wait_for(lambda: not host_healthy(st.envoy, "llm_router_extproc"), timeout=6,
                 what="the health check to mark the server down")
        assert time.monotonic() - killed < 4.5
    rs = [st.chat(model="gpt-4o") for _ in range(6)]
    assert all(r.status == 200 for r in rs), [(r.status, r.text[:100]) for r in rs]
    # Uninspected: no routing headers, the client's model, the small pool's round robin.
    for r in rs:
        assert "x-llm-model-type" not in r.mock["headers"], r.mock["headers"]
        assert r.mock["body"]["model"] == "gpt-4o"
    assert {r.headers["x-mock-instance"] for r in rs} == set(SMALL)


# ---------------------------------------------------------------------------------------------
# 7. Same decisions in-proxy and through the server


DECISION_HEADERS = ("x-llm-model-type", "x-model-id", "x-llm-prompt-tokens",
                    "x-gateway-destination-endpoint")
# Remaining counts are compared apart, within one: buckets refill continuously (600 per minute
# is one every 100 ms), and the two gateways answer a few milliseconds apart.
RL_DECISION = ("x-ratelimit-limit-requests", "x-ratelimit-limit-tokens")
REMAINING = "x-ratelimit-remaining-requests"


def decision(r: harness.Response) -> dict:
    out = {"status": r.status, REMAINING: int(r.headers[REMAINING])}
    out.update({h: r.headers.get(h) for h in RL_DECISION})
    if r.mock is not None:
        out["instance"] = r.headers.get("x-mock-instance")
        out.update({h: r.mock["headers"].get(h) for h in DECISION_HEADERS})
        b = r.mock["body"]
        out["model"] = b.get("model") if isinstance(b, dict) else None
    else:
        out["error"] = r.json().get("error", {}).get("code")
    return out


def test_same_decisions_in_proxy_and_through_the_server(extproc_factory, envoy_factory, mocks):
    plugin = with_tenants({"side-by-side": (4, 1_000_000)})
    st = start_stack(extproc_factory, envoy_factory, plugin)
    path, in_proxy_port = in_proxy_config(plugin)
    envoy_factory(path, concurrency=2, env=ENV)
    snapshot = {"pools": {
        "small": [{"address": ADDR["small-1"], "waiting": 3, "running": 2, "kv_cache": 0.4},
                  {"address": ADDR["small-2"], "waiting": 9, "running": 2, "kv_cache": 0.1},
                  {"address": ADDR["small-3"], "waiting": 0, "running": 1, "kv_cache": 0.2}],
        "large": [{"address": ADDR["large-1"], "waiting": 0, "running": 0, "kv_cache": 0.1},
                  {"address": ADDR["large-2"], "waiting": 1, "running": 0, "kv_cache": 0.1}]}}
    long_prompt = " ".join(["quarterly", "report", "revenue"] * 500)
    requests = [
        ({}, {"model": "anything", "messages": [{"role": "user", "content": "Say hi"}]}),
        ({}, {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}),
        ({}, {"model": "x", "messages": [{"role": "user", "content": long_prompt}]}),
        ({"x-customer-tier": "premium"}, {"model": "x", "messages": [{"role": "user", "content": "a"}]}),
        ({}, {"model": None, "messages": [{"role": "user", "content": "null model"}]}),
        ({}, {"model": "m", "prompt": "legacy completion", "max_tokens": 3}),
        ({"x-llm-model-type": "large", "x-gateway-destination-endpoint": "10.0.0.1:80"},
         {"model": "m", "messages": [{"role": "user", "content": "spoofed"}]}),
    ] + [({"x-tenant-id": "side-by-side"},
          {"model": "m", "messages": [{"role": "user", "content": f"limited {i}"}]})
         for i in range(6)]
    pairs = []
    for headers, body in requests:
        got = []
        for port, push_port in ((in_proxy_port, in_proxy_port), (st.port, st.srv.metrics_port)):
            assert push(push_port, snapshot).status == 204
            path = "/v1/completions" if "prompt" in body else CHAT
            got.append(decision(post_json(path, body, headers, port=port, timeout=30)))
        pairs.append(got)

    def same(a: dict, b: dict) -> bool:
        return abs(a[REMAINING] - b[REMAINING]) <= 1 and \
            {k: v for k, v in a.items() if k != REMAINING} == \
            {k: v for k, v in b.items() if k != REMAINING}

    diffs = [(i, a, b) for i, (a, b) in enumerate(pairs) if not same(a, b)]
    assert not diffs, "in-proxy vs ext_proc:\n" + "\n".join(
        f"  request {i}: {a}\n            {b}" for i, a, b in diffs)
    # The comparison compared something: tiers, endpoints and a limit all took part.
    ins = [p[0] for p in pairs]
    assert {d.get("x-llm-model-type") for d in ins} >= {"small", "large"}, ins
    assert ins[0]["instance"] == "small-3" and ins[1]["instance"] == "large-1", ins
    assert [d["status"] for d in ins[-6:]] == [200] * 4 + [429] * 2, ins[-6:]
    assert [d[REMAINING] for d in ins[-6:]] == [3, 2, 1, 0, 0, 0], ins[-6:]


# ---------------------------------------------------------------------------------------------
# 8. gRPC health (read through Envoy's gRPC health checks) and TLS


def host_healthy(envoy: harness.EnvoyProcess, cluster: str) -> bool:
    r = envoy.admin_get("/clusters?format=json")
    for c in r.json().get("cluster_statuses", []):
        if c["name"] == cluster:
            (h,) = c["host_statuses"]
            hs = h.get("health_status", {})
            return not hs.get("failed_active_health_check") and \
                hs.get("eds_health_status", "HEALTHY") == "HEALTHY"
    raise AssertionError(f"no cluster {cluster}")


def test_grpc_health_answers(extproc_factory, envoy_factory, mocks):
    srv = extproc_factory(PLUGIN, env=ENV)
    services = {"hc_liveness": "liveness", "hc_readiness": "readiness",
                "hc_ext_proc": EXT_PROC_SERVICE, "hc_unknown": "no.such.Service"}
    path, port = gateway_config(srv, health_services=services)
    envoy = envoy_factory(path, concurrency=1)
    serving = ["hc_liveness", "hc_readiness", "hc_ext_proc", "llm_router_extproc"]
    wait_for(lambda: all(host_healthy(envoy, c) for c in serving), timeout=10,
             what=f"{serving} healthy")
    # An unknown service name is NOT_FOUND: the check is real.
    wait_for(lambda: not host_healthy(envoy, "hc_unknown"), timeout=5, what="hc_unknown failing")
    hc = envoy.stats(filter=r"^cluster\.hc_ext_proc\.health_check\.success$")
    assert hc["cluster.hc_ext_proc.health_check.success"] >= 1, hc
    srv.kill()
    wait_for(lambda: not any(host_healthy(envoy, c) for c in serving), timeout=10,
             what="every check failing once the server is gone")


def test_tls_to_the_server(extproc_factory, envoy_factory, mocks):
    st = start_stack(extproc_factory, envoy_factory, server_tls=True)
    assert st.srv.tls
    r = st.chat(model="gpt-4o")
    assert r.status == 200, r.text[:300]
    assert r.mock["headers"]["x-llm-model-type"] == "large"
    assert r.mock["body"]["model"] == LARGE_MODEL
    # The health check still speaks plaintext to the health port (transport socket match).
    wait_for(lambda: host_healthy(st.envoy, "llm_router_extproc"), timeout=10,
             what="the TLS cluster's plaintext health check")
    # And it really is TLS: a plaintext Envoy cannot talk to this server (fails closed).
    path, port = gateway_config(st.srv, tls=False)
    envoy_factory(path, concurrency=1)
    before = served(mocks)
    r = post_json(CHAT, {"model": "m", "messages": [{"role": "user", "content": "x"}]},
                  port=port, timeout=30)
    assert 500 <= r.status < 600 and served(mocks) == before, r


# ---------------------------------------------------------------------------------------------
# 9. Plugin configuration reloads under a running Envoy


def test_config_reload_applies_and_an_invalid_file_keeps_the_old(extproc_factory, envoy_factory,
                                                                  mocks):
    st = start_stack(extproc_factory, envoy_factory)
    path = st.srv.plugin_config_path
    assert st.chat(model="claude").mock["headers"]["x-llm-model-type"] == "small"
    changed = copy.deepcopy(PLUGIN)
    changed["rules"].append({"tier": "large", "models": ["claude"]})
    path.write_text(json.dumps(changed))
    wait_for(lambda: st.chat(model="claude").mock["headers"]["x-llm-model-type"] == "large",
             timeout=6, what="the changed rules to apply")
    path.write_text('{"tiers": {"small": {"model": "x"}}, "default_tier": "nope"')
    wait_for(lambda: harness.metric_value(st.srv.metrics(),
                                          "llm_router_extproc_config_reload_failures_total") >= 1,
             timeout=6, what="the invalid file to be refused")
    for _ in range(4):
        r = st.chat(model="claude")
        assert r.status == 200 and r.mock["headers"]["x-llm-model-type"] == "large", r
    assert st.srv.running()
