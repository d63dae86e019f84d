"""Tracing (issue 15) against a real Envoy: the shipped tracing config exports OTLP/gRPC to a
TraceService this test runs (scripts/otlp_receiver.py, the published OpenTelemetry protos), and
every request's span carries the filter's decision.

Envoy >= 1.37 runs envoy-config/envoy-otel.yaml (custom tags read the filter state the filter
sets); Envoy 1.36 runs envoy-config/envoy-otel-1.36.yaml (custom tags read the request headers
the filter writes, so only forwarded requests carry decision attributes there; docs/tracing.md).
A routed, a rate-limited, a shed and a streamed request each give exactly one span, and no
attribute anywhere holds the raw tenant id.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import time

import pytest

import harness
from harness import post_json, stream_sse

sys.path.insert(0, str(harness.REPO_ROOT / "scripts"))
from otlp_receiver import OtlpReceiver  # noqa: E402

CHAT = "/v1/chat/completions"
PUSH_PATH = "/.well-known/llm-router/load"
TOKEN = secrets.token_hex(16)
ENV = {"LLM_ROUTER_PUSH_TOKEN": TOKEN}
# A raw client id that is not a configured tenant: its label is `default`; the id itself must
# appear in no span.
RAW_TENANT = "cust-" + secrets.token_hex(6)
SMALL = "llama-3.1-8b-instruct"


def envoy_minor() -> int:
    out = subprocess.run([harness.envoy_bin(), "--version"], capture_output=True, text=True,
                         timeout=20).stdout
    m = re.search(r"/1\.(\d+)\.\d+/", out)
    assert m, f"cannot read the Envoy version from {out!r}"
    return int(m.group(1))


def config_for(minor: int, collector_port: int):
    name = "envoy-otel.yaml" if minor >= 37 else "envoy-otel-1.36.yaml"
    src = harness.REPO_ROOT / "envoy-config" / name
    text_replace = {
        "port_value: 4317": f"port_value: {collector_port}",
        # Tenant acme: 2 requests a minute (the third is refused).
        '"acme": { "requests_per_minute": 60': '"acme": { "requests_per_minute": 2',
        # A sheddable model for the shedding case.
        '"models": {\n': '"models": {\n'
                         '                        "batch-jobs": {\n'
                         '                          "targets": [{ "model": "llama-3.1-8b-instruct", "weight": 1 }],\n'
                         '                          "criticality": "sheddable"\n'
                         '                        },\n',
        # Envoy's OTLP exporter flushes every 5 s by default; every span at once here.
        "static_resources:\n": "layered_runtime:\n"
                               "  layers:\n"
                               "  - name: flush\n"
                               "    static_layer:\n"
                               "      tracing.opentelemetry.flush_interval_ms: 200\n"
                               "      tracing.opentelemetry.min_flush_spans: 1\n"
                               "static_resources:\n",
    }
    return harness.config_variant(src, text_replace, "tracing-" + name)


@pytest.fixture(scope="module")
def traced(envoy_bin, mocks):
    receiver = OtlpReceiver()
    minor = envoy_minor()
    try:
        with harness.start_envoy(config_for(minor, receiver.port), env=ENV):
            yield receiver, minor
    finally:
        receiver.stop()


def gateway_spans(receiver, request_id: str, timeout: float = 15.0):
    """The gateway's spans of one request: the trace the client started (`traced_headers`)."""
    def match(s):
        return s.trace_id == request_id
    spans = receiver.wait(match, timeout=timeout)
    time.sleep(0.5)  # a second span for the same request would arrive with the next flush
    return [s for s in receiver.spans if match(s)]


def one_span(receiver, request_id: str):
    spans = gateway_spans(receiver, request_id)
    print("\n".join(s.describe() for s in spans))
    assert len(spans) == 1, f"want one span for {request_id}, got {[s.describe() for s in spans]}"
    return spans[0]


def assert_no_raw_tenant(receiver):
    for s in receiver.spans:
        for k, v in s.attributes.items():
            assert RAW_TENANT not in str(v), f"raw tenant id in {k} of {s.describe()}"


def rid() -> str:
    """A trace id: the client starts a trace with it (Envoy's span joins it; Envoy regenerates
    x-request-id at the edge, so that cannot tell requests apart)."""
    return secrets.token_hex(16)


def tp(trace_id: str) -> str:
    return f"00-{trace_id}-{secrets.token_hex(8)}-01"


def chat_body(content: str = "Say hi", **kw) -> dict:
    return {"model": "anything", "messages": [{"role": "user", "content": content}], **kw}


def push_loads(mocks, saturated: bool) -> None:
    q = 9 if saturated else 0
    snap = {"pools": {"small": [
        {"address": mocks.address(n), "waiting": q, "kv_cache": 0.1}
        for n in ("small-1", "small-2", "small-3")]}}
    r = post_json(PUSH_PATH, snap, {"authorization": f"Bearer {TOKEN}"})
    assert r.status == 204, r


def test_a_routed_request_carries_its_decision(traced, mocks):
    receiver, minor = traced
    push_loads(mocks, saturated=False)
    request_id = rid()
    r = post_json(CHAT, chat_body(max_tokens=3),
                  {"x-tenant-id": RAW_TENANT, "traceparent": tp(request_id)})
    assert r.status == 200, r
    a = one_span(receiver, request_id).attributes
    assert a["http.status_code"] == "200"
    assert a["llm_router.tier"] == "small"
    assert a["gen_ai.request.model"] == SMALL
    assert int(a["llm_router.prompt_estimate"]) > 0
    assert a["llm_router.endpoint"] in {mocks.address(n) for n in ("small-1", "small-2", "small-3")}
    if minor >= 37:
        assert a["gen_ai.operation.name"] == "chat"
        assert a["llm_router.rule"] == "default"
        assert a["llm_router.tenant"] == "default"
        assert a["llm_router.endpoint_reason"] == "least_loaded"
        assert a["llm_router.stream"] == "false"
        usage = r.json()["usage"]
        assert a["gen_ai.usage.input_tokens"] == str(usage["prompt_tokens"])
        assert a["gen_ai.usage.output_tokens"] == str(usage["completion_tokens"])
        assert not a.get("llm_router.local_reply")
    assert_no_raw_tenant(receiver)


def test_a_rule_and_a_split_are_named(traced, mocks):
    receiver, minor = traced
    request_id = rid()
    r = post_json(CHAT, {"model": "gpt-4o", "messages": []}, {"traceparent": tp(request_id)})
    assert r.status == 200, r
    a = one_span(receiver, request_id).attributes
    assert a["llm_router.tier"] == "large"
    assert a["gen_ai.request.model"] == "llama-3.1-70b-instruct"
    if minor >= 37:
        assert a["llm_router.rule"] == "0"
        assert a["llm_router.tenant"] == "anonymous"
    request_id = rid()
    r = post_json(CHAT, {"model": "chat-canary", "messages": []}, {"traceparent": tp(request_id)})
    assert r.status == 200, r
    a = one_span(receiver, request_id).attributes
    assert a["gen_ai.request.model"] in {"llama-3.1-8b-v2", "llama-3.1-8b"}
    if minor >= 37:
        assert a["llm_router.split"] == "chat-canary"
        assert a["llm_router.split_target"] == a["gen_ai.request.model"]


def test_a_rate_limited_request(traced):
    receiver, minor = traced
    statuses, request_id = [], ""
    for _ in range(3):
        request_id = rid()
        statuses.append(post_json(CHAT, chat_body(),
                                  {"x-tenant-id": "acme", "traceparent": tp(request_id)}).status)
    assert statuses == [200, 200, 429], statuses
    a = one_span(receiver, request_id).attributes
    assert a["http.status_code"] == "429"
    # Refused before it was forwarded: no endpoint, nothing upstream.
    assert not a.get("llm_router.endpoint")
    if minor >= 37:
        assert a["llm_router.local_reply"] == "rate_limit_exceeded"
        assert a["llm_router.tenant"] == "acme"
        assert a["llm_router.tier"] == "small"
    assert_no_raw_tenant(receiver)


def test_a_shed_request(traced, mocks):
    receiver, minor = traced
    push_loads(mocks, saturated=True)
    request_id = rid()
    r = post_json(CHAT, {**chat_body(), "model": "batch-jobs"},
                  {"x-tenant-id": RAW_TENANT, "traceparent": tp(request_id)})
    assert r.status == 429, r
    assert r.json()["error"]["code"] == "overloaded"
    a = one_span(receiver, request_id).attributes
    assert a["http.status_code"] == "429"
    if minor >= 37:
        assert a["llm_router.local_reply"] == "overloaded"
        assert a["llm_router.endpoint_reason"] == "shed"
        assert a["llm_router.split"] == "batch-jobs"
        assert a["llm_router.tenant"] == "default"
    push_loads(mocks, saturated=False)
    assert_no_raw_tenant(receiver)


def test_a_streamed_request(traced, mocks):
    receiver, minor = traced
    request_id = rid()
    r = stream_sse(CHAT, chat_body("stream me", stream=True, max_tokens=4),
                   {"x-tenant-id": RAW_TENANT, "traceparent": tp(request_id)})
    assert r.status == 200
    assert len(r.events) >= 2
    a = one_span(receiver, request_id).attributes
    assert a["llm_router.tier"] == "small"
    assert a["gen_ai.request.model"] == SMALL
    if minor >= 37:
        assert a["llm_router.stream"] == "true"
        assert int(a["gen_ai.usage.output_tokens"]) > 0
        assert int(a["gen_ai.usage.input_tokens"]) > 0
    assert_no_raw_tenant(receiver)


def test_trace_context_passes_through_untouched(traced, mocks):
    """The client's W3C trace: Envoy's span joins it, and the model server sees a traceparent
    of the same trace (Envoy's child), so the filter dropped nothing."""
    receiver, _ = traced
    trace_id, parent = rid(), secrets.token_hex(8)
    r = post_json(CHAT, chat_body(), {"traceparent": f"00-{trace_id}-{parent}-01",
                                      "tracestate": "vendor=kept"})
    assert r.status == 200, r
    s = one_span(receiver, trace_id)
    assert (s.trace_id, s.parent_span_id) == (trace_id, parent)
    seen = r.json()["mock"]["headers"]
    assert seen["traceparent"].split("-")[1] == trace_id
    assert seen.get("tracestate") == "vendor=kept"


def test_tracing_configs_are_generated_from_envoy_yaml():
    """The committed tracing configs are scripts/gen-tracing-configs.py's output: envoy.yaml plus
    a tracing block and the collector's cluster, nothing else."""
    r = subprocess.run([sys.executable, str(harness.REPO_ROOT / "scripts" / "gen-tracing-configs.py"),
                        "--check"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    import yaml
    base = yaml.safe_load(harness.DEFAULT_CONFIG.read_text())
    for name, provider, cluster in (("envoy-otel.yaml", "envoy.tracers.opentelemetry", "otel_collector"),
                                    ("envoy-otel-1.36.yaml", "envoy.tracers.opentelemetry", "otel_collector"),
                                    ("envoy-datadog.yaml", "envoy.tracers.datadog", "datadog_agent")):
        cfg = yaml.safe_load((harness.REPO_ROOT / "envoy-config" / name).read_text())
        hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        tracing = hcm.pop("tracing")
        assert tracing["provider"]["name"] == provider
        assert len(tracing["custom_tags"]) >= 4
        added = cfg["static_resources"]["clusters"].pop()
        assert added["name"] == cluster
        assert cfg == base, name


def test_datadog_tracer_sends_the_decision_to_the_agent(envoy_bin, mocks):
    """envoy-config/envoy-datadog.yaml: Envoy's Datadog tracer sends the request's span to the
    agent (an HTTP listener of this test standing in for its trace intake). The span's tags are
    msgpack strings in the payload: the decision is there, the raw tenant id is not. On Envoy
    1.36 the tags are the header tags of envoy-otel-1.36.yaml (its custom tags cannot read
    filter state)."""
    import http.server
    import threading
    import yaml

    bodies: list[bytes] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _take(self):
            if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
                body = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    chunk = self.rfile.read(size + 2)[:size]  # data and its CRLF
                    if size == 0:
                        break
                    body += chunk
            else:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
            if self.path.startswith("/v0.4/traces"):
                bodies.append(body)
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"rate_by_service":{}}')

        do_PUT = do_POST = _take

        def log_message(self, *a):
            pass

    agent = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=agent.serve_forever, daemon=True).start()
    try:
        minor = envoy_minor()
        cfg = yaml.safe_load((harness.REPO_ROOT / "envoy-config" / "envoy-datadog.yaml").read_text())
        hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        if minor < 37:
            old = yaml.safe_load((harness.REPO_ROOT / "envoy-config" / "envoy-otel-1.36.yaml").read_text())
            old_hcm = old["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            hcm["tracing"]["custom_tags"] = old_hcm["tracing"]["custom_tags"]
        (dd,) = [c for c in cfg["static_resources"]["clusters"] if c["name"] == "datadog_agent"]
        sa = dd["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
        sa["port_value"] = agent.server_address[1]
        # Free ports: the module's OpenTelemetry gateway may be running on the shipped ones.
        listener, admin = harness.free_port(), harness.free_port()
        cfg["admin"]["address"]["socket_address"]["port_value"] = admin
        cfg["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = listener
        path = harness.write_config(json.dumps(cfg), "tracing-envoy-datadog.json")
        with harness.start_envoy(path, env=ENV):
            r = post_json(CHAT, chat_body("to datadog", max_tokens=2),
                          {"x-tenant-id": RAW_TENANT,
                           "x-datadog-trace-id": "1234567890123", "x-datadog-parent-id": "42"},
                          port=listener)
            assert r.status == 200, r
            want = [b"llm_router.tier", b"small", b"gen_ai.request.model", SMALL.encode()]
            if minor >= 37:
                want += [b"llm_router.rule", b"default", b"llm_router.tenant",
                         b"gen_ai.usage.output_tokens"]
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not all(w in b"".join(bodies) for w in want):
                time.sleep(0.2)
            payload = b"".join(bodies)
            missing = [w for w in want if w not in payload]
            assert not missing, f"not in the agent's payloads ({len(bodies)}): {missing}"
            assert RAW_TENANT.encode() not in payload
            # The client's Datadog trace id (1234567890123) is the span's trace id (msgpack uint64).
            assert (1234567890123).to_bytes(8, "big") in payload
    finally:
        agent.shutdown()
