"""End-to-end tests of load-aware endpoint picking: a real Envoy (envoy-config/envoy.yaml,
`--concurrency 2`) with dist/llm_router.wasm, the real sidecar binary
(target/release/llm-router-sidecar) scraping three small-pool mock servers (8101-8103) at
different loads and pushing snapshots to the gateway.

Where a request went is read three ways: the answering mock (`x-mock-instance`), the
`x-gateway-destination-endpoint` header the mock received (absent = the STATIC pool's own round
robin), and the filter's metrics (`llm_router_endpoint_picked_total{pool,endpoint}`,
`llm_router_endpoint_fallback_total{pool,reason}`, `llm_router_shed_total{model}`).

Each test starts its own Envoy (fresh shared data: no snapshot, no in-flight counts); the mock
servers are shared by the module and get their loads set by each test.

Push security: the push's source address can be non-loopback even though the listener is on
127.0.0.1 only, by binding the client to this host's own non-loopback address (eth0's, if there is
one; 127.0.0.2 is still loopback). Without such an address that case is left to the filter's unit
tests (`endpoints::authorize`).

Build first: `make build` and `cargo build --release -p llm-router-sidecar`.
"""

from __future__ import annotations

import http.client
import json
import secrets
import subprocess
import time
from collections import Counter

import pytest

import harness
from harness import burst, post_json, post_raw, request, wait_for

SIDECAR_BIN = harness.REPO_ROOT / "target" / "release" / "llm-router-sidecar"
TOKEN = secrets.token_hex(16)
ENV = {"LLM_ROUTER_PUSH_TOKEN": TOKEN}
PUSH_PATH = "/.well-known/llm-router/load"
CHAT = "/v1/chat/completions"
BODY = {"model": "anything", "messages": [{"role": "user", "content": "Say hi"}]}
ENDPOINT_HEADER = "x-gateway-destination-endpoint"

SMALL = {"small-1": 8101, "small-2": 8102, "small-3": 8103}
ADDR = {name: f"127.0.0.1:{port}" for name, port in SMALL.items()}
ALL_SMALL = set(SMALL)

PICKED = "llm_router_endpoint_picked_total"
FALLBACK = "llm_router_endpoint_fallback_total"
SHED = "llm_router_shed_total"

STALE_AFTER_S = 2.0  # endpoints.stale_after_ms in envoy.yaml
INTERVAL_MS = 200    # the sidecar's interval in these tests


# ---------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(scope="module", autouse=True)
def built():
    if not harness.WASM_PATH.exists():
        pytest.fail(f"{harness.WASM_PATH} is missing: run `make build`", pytrace=False)
    if not SIDECAR_BIN.exists():
        pytest.fail(f"{SIDECAR_BIN} is missing: run `cargo build --release -p llm-router-sidecar`",
                    pytrace=False)


@pytest.fixture(scope="module")
def small_mocks():
    try:
        cm = harness.start_mocks(SMALL)
        m = cm.__enter__()
    except harness.PortInUse as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield m
    finally:
        cm.__exit__(None, None, None)


@pytest.fixture
def mocks(small_mocks):
    """The shared mock servers, idle and with zeroed counters."""
    set_loads(small_mocks, {n: (0, 0, 0.0) for n in SMALL})
    small_mocks.reset()
    return small_mocks


@pytest.fixture
def gateway(envoy_factory, mocks):
    """A fresh Envoy on the shipped envoy.yaml, with the push token in its environment."""
    return envoy_factory(harness.DEFAULT_CONFIG, env=ENV)


def set_loads(mocks, loads: dict[str, tuple[int, int, float]]) -> None:
    for name, (w, r, kv) in loads.items():
        mocks.set_load(name, waiting=w, running=r, kv_cache=kv)


def sidecar_config(tmp_path, pool: list[str], interval_ms: int = INTERVAL_MS,
                   name: str = "sidecar.json"):
    cfg = {
        "pools": {"small": pool},
        "interval_ms": interval_ms,
        "scrape_timeout_ms": min(150, interval_ms),
        "push_url": f"http://127.0.0.1:{harness.LISTENER_PORT}{PUSH_PATH}",
        "push_token_env": "LLM_ROUTER_PUSH_TOKEN",
    }
    p = tmp_path / name
    p.write_text(json.dumps(cfg, indent=2))
    return p


def start_sidecar(process_factory, cfg_path):
    """The sidecar, running; returns once its first push was accepted."""
    sc = process_factory([SIDECAR_BIN, "--config", cfg_path], "sidecar", env=ENV)
    wait_for(lambda: "first snapshot pushed" in sc.log_text() or not sc.running(), timeout=5,
             what="the sidecar's first push")
    assert sc.running(), sc.log_text()
    return sc


def push_once(cfg_path) -> None:
    """One scrape + push with `--once` (exit 0 = the gateway accepted it)."""
    p = subprocess.run([str(SIDECAR_BIN), "--config", str(cfg_path), "--once"],
                       env={**ENV, "PATH": "/usr/bin:/bin"}, capture_output=True, timeout=10)
    assert p.returncode == 0, p.stderr.decode(errors="replace")


def chat(headers: dict | None = None, body: dict | None = None) -> harness.Response:
    return post_json(CHAT, body or BODY, headers)


def landed(r: harness.Response) -> str:
    """The mock instance that answered."""
    assert r.status == 200, r
    return r.headers["x-mock-instance"]


def named(r: harness.Response) -> str | None:
    """The endpoint the filter named upstream (None: no pick, the STATIC pool balanced it)."""
    return r.mock["headers"].get(ENDPOINT_HEADER)


def sequential(n: int, headers: dict | None = None) -> list[harness.Response]:
    return [chat(headers) for _ in range(n)]


def metrics() -> list:
    return harness.parse_prometheus(harness.prometheus())


def picked_counts(samples=None) -> dict[str, float]:
    s = samples if samples is not None else metrics()
    return {n: harness.metric_value(s, PICKED, pool="small", endpoint=a) for n, a in ADDR.items()}


def fallback(reason: str, samples=None) -> float:
    s = samples if samples is not None else metrics()
    return harness.metric_value(s, FALLBACK, pool="small", reason=reason)


def chat_counts(mocks) -> Counter:
    return Counter({n: c for n, c in mocks.counts(CHAT).items() if c})


def delta(after: dict, before: dict) -> dict:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}


def raw_request(method: str, path: str, body: bytes | None, headers: list[tuple[str, str]],
                source: str | None = None) -> harness.Response:
    """A request with repeated headers allowed and an optional client source address."""
    conn = http.client.HTTPConnection(harness.HOST, harness.LISTENER_PORT, timeout=10,
                                      source_address=(source, 0) if source else None)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in headers:
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("content-length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return harness.Response(resp.status, harness._headers_dict(resp.getheaders()),
                                resp.read(), 0.0)
    finally:
        conn.close()


def non_loopback_address() -> str | None:
    """A local IPv4 address outside 127/8 a client can bind (e.g. eth0's), or None."""
    try:
        lines = open("/proc/net/fib_trie").read().splitlines()
    except OSError:
        return None
    for prev, line in zip(lines, lines[1:]):
        if "/32 host LOCAL" in line:
            ip = prev.strip().split()[-1]
            if not ip.startswith("127."):
                return ip
    return None


# Loads of task 1: small-2 is clearly the least loaded, small-3 next, small-1 the busiest.
#   score = waiting/5 + kv/0.8 (+ 0.01 * running): small-1 1.55, small-2 0.125, small-3 0.775
LOADS_2_BEST = {"small-1": (4, 0, 0.6), "small-2": (0, 0, 0.1), "small-3": (2, 0, 0.3)}


# ---------------------------------------------------------------------------------------------
# 1. least loaded


def test_requests_land_on_the_least_loaded_endpoint(gateway, mocks, process_factory, tmp_path):
    set_loads(mocks, LOADS_2_BEST)
    start_sidecar(process_factory, sidecar_config(tmp_path, list(ADDR.values())))
    before = picked_counts()

    rs = sequential(12)

    assert Counter(landed(r) for r in rs) == {"small-2": 12}
    assert {named(r) for r in rs} == {ADDR["small-2"]}
    assert chat_counts(mocks) == {"small-2": 12}
    after = wait_for(lambda: (p := picked_counts())["small-2"] - before["small-2"] >= 12 and p,
                     what="picked_total{endpoint=127.0.0.1:8102} += 12")
    assert delta(after, before) == {"small-2": 12}


# ---------------------------------------------------------------------------------------------
# 2. a concurrent burst spreads (in-flight accounting)


def test_concurrent_burst_spreads_over_endpoints(gateway, mocks, tmp_path):
    n = 9
    slow = {"x-mock-delay-ms": "700"}  # all n are in flight together
    cfg = sidecar_config(tmp_path, list(ADDR.values()))

    # Equal, low loads: every endpoint scores the same until requests are in flight.
    set_loads(mocks, {name: (0, 0, 0.1) for name in SMALL})
    push_once(cfg)
    rs = burst(n, n, lambda i: chat(slow))
    equal = Counter(landed(r) for r in rs)
    print("equal loads, burst of", n, "->", dict(equal))
    assert set(equal) == ALL_SMALL, equal
    assert max(equal.values()) <= 5, equal  # ideal 3/3/3; two workers may race once or twice

    # small-2 idle, the others 2 queued: without in-flight accounting all n would go to small-2.
    # With it, small-2 takes ~2 first, then the three level out (about 4-5 / 2-3 / 2-3).
    set_loads(mocks, {"small-1": (2, 0, 0.1), "small-2": (0, 0, 0.1), "small-3": (2, 0, 0.1)})
    push_once(cfg)
    t_push = time.monotonic()
    rs = burst(n, n, lambda i: chat(slow))
    skewed = Counter(landed(r) for r in rs)
    print("small-2 idle, others waiting=2, burst of", n, "->", dict(skewed))
    assert set(skewed) == ALL_SMALL, skewed
    assert skewed["small-2"] <= 6, skewed
    assert skewed["small-2"] >= max(skewed["small-1"], skewed["small-3"]), skewed

    # The burst has ended, so its in-flight counts were given back: with the same (still fresh)
    # snapshot, small-2 is the best again for sequential requests.
    assert time.monotonic() - t_push < STALE_AFTER_S - 0.3, "too slow to check the release"
    after = Counter(landed(r) for r in sequential(3))
    assert after == {"small-2": 3}, after


def test_in_flight_count_is_released_when_the_client_goes_away(gateway, mocks):
    """Requests whose client disconnects give their in-flight count back too."""
    # Manual pushes (no sidecar): the snapshot version stays the same for the whole test.
    # small-1/3 score 2/5 + 0.1/0.8 = 0.525; small-2 0 + 1/5 per request in flight. So small-2
    # takes the 3 aborted requests (0, 0.2, 0.4 < 0.525), and would lose to the others (0.6) if
    # their counts leaked.
    snap = {"pools": {"small": [
        {"address": ADDR["small-1"], "waiting": 2, "kv_cache": 0.1},
        {"address": ADDR["small-2"], "waiting": 0, "kv_cache": 0.0},
        {"address": ADDR["small-3"], "waiting": 2, "kv_cache": 0.1},
    ]}}
    r = post_json(PUSH_PATH, snap, {"authorization": f"Bearer {TOKEN}"})
    assert r.status == 204, r
    t0 = time.monotonic()

    def aborted(i):
        try:
            post_json(CHAT, BODY, {"x-mock-delay-ms": "1500"}, timeout=0.25)
        except OSError:  # the client gives up (socket timeout) and closes the connection
            return "aborted"
        return "answered"

    assert burst(3, 3, aborted) == ["aborted"] * 3
    assert wait_for(lambda: mocks.counts(CHAT)["small-2"] == 3 or None, timeout=1) is True
    time.sleep(0.1)
    got = Counter(landed(r) for r in sequential(4))
    assert time.monotonic() - t0 < STALE_AFTER_S - 0.2, "too slow: the snapshot went stale"
    assert got == {"small-2": 4}, got


# ---------------------------------------------------------------------------------------------
# 3. picks follow load changes within the push interval


def test_picks_follow_load_changes(gateway, mocks, process_factory, tmp_path):
    set_loads(mocks, LOADS_2_BEST)
    start_sidecar(process_factory, sidecar_config(tmp_path, list(ADDR.values())))
    assert Counter(landed(r) for r in sequential(4)) == {"small-2": 4}

    moves = []
    for best, loads in (
        ("small-3", {"small-2": (4, 0, 0.6), "small-3": (0, 0, 0.1), "small-1": (2, 0, 0.3)}),
        ("small-1", {"small-3": (3, 0, 0.5), "small-1": (0, 0, 0.05)}),
    ):
        set_loads(mocks, loads)
        t0 = time.monotonic()
        time.sleep(2.5 * INTERVAL_MS / 1000)  # ~2 intervals: scraped and pushed
        got = Counter(landed(r) for r in sequential(6))
        moves.append((best, round(time.monotonic() - t0, 2), dict(got)))
        assert got == {best: 6}, moves
    print("moves (expected best, s after the load change, picks):", moves)


# ---------------------------------------------------------------------------------------------
# 4. no snapshot / stale snapshot: the STATIC pool's own balancing


def test_fallback_without_snapshot_and_after_sidecar_dies(gateway, mocks, process_factory,
                                                          tmp_path):
    set_loads(mocks, LOADS_2_BEST)

    # Before any push: no endpoint named, round robin over the pool.
    rs = sequential(9)
    assert all(named(r) is None for r in rs)
    assert set(landed(r) for r in rs) == ALL_SMALL, Counter(landed(r) for r in rs)
    wait_for(lambda: fallback("no_snapshot") >= 9, what="fallback{reason=no_snapshot} >= 9")
    assert fallback("stale") == 0

    sc = start_sidecar(process_factory, sidecar_config(tmp_path, list(ADDR.values())))
    assert Counter(landed(r) for r in sequential(4)) == {"small-2": 4}

    sc.proc.kill()
    sc.proc.wait(5)
    t_kill = time.monotonic()
    # Still fresh for up to stale_after_ms after the last push.
    assert Counter(landed(r) for r in sequential(3)) == {"small-2": 3}
    assert time.monotonic() - t_kill < 1.0
    stale_before = fallback("stale")
    no_snap_before = fallback("no_snapshot")

    time.sleep(max(0.0, t_kill + STALE_AFTER_S + 0.3 - time.monotonic()))
    rs = sequential(12)
    spread = Counter(landed(r) for r in rs)
    print("after the sidecar died (stale snapshot), 12 sequential requests ->", dict(spread))
    assert all(named(r) is None for r in rs)
    assert set(spread) == ALL_SMALL, spread
    s = wait_for(lambda: (m := metrics()) and fallback("stale", m) - stale_before >= 12 and m,
                 what="fallback{reason=stale} += 12")
    assert fallback("stale", s) - stale_before == 12
    assert fallback("no_snapshot", s) == no_snap_before

    # A sidecar started again brings the picks back at its first push.
    start_sidecar(process_factory, sidecar_config(tmp_path, list(ADDR.values()), name="again.json"))
    assert Counter(landed(r) for r in sequential(3)) == {"small-2": 3}


# ---------------------------------------------------------------------------------------------
# 5. push security


def test_push_is_answered_by_the_filter_and_guarded(gateway, mocks):
    snap = {"pools": {"small": [
        {"address": ADDR["small-1"], "waiting": 3, "running": 1, "kv_cache": 0.5, "healthy": True},
        {"address": ADDR["small-2"], "waiting": 0, "running": 0, "kv_cache": 0.1, "healthy": True},
        {"address": ADDR["small-3"], "waiting": 2, "running": 1, "kv_cache": 0.3, "healthy": True},
    ]}, "generated_at_ms": int(time.time() * 1000), "seq": 1}
    valid = json.dumps(snap).encode()
    auth = {"authorization": f"Bearer {TOKEN}"}

    def code(r):
        return r.json()["error"]["code"]

    cases = {
        "wrong token": (post_raw(PUSH_PATH, valid, {"authorization": "Bearer nope"}), 403),
        "missing token": (post_raw(PUSH_PATH, valid), 403),
        "token prefix": (post_raw(PUSH_PATH, valid, {"authorization": f"Bearer {TOKEN[:-1]}"}), 403),
        "token + extra": (post_raw(PUSH_PATH, valid, {"authorization": f"Bearer {TOKEN}x"}), 403),
        "basic scheme": (post_raw(PUSH_PATH, valid, {"authorization": f"Basic {TOKEN}"}), 403),
        "GET": (request("GET", PUSH_PATH, None, auth), 405),
        "PUT": (request("PUT", PUSH_PATH, valid, {**auth, "content-type": "application/json"}), 405),
        "malformed JSON": (post_raw(PUSH_PATH, b'{"pools": {"small": [', auth), 400),
        "no pools": (post_raw(PUSH_PATH, b'{"seq": 1}', auth), 400),
        "host name address": (post_raw(PUSH_PATH, json.dumps(
            {"pools": {"small": [{"address": "localhost:8102"}]}}), auth), 400),
        "empty body": (post_raw(PUSH_PATH, b"", auth), 400),
    }
    for what, (r, want) in cases.items():
        assert r.status == want, (what, r)
    assert {code(cases[w][0]) for w in ("wrong token", "missing token", "basic scheme")} == {"forbidden"}
    assert cases["GET"][0].headers.get("allow") == "POST"
    assert code(cases["malformed JSON"][0]) == "invalid_snapshot"

    # Nothing stored yet: requests are not picked.
    assert named(chat()) is None

    ok = post_raw(PUSH_PATH, valid, auth)
    assert ok.status == 204 and ok.body == b"", ok
    # 127.0.0.2 is another loopback address: accepted too.
    r = raw_request("POST", PUSH_PATH, valid, [("authorization", f"Bearer {TOKEN}"),
                                               ("content-type", "application/json")],
                    source="127.0.0.2")
    assert r.status == 204, r
    # A query string does not hide the push path from the filter.
    r = post_raw(PUSH_PATH + "?via=query", valid, auth)
    assert r.status == 204, r
    # A chunked push (several body callbacks) is read whole; more than 1 MiB is refused.
    r = harness.post_chunked(PUSH_PATH, harness.split_bytes(valid, 3), auth)
    assert r.status == 204, r
    big = json.dumps({**snap, "padding": "x" * (1100 * 1024)}).encode()
    r = post_raw(PUSH_PATH, big, auth)
    assert r.status == 413 and r.json()["error"]["code"] == "request_too_large", r

    # A non-loopback source (this host's own non-loopback address, connecting to 127.0.0.1).
    nl = non_loopback_address()
    if nl is not None:
        r = raw_request("POST", PUSH_PATH, valid, [("authorization", f"Bearer {TOKEN}"),
                                                   ("content-type", "application/json")],
                        source=nl)
        assert r.status == 403, (nl, r)

    # The valid pushes were used.
    r = chat()
    assert landed(r) == "small-2" and named(r) == ADDR["small-2"]

    # No push ever reached a model server (only the two chat requests did).
    for name, st in mocks.all_stats().items():
        assert PUSH_PATH not in st["by_path"], (name, st["by_path"])
        assert all(not rec["path"].startswith(PUSH_PATH) for rec in st["recent"]), name
    assert sum(mocks.counts().values()) == 2, mocks.counts()
    assert sum(mocks.counts(CHAT).values()) == 2


def test_push_loopback_check_ignores_x_forwarded_for(gateway, mocks):
    """The push check trusts the TCP peer, not x-forwarded-for (envoy.yaml sets
    use_remote_address: true)."""
    nl = non_loopback_address()
    # Missing the address is a failure, not a skip: the check would go untested.
    assert nl is not None, "this host has no non-loopback IPv4 address to connect from"
    valid = json.dumps({"pools": {"small": [{"address": ADDR["small-2"]}]}}).encode()
    hdrs = [("authorization", f"Bearer {TOKEN}"), ("content-type", "application/json")]
    assert raw_request("POST", PUSH_PATH, valid, hdrs, source=nl).status == 403
    # A non-loopback client claiming to be local is refused...
    spoofed = raw_request("POST", PUSH_PATH, valid, hdrs + [("x-forwarded-for", "127.0.0.1")],
                          source=nl)
    # ... and a loopback client is judged by its connection, whatever the header says.
    r = raw_request("POST", PUSH_PATH, valid, hdrs + [("x-forwarded-for", "10.1.2.3")])
    assert (spoofed.status, r.status) == (403, 204)


# ---------------------------------------------------------------------------------------------
# 6. saturation, shedding, unhealthy endpoints

SHED_CONFIG_REPLACE = {
    '"models": {\n': '"models": {\n'
                     '                        "batch-jobs": {\n'
                     '                          "targets": [{ "model": "llama-3.1-8b-instruct", "weight": 1 }],\n'
                     '                          "criticality": "sheddable"\n'
                     '                        },\n',
    '"max_kv_cache": 0.8\n': '"max_kv_cache": 0.8,\n'
                             '                        "criticality_header": "x-llm-criticality"\n',
}


def test_saturated_pool_sheds_sheddable_requests(envoy_factory, mocks, process_factory, tmp_path):
    cfg = harness.config_variant(harness.DEFAULT_CONFIG, SHED_CONFIG_REPLACE, "envoy-shed.yaml")
    envoy_factory(cfg, env=ENV)
    # All saturated: two by queue (>= max_queue 5), one by KV cache (>= 0.8).
    # Scores: small-1 6/5+0.2/0.8 = 1.45, small-2 5/5+0.1/0.8 = 1.125, small-3 0.95/0.8 = 1.1875
    set_loads(mocks, {"small-1": (6, 0, 0.2), "small-2": (5, 0, 0.1), "small-3": (0, 0, 0.95)})
    start_sidecar(process_factory, sidecar_config(tmp_path, list(ADDR.values())))
    shed_before = metrics()
    sheddable = {**BODY, "model": "batch-jobs"}

    r = chat(body=sheddable)
    assert r.status == 429, r
    assert r.json()["error"]["code"] == "overloaded"
    assert r.headers.get("retry-after") == "1"
    # A standard request, and a standard model asked as critical: least loaded of the saturated.
    for h in ({}, {"x-llm-criticality": "critical"}):
        r = chat(h)
        assert landed(r) == "small-2" and named(r) == ADDR["small-2"], (h, r)
    # The header lowers a standard model to sheddable, but cannot raise a sheddable one.
    assert chat({"x-llm-criticality": "sheddable"}).status == 429
    assert chat({"x-llm-criticality": "critical"}, body=sheddable).status == 429
    assert chat({"x-llm-criticality": "standard"}, body=sheddable).status == 429
    assert chat_counts(mocks) == {"small-2": 2}, "a shed request reached a model server"

    s = wait_for(lambda: (m := metrics()) and sum(
        v for n, _, v in m if n == SHED) - sum(v for n, _, v in shed_before if n == SHED) >= 4 and m,
        what="shed_total += 4")
    shed = {lbl.get("model"): v for n, lbl, v in s if n == SHED and v}
    print("shed_total by model:", shed)
    assert sum(shed.values()) == 4, shed

    # One endpoint frees up: sheddable requests are served again, by it.
    mocks.set_load("small-3", kv_cache=0.2)
    time.sleep(2.5 * INTERVAL_MS / 1000)
    r = chat(body=sheddable)
    assert landed(r) == "small-3", r
    assert r.json()["model"] == "llama-3.1-8b-instruct"


def test_unhealthy_endpoint_is_never_picked(gateway, mocks, mocks_factory, process_factory,
                                            tmp_path):
    # A fourth small server on a free port, idle; the three others busier.
    port4 = harness.free_port()
    m4 = mocks_factory({"small-4": port4}, load={"small-4": (0, 0, 0.0)})
    addr4 = f"127.0.0.1:{port4}"
    # A listed endpoint where nothing listens at all (never healthy).
    dead = f"127.0.0.1:{harness.free_port()}"
    set_loads(mocks, {"small-1": (1, 0, 0.2), "small-2": (1, 0, 0.1), "small-3": (2, 0, 0.3)})
    sc = start_sidecar(process_factory,
                       sidecar_config(tmp_path, [dead] + list(ADDR.values()) + [addr4]))

    rs = sequential(4)
    assert {landed(r) for r in rs} == {"small-4"} and {named(r) for r in rs} == {addr4}

    m4.stop()  # small-4 goes away: unhealthy at the next scrape
    wait_for(lambda: f"{addr4} is UNHEALTHY" in sc.log_text(), timeout=3,
             what="the sidecar to report small-4 unhealthy")
    time.sleep(2.5 * INTERVAL_MS / 1000)
    rs = sequential(12)
    got = Counter(landed(r) for r in rs)
    print("small-4 stopped, 12 sequential ->", dict(got))
    assert all(r.status == 200 for r in rs)
    assert got == {"small-2": 12}, got  # the least loaded healthy one
    assert {named(r) for r in rs} == {ADDR["small-2"]}
    s = metrics()
    assert harness.metric_value(s, PICKED, pool="small", endpoint=dead) == 0
    assert harness.metric_value(s, PICKED, pool="small", endpoint=addr4) == 4

    # Nothing healthy at all: no endpoint named, the STATIC pool balances (reason no_endpoint).
    sc.stop()
    r = post_json(PUSH_PATH, {"pools": {"small": [
        {"address": a, "waiting": 0, "running": 0, "kv_cache": 0.0, "healthy": False}
        for a in ADDR.values()]}}, {"authorization": f"Bearer {TOKEN}"})
    assert r.status == 204, r
    before = fallback("no_endpoint")
    rs = sequential(6)
    assert all(named(r) is None for r in rs) and len({landed(r) for r in rs}) >= 2
    wait_for(lambda: fallback("no_endpoint") - before == 6, what="fallback{reason=no_endpoint} += 6")


# ---------------------------------------------------------------------------------------------
# 7. a client cannot pick its endpoint


def test_spoofed_destination_header_is_removed(gateway, mocks, tmp_path):
    spoof = {ENDPOINT_HEADER: ADDR["small-3"]}

    # No snapshot: the header is removed, so the STATIC pool balances (not all on small-3).
    rs = sequential(9, spoof)
    assert all(named(r) is None for r in rs)
    assert set(landed(r) for r in rs) == ALL_SMALL, Counter(landed(r) for r in rs)
    # Even together with a spoofed tier header, or pointing at Envoy's admin port.
    for h in ({**spoof, "x-llm-model-type": "small"},
              {ENDPOINT_HEADER: "127.0.0.1:9901", "x-llm-model-type": "small"}):
        rs = sequential(6, h)
        assert all(named(r) is None for r in rs), h
        assert len({landed(r) for r in rs}) >= 2, h

    # Requests the filter does not inspect lose the headers as well (catch-all route, STATIC) ...
    for method, path in (("GET", "/v1/models"), ("PUT", "/not-an-api")):
        rs = [request(method, path, b"{}" if method == "PUT" else None,
                      {ENDPOINT_HEADER: "127.0.0.1:9901", "x-llm-model-type": "small"})
              for _ in range(6)]
        assert all(r.status == 200 for r in rs), (path, rs)
        assert all(named(r) is None and "x-llm-model-type" not in r.mock["headers"] for r in rs)
        assert len({landed(r) for r in rs}) >= 2, path
    # ... and an uninspected POST with a spoofed tier still gets no route to a pool.
    r = request("POST", "/not-an-api", b"{}", {ENDPOINT_HEADER: "127.0.0.1:9901",
                                               "x-llm-model-type": "small"})
    assert r.status == 404 and r.mock is None, r

    # With a snapshot the filter's pick wins (exactly one value upstream).
    set_loads(mocks, LOADS_2_BEST)
    push_once(sidecar_config(tmp_path, list(ADDR.values())))
    rs = sequential(6, spoof)
    assert {landed(r) for r in rs} == {"small-2"}
    assert {named(r) for r in rs} == {ADDR["small-2"]}
    # Repeated spoofed headers are all removed.
    body = json.dumps(BODY).encode()
    r = raw_request("POST", CHAT, body, [("content-type", "application/json"),
                                         (ENDPOINT_HEADER, ADDR["small-3"]),
                                         (ENDPOINT_HEADER, ADDR["small-1"])])
    assert landed(r) == "small-2" and named(r) == ADDR["small-2"], r
