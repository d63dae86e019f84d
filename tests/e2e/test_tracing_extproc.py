"""Tracing through the ext_proc server (issue 15): a real Envoy with its OpenTelemetry tracer
calls the real `llm-router-extproc --otlp-endpoint` (the unchanged .wasm); both export OTLP/gRPC
to one TraceService this test runs (scripts/otlp_receiver.py). The server's span continues the
request's trace and carries the filter's decision: a routed, a rate-limited, a shed and a
streamed request each give exactly one server span with the expected attributes, and no
attribute anywhere holds the raw tenant id.

Build first: `make build`, `cargo build --release -p llm-router-extproc`.
"""

from __future__ import annotations

import copy
import secrets
import sys

import pytest

import harness
import test_extproc as xp
import test_tracing as tr

sys.path.insert(0, str(harness.REPO_ROOT / "scripts"))
from otlp_receiver import OtlpReceiver  # noqa: E402

SPAN = "llm_router.extproc"
RAW_TENANT = tr.RAW_TENANT


def plugin() -> dict:
    p = xp.with_tenants({"tight": (2, 1_000_000)})
    p = copy.deepcopy(p)
    p.setdefault("models", {})["batch-jobs"] = {
        "targets": [{"model": xp.SMALL_MODEL, "weight": 1}], "criticality": "sheddable"}
    p["tenants"]["unknown"] = "default"
    return p


def traced_gateway(srv, receiver_port: int):
    """envoy-extproc.yaml pointed at `srv`, with the OpenTelemetry tracer of envoy-otel.yaml
    exporting to the receiver."""
    path, listener = xp.gateway_config(srv)
    import json
    cfg = json.loads(path.read_text())
    xp.hcm_of(cfg)["tracing"] = {"provider": {
        "name": "envoy.tracers.opentelemetry",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
            "grpc_service": {"envoy_grpc": {"cluster_name": "otel_collector"}, "timeout": "2s"},
            "service_name": "llm-router-gateway"}}}
    cfg["static_resources"]["clusters"].append({
        "name": "otel_collector", "type": "STATIC", "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}},
        "load_assignment": {"cluster_name": "otel_collector", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {
                "address": "127.0.0.1", "port_value": receiver_port}}}}]}]}})
    cfg["layered_runtime"] = {"layers": [{"name": "flush", "static_layer": {
        "tracing.opentelemetry.flush_interval_ms": 200,
        "tracing.opentelemetry.min_flush_spans": 1}}]}
    return harness.write_config(json.dumps(cfg, indent=1), "envoy-extproc-otel.json"), listener


@pytest.fixture(scope="module")
def stack(envoy_bin, mocks):
    for path in (harness.WASM_PATH, harness.EXTPROC_BIN):
        if not path.exists():
            pytest.fail(f"{path} is missing: run `make build` and "
                        "`cargo build --release -p llm-router-extproc`", pytrace=False)
    receiver = OtlpReceiver()
    try:
        with harness.start_extproc(plugin(), env=xp.ENV, extra_args=(
                "--otlp-endpoint", f"http://127.0.0.1:{receiver.port}")) as srv:
            path, port = traced_gateway(srv, receiver.port)
            with harness.start_envoy(path, concurrency=2):
                yield receiver, port, srv
    finally:
        receiver.stop()


def server_span(receiver, trace_id: str):
    """The server's one span in the trace: a child of Envoy's span for the ext_proc call, itself
    a child of the request's span, which continues the client's trace."""
    def in_trace(s):
        return s.trace_id == trace_id
    calls = receiver.wait(lambda s: in_trace(s) and "ExternalProcessor.Process" in s.name)
    gateway = receiver.wait(lambda s: in_trace(s) and s.attributes.get("http.status_code"))
    spans = receiver.wait(lambda s: in_trace(s) and s.name == SPAN)
    print("\n".join(x.describe() for x in receiver.spans if in_trace(x)))
    assert len(gateway) == 1 and len(calls) == 1 and len(spans) == 1, \
        [x.describe() for x in receiver.spans if in_trace(x)]
    s = spans[0]
    assert s.service == "llm-router-extproc"
    assert gateway[0].parent_span_id == PARENTS[trace_id]
    assert calls[0].parent_span_id == gateway[0].span_id
    assert s.parent_span_id == calls[0].span_id
    return s


PARENTS: dict[str, str] = {}


def start_trace() -> tuple[str, dict]:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    PARENTS[trace_id] = parent
    return trace_id, {"traceparent": f"00-{trace_id}-{parent}-01"}


def chat(port, headers, body=None):
    body = body or {"model": "anything", "messages": [{"role": "user", "content": "Say hi"}],
                    "max_tokens": 3}
    return harness.post_json(xp.CHAT, body, headers, port=port, timeout=30)


def no_raw_tenant(receiver):
    for s in receiver.spans:
        for k, v in s.attributes.items():
            assert RAW_TENANT not in str(v), f"raw tenant id in {k} of {s.describe()}"


def test_routed(stack, mocks):
    receiver, port, srv = stack
    trace_id, h = start_trace()
    r = chat(port, {**h, "x-tenant-id": RAW_TENANT})
    assert r.status == 200, r
    a = server_span(receiver, trace_id).attributes
    usage = r.json()["usage"]
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == xp.SMALL_MODEL
    assert a["llm_router.tier"] == "small"
    assert a["llm_router.rule"] == "default"
    assert a["llm_router.tenant"] == "default"
    assert int(a["llm_router.prompt_estimate"]) > 0
    assert a["gen_ai.usage.input_tokens"] == str(usage["prompt_tokens"])
    assert a["gen_ai.usage.output_tokens"] == str(usage["completion_tokens"])
    assert "llm_router.local_reply" not in a
    no_raw_tenant(receiver)


def test_rate_limited(stack, mocks):
    receiver, port, srv = stack
    statuses, trace_id = [], ""
    for _ in range(3):
        trace_id, h = start_trace()
        statuses.append(chat(port, {**h, "x-tenant-id": "tight"}).status)
    assert statuses == [200, 200, 429], statuses
    a = server_span(receiver, trace_id).attributes
    assert a["llm_router.local_reply"] == "rate_limit_exceeded"
    assert a["llm_router.tenant"] == "tight"
    assert a["http.response.status_code"] == "429"
    assert "llm_router.endpoint" not in a


def test_shed(stack, mocks):
    receiver, port, srv = stack
    snap = {"pools": {"small": [{"address": xp.ADDR[n], "waiting": 9, "kv_cache": 0.1}
                                for n in xp.SMALL]}}
    # Behind ext_proc, load is pushed to the server's metrics port (envoy-extproc.yaml).
    assert xp.push(srv.metrics_port, snap).status == 204
    trace_id, h = start_trace()
    r = chat(port, {**h, "x-tenant-id": RAW_TENANT},
             {"model": "batch-jobs", "messages": [{"role": "user", "content": "later"}]})
    assert r.status == 429, r
    a = server_span(receiver, trace_id).attributes
    assert a["llm_router.local_reply"] == "overloaded"
    assert a["llm_router.endpoint_reason"] == "shed"
    assert a["llm_router.tenant"] == "default"
    calm = {"pools": {"small": [{"address": xp.ADDR[n], "waiting": 0, "kv_cache": 0.1}
                                for n in xp.SMALL]}}
    assert xp.push(srv.metrics_port, calm).status == 204
    no_raw_tenant(receiver)


def test_streamed(stack, mocks):
    receiver, port, srv = stack
    trace_id, h = start_trace()
    r = harness.stream_sse(xp.CHAT, {"model": "anything", "stream": True, "max_tokens": 4,
                                     "messages": [{"role": "user", "content": "stream"}]},
                           {**h, "x-tenant-id": RAW_TENANT}, port=port)
    assert r.status == 200 and len(r.events) >= 2
    a = server_span(receiver, trace_id).attributes
    assert a["llm_router.stream"] == "true"
    assert int(a["gen_ai.usage.output_tokens"]) > 0
    assert a["llm_router.endpoint_reason"] in {"least_loaded", "stale", "no_snapshot"}
    no_raw_tenant(receiver)
