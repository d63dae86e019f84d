"""End-to-end routing tests: a real Envoy running envoy-config/envoy.yaml (unchanged) with
dist/llm_router.wasm in front of the mock model servers (tests/mock_server.py).

What the upstream received is read from the mock's echo (`mock` field of its answer): headers,
parsed body (or `body_raw` when it is not JSON), `body_bytes` and `chunked`.

Variants of envoy.yaml (reject mode, a bad plugin configuration) are made with
harness.config_variant from the shipped file; only the plugin configuration and the listener/admin
ports change, so they run next to the module's Envoy on 10000/9901 and share its mock servers.
"""

from __future__ import annotations

import json
import math
import socket
import struct
import time
from pathlib import Path

import pytest
import yaml

import harness
from harness import get, post_chunked, post_json, post_raw, request, split_bytes, stream_sse

REPO = harness.REPO_ROOT
SCENARIOS_FILE = REPO / "tests" / "scenarios" / "routing.json"
TABLE = json.loads(SCENARIOS_FILE.read_text())
SCENARIOS = TABLE["scenarios"]

CHAT = "/v1/chat/completions"
SMALL_MODEL = "llama-3.1-8b-instruct"
LARGE_MODEL = "llama-3.1-70b-instruct"
ROUTING_HEADERS = ("x-llm-model-type", "x-model-id", "x-llm-prompt-tokens",
                   "x-gateway-destination-endpoint")
# Headers Envoy itself adds on the way upstream (not the filter, not the client).
ENVOY_ADDED = {"x-forwarded-proto", "x-request-id", "x-envoy-expected-rq-timeout-ms",
               "x-envoy-internal", "x-forwarded-for", "x-envoy-external-address"}


# ---------------------------------------------------------------------------------------------
# helpers


def total_served(mocks) -> int:
    return sum(s["total"] for s in mocks.all_stats().values())


def assert_same_json(got, want, what="body"):
    """Equal values and equal key order (json.loads keeps the order of the wire)."""
    assert got == want, f"{what} differs"
    assert json.dumps(got, ensure_ascii=False) == json.dumps(want, ensure_ascii=False), \
        f"{what}: same content, different key order"


def assert_framing(echo):
    """The upstream got a consistent framing: chunked without content-length, or a
    content-length equal to the bytes it read (a stale length would truncate or hang)."""
    h = echo["headers"]
    if echo["chunked"]:
        assert "content-length" not in h, h
    else:
        assert int(h["content-length"]) == echo["body_bytes"], (h.get("content-length"), echo)


def variant(replace: dict[str, str], name: str) -> tuple[Path, int, int]:
    """A copy of the shipped envoy.yaml with `replace` applied (each old text exactly once) and
    the listener/admin on free ports. Returns (path, listener_port, admin_port)."""
    text = harness.DEFAULT_CONFIG.read_text()
    listener, admin = harness.free_port(), harness.free_port()
    replace = dict(replace)
    replace["port_value: 10000"] = f"port_value: {listener}"
    replace["port_value: 9901"] = f"port_value: {admin}"
    for old in replace:
        assert text.count(old) == 1, f"{old!r} must occur once in envoy.yaml (it has changed?)"
    return harness.config_variant(harness.DEFAULT_CONFIG, replace, name), listener, admin


def send_scenario(req: dict, port: int = harness.LISTENER_PORT) -> tuple[harness.Response, bytes, dict]:
    """Send a scenario request; returns (response, body bytes sent, headers sent)."""
    method = req.get("method", "POST")
    path = req["path"]
    headers = dict(req.get("headers") or {})
    if "body_raw" in req:
        data = req["body_raw"].encode()
    elif "body" in req:
        data = json.dumps(req["body"]).encode()
    else:
        data = b""
    if method == "GET":
        return get(path, headers, port=port), b"", headers
    if req.get("chunks"):
        headers.setdefault("content-type", "application/json")
        return post_chunked(path, split_bytes(data, int(req["chunks"])), headers, port=port), data, headers
    headers.setdefault("content-type", "application/json")
    return request(method, path, data, headers, port=port), data, headers


def check_body_bytes(echo, want: bytes):
    """The upstream body equals `want`: byte-exact when the mock kept it raw (not JSON);
    otherwise same length and same parsed JSON (with key order)."""
    assert echo["body_bytes"] == len(want), (echo["body_bytes"], len(want))
    if "body_raw" in echo:
        assert echo["body_raw"] == want.decode("utf-8", "replace")[:65536]
    elif want:
        assert_same_json(echo["body"], json.loads(want))
    else:
        assert echo["body"] is None


# ---------------------------------------------------------------------------------------------
# The shared scenario table


def test_scenario_config_matches_envoy_yaml():
    """routing.json's plugin_config is the configuration inlined in envoy.yaml, so host-sim and
    Envoy are checked against the same config."""
    cfg = yaml.safe_load(harness.DEFAULT_CONFIG.read_text())
    values = []
    for lst in cfg["static_resources"]["listeners"]:
        for chain in lst.get("filter_chains", []):
            for f in chain.get("filters", []):
                for hf in f.get("typed_config", {}).get("http_filters", []):
                    tc = hf.get("typed_config", {})
                    if hf.get("name") == "envoy.filters.http.wasm" or tc.get("@type", "").endswith(".wasm.v3.Wasm"):
                        conf = tc["config"]
                        if conf.get("root_id") == "llm_router" or "llm_router" in json.dumps(conf["vm_config"]):
                            values.append(conf["configuration"]["value"])
    assert len(values) == 1, f"expected one llm_router wasm filter in envoy.yaml, found {len(values)}"
    assert json.loads(values[0]) == TABLE["plugin_config"]


@pytest.mark.parametrize("sc", SCENARIOS, ids=[s["name"] for s in SCENARIOS])
def test_scenario(envoy, mocks, sc):
    check_scenario(sc, mocks)


def check_scenario(sc: dict, mocks, port: int = harness.LISTENER_PORT) -> None:
    """Send one scenario of routing.json to the gateway on `port` and check what the upstream
    received (test_extproc.py runs the same table through Envoy + ext_proc)."""
    req, exp = sc["request"], sc["expect"]
    if exp.get("passthrough") and req.get("method", "POST") == "POST":
        # The filter lets it through untouched (host-sim checks that); envoy.yaml's route config
        # then refuses a POST the filter did not inspect, so it never reaches a model pool.
        before = total_served(mocks)
        r, _, _ = send_scenario(req, port)
        assert r.status == 404 and r.mock is None, (r.status, r.text[:300])
        assert total_served(mocks) == before
        return
    r, sent, sent_headers = send_scenario(req, port)
    echo = r.mock
    assert echo is not None, f"no mock echo (request did not reach upstream?): {r.status} {r.text[:500]}"
    h = echo["headers"]
    for k, v in (exp.get("upstream_headers") or {}).items():
        assert h.get(k) == v, f"upstream header {k}: {h.get(k)!r} != {v!r} (headers {h})"
    for k in exp.get("absent_headers") or []:
        assert k not in h, f"upstream header {k} should be absent, got {h[k]!r}"
    if "upstream_body_model" in exp:
        assert isinstance(echo["body"], dict), echo
        assert echo["body"]["model"] == exp["upstream_body_model"]
        # The rest of the body is what the client sent.
        want = dict(req["body"]) if "body" in req else json.loads(sent)
        want["model"] = exp["upstream_body_model"]
        assert_same_json(echo["body"], want)
    if "upstream_body_raw" in exp:
        check_body_bytes(echo, exp["upstream_body_raw"].encode())
    if "prompt_tokens_between" in exp:
        lo, hi = exp["prompt_tokens_between"]
        assert "x-llm-prompt-tokens" in h, h
        assert lo <= int(h["x-llm-prompt-tokens"]) <= hi, h["x-llm-prompt-tokens"]
    if exp.get("passthrough"):
        for k, v in sent_headers.items():
            assert h.get(k.lower()) == v, f"client header {k} changed: {h.get(k.lower())!r} != {v!r}"
        for k in h:
            assert k in ENVOY_ADDED or k in {x.lower() for x in sent_headers} or \
                k in ("host", "content-length", "accept-encoding", "transfer-encoding"), \
                f"unexpected upstream header {k}: {h[k]!r}"
        check_body_bytes(echo, sent)
    if req.get("chunks"):
        assert echo["chunked"] or "content-length" in h
    if req.get("method", "POST") == "POST" and (sent or req.get("chunks")):
        assert_framing(echo)
        assert echo["body_bytes"] > 0 or not sent


# ---------------------------------------------------------------------------------------------
# Weighted split


def test_weighted_split_chat_canary(envoy, mocks):
    n, p = 400, 10 / 100
    targets = {"llama-3.1-8b-v2", "llama-3.1-8b"}
    body = {"model": "chat-canary", "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 1}
    # Own tenant id: if envoy.yaml gets per-tenant limits, this burst does not eat the budget of
    # the other tests (and vice versa); ignored while no tenants are configured.
    rs = harness.burst(n, 16, lambda i: post_json(CHAT, body, {"x-tenant-id": "e2e-weighted-split"}))
    seen = []
    for r in rs:
        assert r.status == 200, r.text[:300]
        m = r.mock["body"]["model"]
        assert m in targets, m
        assert r.mock["headers"].get("x-llm-model-type") == "small"
        seen.append(m)
    v2 = seen.count("llama-3.1-8b-v2")
    sigma = math.sqrt(n * p * (1 - p))   # 6 for n=400: bound 40 +- 27
    assert abs(v2 - n * p) <= 4.5 * sigma, f"{v2}/{n} went to v2 (expected ~{n * p:.0f} +- {4.5 * sigma:.0f})"


# ---------------------------------------------------------------------------------------------
# Model rewrite keeps every other byte


# Odd formatting on purpose: tabs, CRLF, spaces before colons, unicode, escapes, a nested "model"
# member that must not be touched, a top-level "model" that is not the first member.
ODD_BODY = (
    '{\r\n\t"temperature" :0.25 ,  "top_p":1e0,\n'
    '  "messages":[{"role":"system","content":"Tu es \u00e9l\u00e8ve. \\u00e9 \\"quoted\\" \\\\ tab\\t nl\\n"},\n'
    '     {"role":"user","content":"\u65e5\u672c\u8a9e \U0001F680 emoji, </script> & \\/slash"}],\n'
    '  "model"  :   "gpt\\u002d4o-ish",\n'
    '  "tools":[{"type":"function","function":{"name":"lookup","description":"nested model field",'
    '"parameters":{"type":"object","properties":{"model":{"type":"string","default":"keep-me"}}}}}],\n'
    '  "user":"u-1", "n":1, "logit_bias":{"50256":-100}, "extra":null, "flags":[true,false]\n'
    '}\n'
)


@pytest.mark.parametrize("mode", ["content-length", "chunked"])
def test_model_rewrite_keeps_rest_of_body(envoy, mocks, mode):
    raw = ODD_BODY.encode()
    original = json.loads(raw)
    assert original["model"] == "gpt-4o-ish"  # not a rule model: default tier
    if mode == "chunked":
        r = post_chunked(CHAT, split_bytes(raw, 5))
    else:
        r = post_raw(CHAT, raw)
    assert r.status == 200, r.text[:500]
    echo = r.mock
    assert echo["headers"]["x-llm-model-type"] == "small"
    want = dict(original)
    want["model"] = SMALL_MODEL
    assert_same_json(echo["body"], want)   # everything else identical, same key order
    assert echo["body"]["tools"][0]["function"]["parameters"]["properties"]["model"]["default"] == "keep-me"
    # In-place rewrite: only the bytes of the model value change, so the formatting is kept and
    # the length is exactly the original one adjusted by the two model strings.
    old_value = b'"gpt\\u002d4o-ish"'
    assert raw.count(old_value) == 1
    expected = raw.replace(old_value, json.dumps(SMALL_MODEL).encode())
    assert echo["body_bytes"] == len(expected), (echo["body_bytes"], len(expected))
    assert_framing(echo)   # no stale content-length


# ---------------------------------------------------------------------------------------------
# Bodies over max_body_bytes (1 MiB in envoy.yaml)


def big_body(size: int, model: str = "gpt-4o") -> bytes:
    """A valid chat body of about `size` bytes (whose model would otherwise route to large)."""
    filler = "lorem ipsum dolor sit amet " * (size // 27 + 1)
    body = {"model": model, "messages": [{"role": "user", "content": filler[:size]}]}
    return json.dumps(body).encode()


@pytest.mark.parametrize("mode", ["content-length", "chunked"])
def test_body_over_limit_goes_to_default_tier_unmodified(envoy, mocks, mode):
    raw = big_body(1536 * 1024)
    assert len(raw) > 1024 * 1024 * 1.4
    # A body the filter cannot read is charged by its bytes (here more than a whole default
    # token bucket): each mode runs as a tenant of its own, whose bucket is full.
    tenant = {"x-tenant-id": f"big-body-{mode}"}
    if mode == "chunked":
        r = post_chunked(CHAT, split_bytes(raw, 24), headers=tenant, delay=0.005, timeout=30)
    else:
        r = post_raw(CHAT, raw, headers=tenant, timeout=30)
    assert r.status == 200, r.text[:500]
    echo = r.mock
    h = echo["headers"]
    assert h["x-llm-model-type"] == "small", h
    assert "x-llm-prompt-tokens" not in h
    assert echo["body_bytes"] == len(raw)
    assert_same_json(echo["body"], json.loads(raw))   # model untouched ("gpt-4o")
    assert echo["chunked"] == (mode == "chunked")
    assert_framing(echo)


# ---------------------------------------------------------------------------------------------
# on_invalid_body: reject


@pytest.fixture(scope="module")
def reject_envoy(envoy_bin, mocks):
    """envoy.yaml with `"on_invalid_body": "reject", "max_body_bytes": 65536` in the plugin
    configuration (on free ports, same upstream mocks)."""
    path, listener, _ = variant(
        {'"tiers": {': '"on_invalid_body": "reject", "max_body_bytes": 65536, "tiers": {'},
        "envoy-reject.yaml")
    with harness.start_envoy(path) as e:
        yield e


def assert_openai_error(r, status, code):
    assert r.status == status, (r.status, r.text[:500])
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    j = r.json()
    assert set(j) == {"error"}, j
    err = j["error"]
    assert err["code"] == code, err
    assert isinstance(err["type"], str) and err["type"], err
    assert isinstance(err["message"], str) and err["message"], err
    assert "param" in err and err["param"] is None, err


def test_reject_invalid_json_is_400(reject_envoy, mocks):
    before = total_served(mocks)
    port = reject_envoy.listener_port
    r = post_raw(CHAT, b'{"model": "gpt-4o", oops', port=port)
    assert_openai_error(r, 400, "invalid_request_body")
    r = post_raw(CHAT, b"[1,2,3]", port=port)        # JSON, but not an object
    assert_openai_error(r, 400, "invalid_request_body")
    r = post_chunked(CHAT, [b'{"model":', b' "x", ', b'nope'], port=port)
    assert_openai_error(r, 400, "invalid_request_body")
    time.sleep(0.1)
    assert total_served(mocks) == before, "a rejected request reached an upstream"


@pytest.mark.parametrize("mode", ["content-length", "chunked"])
def test_reject_too_large_is_413(reject_envoy, mocks, mode):
    before = total_served(mocks)
    port = reject_envoy.listener_port
    raw = big_body(100 * 1024)
    if mode == "chunked":
        r = post_chunked(CHAT, split_bytes(raw, 10), port=port, delay=0.005)
    else:
        r = post_raw(CHAT, raw, port=port)
    assert_openai_error(r, 413, "request_too_large")
    time.sleep(0.1)
    assert total_served(mocks) == before, "a rejected request reached an upstream"


def test_reject_mode_still_routes_valid_bodies(reject_envoy, mocks):
    port = reject_envoy.listener_port
    r = post_json(CHAT, {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, port=port)
    assert r.status == 200, r.text[:500]
    assert r.mock["headers"]["x-llm-model-type"] == "large"
    assert r.mock["body"]["model"] == LARGE_MODEL
    r = post_json(CHAT, {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, port=port)
    assert r.status == 200 and r.mock["headers"]["x-llm-model-type"] == "small"
    # Non-API requests are not inspected, reject mode or not (a POST outside `apis` is then
    # refused by the route config, see test_hostile.py; other methods pass).
    r = request("PUT", "/v1/files", b"not json", {"content-type": "text/plain"}, port=port)
    assert r.status == 200 and r.mock["body_raw"] == "not json"


# ---------------------------------------------------------------------------------------------
# Requests the filter does not inspect


def test_get_and_non_api_post_pass_untouched(envoy, mocks):
    r = get("/v1/models", {"x-llm-model-type": "large", "x-keep": "yes"})
    assert r.status == 200, r.text[:300]
    h = r.mock["headers"]
    assert "x-llm-model-type" not in h          # the spoofed tier is removed...
    assert h["x-keep"] == "yes"
    assert r.mock["instance"].startswith("small-"), r.mock["instance"]  # ...so the route falls back to small
    assert r.mock["method"] == "GET" and r.mock["path"] == "/v1/models"

    raw = b'{ "model" : "gpt-4o",\n "file": "x" }'
    # A POST outside `apis` never reaches a model pool uninspected (envoy.yaml's guard route) ...
    before = total_served(mocks)
    r = post_raw("/v1/files", raw, {"x-custom": "1"})
    assert r.status == 404 and r.json()["error"]["code"] == "not_found", r.text[:300]
    assert total_served(mocks) == before
    # ... any other request passes untouched.
    r = request("PUT", "/v1/files", raw, {"x-custom": "1", "content-type": "application/json"})
    assert r.status == 200, r.text[:300]
    h = r.mock["headers"]
    assert h["x-custom"] == "1" and h["content-type"] == "application/json"
    assert not any(k in h for k in ROUTING_HEADERS), h
    assert r.mock["instance"].startswith("small-")
    check_body_bytes(r.mock, raw)
    assert int(h["content-length"]) == len(raw)


# ---------------------------------------------------------------------------------------------
# Streaming


def test_sse_is_streamed_not_buffered(envoy, mocks):
    body = {"model": "gpt-4o", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "stream please"}]}
    s = stream_sse(CHAT, body, {"x-mock-token-delay-ms": "100", "x-mock-tokens": "10"})
    assert s.status == 200, s.raw[:300]
    assert s.headers["content-type"].startswith("text/event-stream")
    assert s.done
    chunks = s.chunks
    assert chunks[0]["mock"]["headers"]["x-llm-model-type"] == "large"
    assert chunks[0]["model"] == LARGE_MODEL
    assert s.usage and s.usage["completion_tokens"] == 10
    token_events = [e for e in s.events if not e.done and e.json.get("choices")]
    assert len(token_events) == 10
    t = [e.t for e in token_events]
    # 9 gaps of 100 ms: a buffered stream would deliver everything at once at the end.
    assert t[-1] - t[0] >= 0.5, t
    assert t[0] < s.elapsed - 0.5, (t[0], s.elapsed)
    assert sum(1 for a, b in zip(t, t[1:]) if b - a > 0.05) >= 5, t


# ---------------------------------------------------------------------------------------------
# HTTP/2 with prior knowledge (h2c), with a minimal stdlib client


def _frame(ftype: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def _hpack_literal(name: str, value: str) -> bytes:
    """Literal header field without indexing, new name, no Huffman (RFC 7541 6.2.2)."""
    def s(x: bytes) -> bytes:
        assert len(x) < 127
        return bytes([len(x)]) + x
    return b"\x00" + s(name.encode()) + s(value.encode())


def h2c_post(port: int, path: str, body: bytes, headers: dict[str, str], pieces: int = 3,
             timeout: float = 10.0) -> tuple[int, bytes]:
    """POST over cleartext HTTP/2 (prior knowledge); the body in several DATA frames.
    Returns (status, response body). Only what this test needs: no flow control beyond the
    defaults (bodies < 64 KiB), :status read from the static table / literal forms."""
    hdrs = [(":method", "POST"), (":scheme", "http"), (":path", path),
            (":authority", f"127.0.0.1:{port}"), ("content-type", "application/json")]
    hdrs += list(headers.items())
    block = b"".join(_hpack_literal(k, v) for k, v in hdrs)
    out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(0x4, 0, 0)        # preface + SETTINGS
    out += _frame(0x1, 0x4, 1, block)                                     # HEADERS, END_HEADERS
    parts = split_bytes(body, pieces)
    for i, p in enumerate(parts):
        out += _frame(0x0, 0x1 if i == len(parts) - 1 else 0, 1, p)       # DATA (END_STREAM last)
    status, data = None, b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(out)
        buf = b""

        def read(n):
            nonlocal buf
            while len(buf) < n:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("h2c: connection closed")
                buf += chunk
            res, buf = buf[:n], buf[n:]
            return res

        while True:
            head = read(9)
            length = int.from_bytes(head[:3], "big")
            ftype, flags, stream = head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
            payload = read(length)
            if ftype == 0x4 and not flags & 0x1:
                sock.sendall(_frame(0x4, 0x1, 0))                         # ACK their SETTINGS
            elif ftype == 0x7:
                raise ConnectionError(f"h2c: GOAWAY {payload!r}")
            elif ftype == 0x3 and stream == 1:
                raise ConnectionError(f"h2c: RST_STREAM {payload!r}")
            elif ftype == 0x1 and stream == 1:
                p = payload
                if flags & 0x8:                                           # PADDED
                    p = p[1:len(p) - p[0]]
                if flags & 0x20:                                          # PRIORITY
                    p = p[5:]
                first = p[0]
                static = {0x88: 200, 0x89: 204, 0x8a: 206, 0x8b: 304, 0x8c: 400, 0x8d: 404, 0x8e: 500}
                if first in static:
                    status = static[first]
                elif first & 0xF0 in (0x00, 0x10) or first & 0xC0 == 0x40:
                    # literal with the :status name indexed (8..14), value not Huffman coded
                    vlen = p[1] & 0x7F
                    if not p[1] & 0x80:
                        status = int(p[2:2 + vlen])
                if flags & 0x1:
                    break
            elif ftype == 0x0 and stream == 1:
                p = payload
                if flags & 0x8:
                    p = p[1:len(p) - p[0]]
                data += p
                if length:
                    # give the window back so larger answers do not stall
                    inc = struct.pack(">I", length)
                    sock.sendall(_frame(0x8, 0, 0, inc) + _frame(0x8, 0, 1, inc))
                if flags & 0x1:
                    break
    return status, data


@pytest.mark.parametrize("with_length", [False, True], ids=["no-content-length", "content-length"])
def test_http2_prior_knowledge(envoy, mocks, with_length):
    """h2c with prior knowledge (codec_type AUTO): the body arrives in several DATA frames."""
    stat = "http.gateway.downstream_cx_http2_total"
    before = envoy.stats(filter=f"^{stat}$").get(stat, 0)
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "over h2"}]}).encode()
    extra = {"x-llm-model-type": "small"}
    if with_length:
        extra["content-length"] = str(len(body))
    status, data = h2c_post(envoy.listener_port, CHAT, body, extra)
    assert status == 200, data[:300]
    echo = json.loads(data)["mock"]
    assert echo["headers"]["x-llm-model-type"] == "large"   # spoofed value replaced
    assert echo["body"]["model"] == LARGE_MODEL
    assert echo["instance"].startswith("large-")
    assert_framing(echo)   # the rewritten body is re-framed: no stale content-length
    assert envoy.stats(filter=f"^{stat}$").get(stat, 0) == before + 1


# ---------------------------------------------------------------------------------------------
# A bad plugin configuration


def test_bad_plugin_config_is_reported_and_envoy_survives(envoy_bin, mocks):
    """An unknown field in the plugin configuration.

    Observed with Envoy 1.40 and the static listener of envoy.yaml: Envoy creates the base Wasm
    VM while loading the static config; the filter's on_configure fails and logs (level error)
    `llm-router: invalid configuration: bogus: unknown field `bogus`, expected one of ...`, then
    Envoy logs `Plugin configured to fail closed failed to load` (fail_open is false) and
    `error `Unable to create Wasm plugin llm_router` initializing config`, and exits with code 1
    during startup: a clean refusal, no crash, no listener serving unfiltered traffic.
    If a later Envoy kept running instead, the listener must answer 500/503 (never proxy)."""
    path, listener, admin = variant({'"tiers": {': '"bogus": 1, "tiers": {'}, "envoy-bogus.yaml")
    before = total_served(mocks)
    try:
        with harness.start_envoy(path, timeout=20) as e:
            e.wait_log(r"invalid configuration: bogus", timeout=5)
            assert e.running(), "Envoy crashed on a bad plugin configuration"
            r = post_json(CHAT, {"model": "m", "messages": [{"role": "user", "content": "x"}]},
                          port=listener)
            assert r.status in (500, 503), (r.status, r.text[:300])
            assert r.mock is None
            assert e.running()
    except harness.EnvoyStartError as err:
        msg = str(err)
        assert "exited with code 1 during startup" in msg, msg[-3000:]   # an exit, not a signal
        assert "invalid configuration: bogus" in msg, msg[-3000:]
        assert "Unable to create Wasm plugin llm_router" in msg, msg[-3000:]
    assert total_served(mocks) == before


def test_validate_mode_runs_the_plugin_configuration(envoy_bin):
    """`envoy --mode validate` loads the module and runs on_configure, so
    scripts/validate-envoy.sh (make validate) catches a bad plugin configuration too."""
    import subprocess
    good = subprocess.run([envoy_bin, "--mode", "validate", "-c", str(harness.DEFAULT_CONFIG),
                           "--log-level", "warn"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stdout[-2000:] + good.stderr[-2000:]
    path, _, _ = variant({'"tiers": {': '"bogus": 1, "tiers": {'}, "envoy-bogus-validate.yaml")
    bad = subprocess.run([envoy_bin, "--mode", "validate", "-c", str(path), "--log-level", "warn"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0
    assert "invalid configuration: bogus" in bad.stdout + bad.stderr
