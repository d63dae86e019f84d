"""Global limits (tenants.global) in a real Envoy: the filter's gRPC calls to the real quota
service (`llm-router-extproc quota`) on a real redis-server the test starts.

- An empty lease: the request pauses for one Take in its own context, resumes and reaches the
  upstream; the lease then serves requests without calls; the Redis budget (8) is admitted
  once, then 429 with the service's retry-after.
- The quota cluster unknown to Envoy: the call cannot start (Envoy's ParseFailure), the outage
  path answers (`on_outage: reject` -> 503 rate_limiter_unavailable), no VM crashes.

Missing redis-server, quota binary or .wasm fail the tests (never skip). The multi-Envoy bounds
are the e2e of issue 14's last part.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import harness
from test_ratelimit import SHIPPED_ACME, SHIPPED_CAP, Gateway, chat, variant

QUOTA_CLUSTER = """  clusters:
  - name: llm_router_quota
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: llm_router_quota
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}
"""


def quota_bin() -> Path:
    p = Path(os.environ.get("LLM_ROUTER_EXTPROC_BIN") or harness.EXTPROC_BIN)
    if not p.exists():
        pytest.fail(f"{p} is missing: `cargo build --release -p llm-router-extproc`", pytrace=False)
    return p


def redis_bin() -> str:
    out = subprocess.run([str(harness.REPO_ROOT / "scripts" / "redis-bin.sh")],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        pytest.fail(f"redis-server is required: {out.stderr}", pytrace=False)
    return out.stdout.strip()


def gateway_config(cluster: str, quota_port: int, on_outage: str, name: str):
    glob = (f'"global": {{ "cluster": "{cluster}", "lease_requests": 2, "replicas": 1, '
            f'"on_outage": "{on_outage}", "timeout_ms": 2000, "refill_interval_ms": 200 }}')
    return variant({
        SHIPPED_ACME: '"acme": { "requests_per_minute": 1, "burst_requests": 8 }',
        SHIPPED_CAP: f"{SHIPPED_CAP}, {glob}",
        "  clusters:\n": QUOTA_CLUSTER.format(port=quota_port),
    }, name)


@pytest.fixture
def quota(process_factory):
    redis_port, grpc, health, metrics = (harness.free_port() for _ in range(4))
    process_factory([redis_bin(), "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no"], "redis", wait_ports=[redis_port])
    process_factory([quota_bin(), "quota", "--redis", f"redis://127.0.0.1:{redis_port}",
                     "--grpc-addr", f"127.0.0.1:{grpc}", "--health-addr", f"127.0.0.1:{health}",
                     "--metrics-addr", f"127.0.0.1:{metrics}", "--plaintext"],
                    "quota", wait_ports=[grpc])
    return grpc


def test_an_empty_lease_takes_and_the_redis_budget_holds(envoy_factory, mocks, quota):
    path, port, _ = gateway_config("llm_router_quota", quota, "reject", "envoy-global.yaml")
    gw = Gateway(envoy_factory(path, concurrency=2), port)
    statuses = [gw.post(chat("hi", max_tokens=1), "acme") for _ in range(14)]
    codes = [r.status for r in statuses]
    # 8 in Redis (1/min refills nothing that matters here): 8 pass over both workers, then 429.
    assert codes.count(200) == 8, codes
    assert set(codes) <= {200, 429}, codes
    refused = [r for r in statuses if r.status == 429]
    assert refused and all(r.json()["error"]["code"] == "rate_limit_exceeded" for r in refused)
    assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
    text = gw.envoy.prometheus()
    assert 'llm_router_global_calls_total{method="take",result="ok"}' in text, text[:2000]


def test_an_unknown_quota_cluster_takes_the_outage_path(envoy_factory, mocks):
    path, port, _ = gateway_config("no_such_cluster", harness.free_port(), "reject",
                                   "envoy-global-unknown.yaml")
    envoy = envoy_factory(path, concurrency=2)
    gw = Gateway(envoy, port)
    rs = [gw.post(chat("hi", max_tokens=1), "acme") for _ in range(4)]
    assert [r.status for r in rs] == [503] * 4, rs
    assert rs[0].json()["error"]["code"] == "rate_limiter_unavailable"
    assert envoy.running()
    text = envoy.prometheus()
    assert 'llm_router_global_calls_total{method="take",result="not_sent"}' in text, text[:2000]
    assert 'llm_router_global_outage{action="reject"} 1' in text, text[:2000]
