"""envoy-config/envoy-dogstatsd.yaml against a real Envoy: the filter's metrics reach a DogStatsD
listener (a UDP socket of this test, standing in for the Datadog agent) with their stats_tags as
Datadog tags.

The config is the committed file with the sink on a free UDP port and the listener/admin on free
ports; the upstream clusters are the module's mock servers (fixed ports of envoy.yaml).
"""

from __future__ import annotations

import re
import socket
import time

import harness
from harness import post_json, stream_sse

DOGSTATSD_CONFIG = harness.REPO_ROOT / "envoy-config" / "envoy-dogstatsd.yaml"
SMALL = "llama-3.1-8b-instruct"
# name:value|type|#tags
LINE = re.compile(r"^([^:|#]+):([-0-9.e+]+)\|([a-z]+)(?:\|@[0-9.]+)?(?:\|#(.*))?$")


def parse(datagrams: list[bytes]) -> list[tuple[str, float, str, dict[str, str]]]:
    out = []
    for d in datagrams:
        for line in d.decode("utf-8", "replace").split("\n"):
            m = LINE.match(line.strip())
            if not m:
                continue
            tags = dict(t.split(":", 1) for t in (m.group(4) or "").split(",") if ":" in t)
            out.append((m.group(1), float(m.group(2)), m.group(3), tags))
    return out


def test_llm_router_metrics_reach_dogstatsd(envoy_factory, mocks):
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(0.2)
    listener, admin = harness.free_port(), harness.free_port()
    path = harness.config_variant(DOGSTATSD_CONFIG, {
        "port_value: 8125": f"port_value: {udp.getsockname()[1]}",
        "port_value: 10000": f"port_value: {listener}",
        "port_value: 9901": f"port_value: {admin}",
    }, "envoy-dogstatsd.yaml")
    try:
        envoy_factory(path)
        body = {"model": "any", "messages": [{"role": "user", "content": "to datadog"}],
                "max_tokens": 2}
        for _ in range(3):
            assert post_json("/v1/chat/completions", body, port=listener).status == 200
        r = stream_sse("/v1/chat/completions", {**body, "stream": True}, port=listener)
        assert r.status == 200

        want_tags = {"tier": "small", "model": SMALL, "status": "2xx"}
        received: list[bytes] = []
        counted = 0.0
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            try:
                received.append(udp.recv(65535))
            except socket.timeout:
                pass
            lines = parse(received)
            counted = sum(v for n, v, t, tags in lines
                          if n.endswith("llm_router_requests_total") and t == "c" and tags == want_tags)
            hist = [x for x in lines if x[0].endswith("llm_router_request_duration_milliseconds")]
            if counted >= 4 and hist:
                # The rest of this flush (one datagram per stat), and one more flush: the
                # counter adds nothing more.
                deadline = min(deadline, time.monotonic() + 1.3)
    finally:
        udp.close()
    lines = parse(received)
    names = sorted({n for n, *_ in lines if "llm_router" in n})
    # Counters are deltas per flush: the 4 requests add up to 4 across the datagrams.
    assert counted == 4, f"llm_router_requests_total{want_tags} summed to {counted}; names {names}"
    raw = b"\n".join(received).decode("utf-8", "replace")
    # The exact wire form: Envoy's default `envoy.` prefix and the wasmcustom namespace stay.
    assert re.search(r"^envoy\.wasmcustom\.llm_router_requests_total:\d+\|c\|"
                     r"#tier:small,model:llama-3\.1-8b-instruct,status:2xx$", raw, re.M), raw[:2000]
    tokens = {tags.get("type") for n, v, t, tags in lines
              if n.endswith("llm_router_tokens_total") and t == "c" and tags.get("model") == SMALL}
    assert tokens == {"prompt", "completion"}, names
    # Histograms go out per sample as DogStatsD timers (|ms), tagged too.
    hist = [(t, tags) for n, v, t, tags in lines
            if n == "envoy.wasmcustom.llm_router_request_duration_milliseconds"]
    assert hist and all(t == "ms" and tags == {"model": SMALL} for t, tags in hist), hist
    assert any(n.endswith("llm_router_time_to_first_token_milliseconds") for n in names), names
    # No tag carries client input.
    assert "any" not in {tags.get("model") for *_, tags in lines}
