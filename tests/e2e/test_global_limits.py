"""End-to-end tests of global limits (issue 14): limits that hold across gateway replicas.

Real parts only: Envoy replicas (`--concurrency 1`: one worker, so one replica is one set of
local buckets) running variants of envoy-config/envoy-global.yaml with dist/llm_router.wasm,
the quota service (`llm-router-extproc quota`), Debian's redis-server (no persistence, killed
and restarted mid-test), the ext_proc server (`llm-router-extproc --grpc-cluster`) and Envoy's
own rate-limit filter (envoy-config/envoy-ratelimit.yaml) against the service's RLS endpoint.
The mock model servers return `usage`, so token charges reconcile against real figures.

Bounds asserted (docs/configuration.md, `tenants.global`; R = requests_per_minute, C = burst):
- requests: admitted <= C + R x (burst duration) over all replicas (no over-admission); the
  duration is measured from before the first request to after the last answer, an upper bound
  of the admission window;
- tokens: real usage admitted <= capacity + refill + in-flight x max(real - estimate, 0);
- under-admission: at most replicas x lease while leases are held (one replica alone gets the
  whole budget, not 1/replicas of it);
- Redis down: `on_outage` (static_share: each replica about C / replicas, within one lease;
  reject: nothing beyond the leases held; admit: everything); Redis back: the outage's usage is
  booked as debt in the Redis bucket (read with the protocol) and refuses later requests;
- no request hangs: every request gets an answer within HANG_S (the client's timeout).

The figures (admitted with global limits vs. per-proxy limits on the same burst) are printed
as `FIGURE ...` lines (`pytest -s` or `-rP` shows them).

Build first: `make build`, `cargo build --release -p llm-router-extproc`. A missing binary,
.wasm or redis-server fails these tests (scripts/redis-bin.sh installs redis-server).
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

import harness
import test_extproc as extproc
import test_hostile as hostile
from harness import post_json

GLOBAL_CONFIG = harness.REPO_ROOT / "envoy-config" / "envoy-global.yaml"
RATELIMIT_CONFIG = harness.REPO_ROOT / "envoy-config" / "envoy-ratelimit.yaml"
GENERATOR = harness.REPO_ROOT / "scripts" / "gen-global-config.py"
CHAT = "/v1/chat/completions"
HANG_S = 15.0          # every request must be answered within this (the client's timeout)
REPLICAS = 3
LEASE_REQ = 3
LEASE_TOK = 300
UNITS = 60_000         # Redis bucket levels are stored in 1/60000 of a request or token

# The global block of every test gateway (the shipped one with small leases and fast ticks).
GLOBAL = {"cluster": "llm_router_quota", "lease_requests": LEASE_REQ, "lease_tokens": LEASE_TOK,
          "replicas": REPLICAS, "on_outage": "static_share", "timeout_ms": 500,
          "refill_interval_ms": 100, "idle_ms": 60000}

BIG = 10_000_000


def limits(rpm: int = BIG, tpm: int = BIG, burst_requests: int | None = None,
           burst_tokens: int | None = None) -> dict:
    out: dict = {"requests_per_minute": rpm, "tokens_per_minute": tpm}
    if burst_requests is not None:
        out["burst_requests"] = burst_requests
    if burst_tokens is not None:
        out["burst_tokens"] = burst_tokens
    return out


# Tenants of the module's 3-replica gateway (each test its own buckets).
SPREAD_R, SPREAD_C = 60, 30          # 1 request/s refill, burst 30
RECON_T = 6000                       # tokens per minute (= capacity)
UNDER_T = 3000
STACK_TENANTS = {
    "spread": limits(SPREAD_R, burst_requests=SPREAD_C),
    "one": limits(SPREAD_R, burst_requests=SPREAD_C),
    "recon": limits(tpm=RECON_T),
    "under": limits(tpm=UNDER_T),
}


# ---------------------------------------------------------------------------------------------
# configuration variants


def shipped_global() -> dict:
    return yaml.safe_load(GLOBAL_CONFIG.read_text())


def plugin_json(cfg: dict) -> dict:
    return json.loads(hostile.plugin_of(cfg)["configuration"]["value"])


def set_quota_port(cfg: dict, port: int) -> None:
    (c,) = [c for c in cfg["static_resources"]["clusters"] if c["name"] == "llm_router_quota"]
    (ep,) = c["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ep["endpoint"]["address"]["socket_address"]["port_value"] = port


def plugin_for(cfg: dict, tenants: dict, global_: dict | None) -> dict:
    """The plugin configuration of `cfg` with these tenant limits and `tenants.global` =
    global_ (None: removed, i.e. per-proxy limits)."""
    pc = plugin_json(cfg)
    pc["tenants"]["limits"] = copy.deepcopy(tenants)
    if global_ is None:
        pc["tenants"].pop("global", None)
    else:
        pc["tenants"]["global"] = dict(global_)
    return pc


def gateway_config(quota_port: int, tenants: dict, global_: dict | None,
                   name: str, base: dict | None = None) -> tuple[Path, int]:
    """envoy-global.yaml (or `base`) with plugin_for(tenants, global_), the quota cluster on
    quota_port and free listener/admin ports. Returns (path, listener port)."""
    cfg = copy.deepcopy(base) if base is not None else shipped_global()
    pc = plugin_for(cfg, tenants, global_)
    hostile.plugin_of(cfg)["configuration"]["value"] = json.dumps(pc, indent=2)
    set_quota_port(cfg, quota_port)
    return hostile.write_variant(cfg, name)


# ---------------------------------------------------------------------------------------------
# traffic and figures


def chat(content: str = "hello there", **extra) -> dict:
    body = {"model": "m", "messages": [{"role": "user", "content": content}]}
    body.update(extra)
    return body


def send(port: int, tenant: str, body=None, headers=None) -> harness.Response:
    h = {"x-tenant-id": tenant}
    h.update(headers or {})
    return post_json(CHAT, body if body is not None else chat(), h, port=port, timeout=HANG_S)


@dataclass
class Burst:
    responses: list[harness.Response]
    ports: list[int]
    duration: float                      # seconds, first send to last answer
    by_port: dict[int, Counter] = field(default_factory=dict)

    @property
    def admitted(self) -> int:
        return sum(1 for r in self.responses if r.status == 200)

    @property
    def limited(self) -> int:
        return sum(1 for r in self.responses if r.status == 429)

    def admitted_at(self, port: int) -> int:
        return self.by_port.get(port, Counter())[200]


def burst(ports: list[int], tenant: str, n: int, concurrency: int, body=None,
          headers=None, allowed: tuple[int, ...] = (200, 429)) -> Burst:
    """n requests for `tenant`, round-robin over `ports`, `concurrency` at a time. Fails when a
    request gets no answer within HANG_S or an answer not in `allowed`."""
    t0 = time.monotonic()
    rs = harness.burst(n, concurrency, lambda i: (ports[i % len(ports)],
                                                  send(ports[i % len(ports)], tenant, body,
                                                       headers)),
                       return_exceptions=True)
    duration = time.monotonic() - t0
    failed = [r for r in rs if isinstance(r, BaseException)]
    assert not failed, f"{len(failed)} of {n} requests got no answer (hang?): {failed[:3]!r}"
    out = Burst([r for _, r in rs], ports, duration)
    for port, r in rs:
        out.by_port.setdefault(port, Counter())[r.status] += 1
        assert r.status in allowed, f"unexpected answer {r.status}: {r.text[:300]}"
        assert r.elapsed < HANG_S, r
    return out


def refill(per_minute: int, seconds: float) -> int:
    """What a bucket refills in `seconds`, rounded up (the bound's slack for whole units)."""
    return math.ceil(per_minute * seconds / 60.0)


def figure(what: str, **values) -> None:
    print("FIGURE " + what + ": " + ", ".join(f"{k}={v}" for k, v in values.items()),
          flush=True)


def prompt_estimate(r: harness.Response) -> int:
    return int(r.mock["headers"]["x-llm-prompt-tokens"])


def usage_total(r: harness.Response) -> int:
    return int(r.json()["usage"]["total_tokens"])


def global_metrics(quota: harness.QuotaServer, envoys: list[harness.EnvoyProcess]) -> str:
    """The quota service's call counts and each replica's global-limit metrics (for failures)."""
    lines = [ln for ln in quota.metrics().splitlines()
             if ln.startswith("llm_router_quota_") and not ln.startswith("#")]
    for i, e in enumerate(envoys):
        lines += [f"replica {i}: {ln}" for ln in e.prometheus().splitlines()
                  if "llm_router_global" in ln and not ln.startswith("#")]
    return "\n".join(lines)


def bucket_level(redis: harness.RedisServer, tenant: str, limit: str) -> int | None:
    """The whole level stored in Redis for (tenant, limit); None when the key does not exist
    (a missing key is a full bucket)."""
    h = redis.hgetall(f"llm_router:q:{{{tenant}}}:{limit}")
    if "lvl" not in h:
        return None
    return math.floor(int(h["lvl"]) / UNITS)


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module", autouse=True)
def built():
    for path, how in ((harness.WASM_PATH, "make build"),
                      (harness.QUOTA_BIN, "cargo build --release -p llm-router-extproc")):
        if not Path(path).exists():
            pytest.fail(f"{path} is missing: run `{how}`", pytrace=False)
    try:
        harness.redis_bin()
    except FileNotFoundError as e:
        pytest.fail(str(e), pytrace=False)


@dataclass
class Stack:
    redis: harness.RedisServer
    quota: harness.QuotaServer
    envoys: list[harness.EnvoyProcess]
    ports: list[int]


@pytest.fixture(scope="module")
def stack3(envoy_bin, mocks):
    """Redis + the quota service + 3 Envoy replicas (one worker each) with global limits for
    STACK_TENANTS."""
    with harness.start_redis() as redis, harness.start_quota(redis) as quota:
        configs, ports = [], []
        for i in range(REPLICAS):
            path, port = gateway_config(quota.grpc_port, STACK_TENANTS, GLOBAL,
                                           f"envoy-global-{i}.json")
            configs.append(path)
            ports.append(port)
        with harness.start_envoys(configs, concurrency=1) as envoys:
            yield Stack(redis, quota, envoys, ports)


# ---------------------------------------------------------------------------------------------
# 0. The shipped configurations


def test_generated_configs_are_current():
    r = subprocess.run([sys.executable, str(GENERATOR), "--check"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr


def test_shipped_global_config_shape():
    cfg = shipped_global()
    g = plugin_json(cfg)["tenants"]["global"]
    assert g["cluster"] == "llm_router_quota" and g["on_outage"] == "static_share", g
    (c,) = [c for c in cfg["static_resources"]["clusters"] if c["name"] == "llm_router_quota"]
    opts = c["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in opts["explicit_http_config"], "gRPC needs HTTP/2"
    rl = yaml.safe_load(RATELIMIT_CONFIG.read_text())
    names = [f["name"] for f in hostile.hcm_of(rl)["http_filters"]]
    assert names.index("envoy.filters.http.wasm") < names.index("envoy.filters.http.ratelimit"), \
        "the ratelimit filter must run after the Wasm filter published its token estimate"
    assert "global" not in plugin_json(rl)["tenants"]


# ---------------------------------------------------------------------------------------------
# 1. Requests: one budget across three replicas


def test_burst_over_three_replicas_admits_one_budget(stack3, envoy_factory, mocks):
    n = 3 * SPREAD_C + 30
    g = burst(stack3.ports, "spread", n, concurrency=6)
    bound = SPREAD_C + refill(SPREAD_R, g.duration)
    # The same burst against the same three replicas with per-proxy limits (no `global`).
    pp_ports = []
    for i in range(REPLICAS):
        path, port = gateway_config(stack3.quota.grpc_port, STACK_TENANTS, None,
                                       f"envoy-perproxy-{i}.json")
        envoy_factory(path, concurrency=1)
        pp_ports.append(port)
    p = burst(pp_ports, "spread", n, concurrency=6)
    figure("requests, 3 replicas, one tenant", burst=n, capacity=SPREAD_C,
           rpm=SPREAD_R, global_admitted=g.admitted, global_bound=bound,
           global_seconds=round(g.duration, 2), per_proxy_admitted=p.admitted,
           per_proxy_seconds=round(p.duration, 2))
    # No over-admission across the replicas.
    assert g.admitted <= bound, (g.admitted, bound)
    # Under-admission: at most replicas x lease.
    assert g.admitted >= SPREAD_C - REPLICAS * LEASE_REQ, g.admitted
    # Every replica took part (round-robin) and refused once the global budget was spent.
    for port in stack3.ports:
        assert g.admitted_at(port) > 0 and g.by_port[port][429] > 0, g.by_port
    # Per-proxy limits give each replica its own budget: about three times as much.
    assert p.admitted >= REPLICAS * SPREAD_C, p.admitted
    assert p.admitted > 2 * bound, (p.admitted, bound)


def test_burst_to_one_replica_gets_the_whole_budget(stack3, mocks):
    port = stack3.ports[0]
    n = SPREAD_C + 30
    b = burst([port], "one", n, concurrency=6)
    bound = SPREAD_C + refill(SPREAD_R, b.duration)
    figure("requests, all to one of 3 replicas", burst=n, capacity=SPREAD_C,
           admitted=b.admitted, bound=bound, seconds=round(b.duration, 2))
    assert b.admitted <= bound, (b.admitted, bound)
    # Not 1/3 of the budget: at most this replica's own lease stays unspent (the other two
    # never saw the tenant and hold nothing).
    assert b.admitted >= SPREAD_C - 2 * LEASE_REQ, b.admitted
    assert b.admitted > SPREAD_C // REPLICAS + refill(SPREAD_R, b.duration) + 2 * LEASE_REQ


# ---------------------------------------------------------------------------------------------
# 2. Tokens: usage reconciles; over-admission bounded by in-flight under-estimates


def test_token_usage_reconciles_across_replicas(stack3, mocks):
    """Estimates far above real usage (max_tokens 200, the mock answers 8): sequential requests
    over the three replicas. Admission follows real usage (the reservation is refunded), so many
    more requests pass than the estimates alone allow, and never more than the budget."""
    body = chat("count these few words please " * 3, max_tokens=200)
    admitted: list[harness.Response] = []
    limited = 0
    t0 = time.monotonic()
    for i in range(400):
        r = send(stack3.ports[i % REPLICAS], "recon", body)
        assert r.status in (200, 429), r
        if r.status == 200:
            admitted.append(r)
        else:
            limited += 1
            if limited >= 12:
                break
    duration = time.monotonic() - t0
    real = sum(usage_total(r) for r in admitted)
    est = prompt_estimate(admitted[0]) + 200
    per_request = usage_total(admitted[0])
    bound = RECON_T + refill(RECON_T, duration)
    figure("tokens reconcile, 3 replicas", capacity=RECON_T, admitted=len(admitted),
           real_tokens=real, bound=bound, estimate_per_request=est,
           real_per_request=per_request, seconds=round(duration, 2))
    assert limited > 0, "the token budget was never exhausted"
    # Estimate >= real for every request: no over-admission at all.
    assert all(prompt_estimate(r) + 200 >= usage_total(r) for r in admitted)
    assert real <= bound, (real, bound)
    # Reconciled: without refunds only capacity / estimate requests would pass.
    assert len(admitted) > 2 * (bound // est), (len(admitted), bound // est)
    # Under-admission: leases (up to twice the lease size each) and one estimate per replica.
    assert real >= RECON_T - REPLICAS * (2 * LEASE_TOK + est), real


def test_token_over_admission_bounded_by_in_flight_underestimates(stack3, mocks):
    """Completions longer than the reservation (`max_tokens: 1.0`, which the filter reads as 1
    like the model servers do, and which this mock server ignores, answering 100 tokens): real
    usage over all replicas stays within capacity + refill + in-flight under-estimates."""
    concurrency = 6
    body = chat("hello there", max_tokens=1.0)
    b = burst(stack3.ports, "under", 60, concurrency=concurrency, body=body,
              headers={"x-mock-tokens": "100"})
    ok = [r for r in b.responses if r.status == 200]
    real = sum(usage_total(r) for r in ok)
    under = max((usage_total(r) - prompt_estimate(r) - 1 for r in ok), default=0)
    bound = UNDER_T + refill(UNDER_T, b.duration) + concurrency * max(under, 0)
    figure("tokens under-estimated, 3 replicas", capacity=UNDER_T, admitted=len(ok),
           real_tokens=real, under_estimate_per_request=under, bound=bound,
           seconds=round(b.duration, 2))
    assert under > 0, "the prompt was not under-estimated: the test shows nothing"
    assert b.limited > 0
    assert real <= bound, (real, bound)


# ---------------------------------------------------------------------------------------------
# 3. Redis down and back


OUT_R, OUT_C = 6, 30          # slow refill (0.1/s), so the figures are about the burst
OUT_PER_REPLICA = 25
OUTAGE_S = 2.0                # Redis stays down this long after the burst (20 refill ticks)


@pytest.mark.parametrize("on_outage", ["static_share", "reject", "admit"])
def test_redis_outage_and_debt(on_outage, envoy_factory, redis_factory, quota_factory, mocks):
    redis = redis_factory()
    quota = quota_factory(redis)
    tenant = f"out-{on_outage}"
    tenants = {tenant: limits(OUT_R, burst_requests=OUT_C)}
    ports, envoys = [], []
    for i in range(REPLICAS):
        path, port = gateway_config(quota.grpc_port, tenants, {**GLOBAL, "on_outage": on_outage},
                                    f"envoy-outage-{i}.json")
        envoys.append(envoy_factory(path, concurrency=1))
        ports.append(port)
    # Warm: every replica holds a lease of the tenant.
    warm = burst(ports, tenant, 2 * REPLICAS, concurrency=1)
    assert warm.admitted == 2 * REPLICAS, warm.by_port
    assert bucket_level(redis, tenant, "requests") is not None, "no bucket in Redis"

    redis.kill()
    t_kill = time.monotonic()
    # reject: once its lease is spent a replica answers 503 rate_limiter_unavailable.
    allowed = (200, 429, 503) if on_outage == "reject" else (200, 429)
    out = burst(ports, tenant, REPLICAS * OUT_PER_REPLICA, concurrency=REPLICAS, allowed=allowed)
    per = {p: out.admitted_at(p) for p in ports}
    if on_outage == "reject":
        refused = [r for r in out.responses if r.status == 503]
        assert refused, "reject: no request was refused during the outage"
        assert all(r.json()["error"]["code"] == "rate_limiter_unavailable" for r in refused), \
            refused[0].text
    share = OUT_C // REPLICAS
    figure(f"Redis down, on_outage={on_outage}", capacity=OUT_C, replicas=REPLICAS,
           lease=LEASE_REQ, per_replica_admitted=list(per.values()),
           seconds=round(out.duration, 2))
    refill_share = refill(OUT_R, out.duration)
    for p, a in per.items():
        if on_outage == "static_share":
            # The lease still held (at most 2 leases) + capacity / replicas, within one lease.
            assert share - LEASE_REQ <= a <= share + 2 * LEASE_REQ + refill_share, per
        elif on_outage == "reject":
            assert a <= 2 * LEASE_REQ, per
        else:
            assert a == OUT_PER_REPLICA, per

    # The outage lasts a while (many refill ticks of the filter, each failing) before Redis is
    # back, empty (no persistence): the usage beyond the leases is then booked as debt.
    time.sleep(OUTAGE_S)
    redis.restart()
    t_back = time.monotonic()
    outage_usage = out.admitted - REPLICAS * 2 * LEASE_REQ   # what no lease had paid for
    if on_outage == "reject":
        return
    # A bound on the level (debt booking is asynchronous: wait for it, then read the figure).
    def booked():
        level = bucket_level(redis, tenant, "requests")
        slack = refill(OUT_R, time.monotonic() - t_kill) + 1
        return level is not None and level <= OUT_C - outage_usage + slack

    try:
        harness.wait_for(booked, 15, what=f"the outage's usage (>= {outage_usage}) booked in "
                                          "Redis as debt")
    except AssertionError as e:
        raise AssertionError(f"{e}; level {bucket_level(redis, tenant, 'requests')}\n"
                             f"{global_metrics(quota, envoys)}") from None
    level = bucket_level(redis, tenant, "requests")
    figure(f"Redis back, on_outage={on_outage}", outage_admitted=out.admitted,
           redis_level=level, capacity=OUT_C, seconds_to_book=round(time.monotonic() - t_back, 2))
    # The debt refuses what follows: a fresh bucket would admit OUT_C of these; at most the
    # leases taken since Redis came back pass.
    after = burst(ports, tenant, OUT_C, concurrency=REPLICAS)
    assert after.admitted <= max(0, level) + REPLICAS * 2 * LEASE_REQ, (after.admitted, level)
    if on_outage == "admit":
        assert after.admitted <= REPLICAS * 2 * LEASE_REQ < OUT_C, after.by_port


# ---------------------------------------------------------------------------------------------
# 4. The ext_proc server, 2 replicas on the same Redis


EXT_R, EXT_C = 60, 20


def test_extproc_two_replicas_share_one_budget(envoy_factory, extproc_factory, redis_factory,
                                               quota_factory, mocks):
    redis = redis_factory()
    quota = quota_factory(redis)
    plugin = extproc.with_tenants({})
    plugin["tenants"]["limits"]["xp"] = limits(EXT_R, burst_requests=EXT_C)
    plugin["tenants"]["global"] = {**GLOBAL, "replicas": 2}
    ports = []
    for _ in range(2):
        srv = extproc_factory(plugin, env=extproc.ENV,
                              extra_args=["--grpc-cluster", f"llm_router_quota={quota.url}"])
        path, port = extproc.gateway_config(srv)
        envoy_factory(path, concurrency=1)
        ports.append(port)
    n = 2 * EXT_C + 20
    b = burst(ports, "xp", n, concurrency=4)
    bound = EXT_C + refill(EXT_R, b.duration)
    figure("requests, ext_proc x 2", burst=n, capacity=EXT_C, admitted=b.admitted,
           bound=bound, seconds=round(b.duration, 2))
    assert b.admitted <= bound, (b.admitted, bound)
    assert b.admitted >= EXT_C - 2 * LEASE_REQ, b.admitted
    for p in ports:
        assert b.admitted_at(p) > 0 and b.by_port[p][429] > 0, b.by_port
    assert bucket_level(redis, "xp", "requests") is not None


# ---------------------------------------------------------------------------------------------
# 5. Envoy's own ratelimit filter against the service's RLS, 2 Envoys


RLS_R, RLS_C = 60, 20
RLS_TOK_RATE, RLS_TOK_CAP = 60, 100_000
RLS_TENANTS = {
    "rls-req": limits(RLS_R, burst_requests=RLS_C),
    "rls-tok": limits(tpm=RLS_TOK_RATE, burst_tokens=RLS_TOK_CAP),
    "rls-cap": limits(tpm=RLS_TOK_RATE, burst_tokens=600),
}


@pytest.fixture
def rls2(envoy_factory, redis_factory, quota_factory, mocks):
    redis = redis_factory()
    base = yaml.safe_load(RATELIMIT_CONFIG.read_text())
    # The service reads the tenants' limits from the same plugin configuration as the Envoys.
    quota = quota_factory(redis, plugin_config=plugin_for(base, RLS_TENANTS, None))
    ports = []
    for i in range(2):
        path, port = gateway_config(quota.grpc_port, RLS_TENANTS, None,
                                       f"envoy-ratelimit-{i}.json", base=base)
        envoy_factory(path, concurrency=1)
        ports.append(port)
    return redis, ports


def test_ratelimit_filter_requests_across_two_envoys(rls2):
    redis, ports = rls2
    n = 3 * RLS_C
    b = burst(ports, "rls-req", n, concurrency=4)
    bound = RLS_C + refill(RLS_R, b.duration)
    rls_refused = [r for r in b.responses if r.status == 429
                   and r.headers.get("x-envoy-ratelimited") == "true"]
    figure("requests, Envoy ratelimit filter x 2", burst=n, capacity=RLS_C,
           admitted=b.admitted, bound=bound, refused_by_rls=len(rls_refused))
    # Per-proxy limits alone would admit 2 x RLS_C; the shared Redis bucket admits one budget,
    # exactly (the service takes atomically: no leases, no under-admission).
    assert RLS_C <= b.admitted <= bound, (b.admitted, bound)
    assert rls_refused, "no 429 came from Envoy's ratelimit filter"
    for p in ports:
        assert b.admitted_at(p) > 0, b.by_port
    level = bucket_level(redis, "rls-req", "requests")
    assert level is not None and level <= bound - b.admitted, level


def test_ratelimit_filter_charges_the_filters_token_figures(rls2):
    """The token descriptors: the prompt estimate (filter state wasm.llm_router.prompt_tokens)
    before the request, the real completion (wasm.llm_router.completion_tokens) on stream done."""
    redis, ports = rls2
    t0 = time.monotonic()
    charged = 0
    for i in range(6):
        # Reservation 50, real completion 5: charging the reservation would show.
        r = send(ports[i % 2], "rls-tok", chat("tell me about tokens " * 4, max_tokens=50),
                 headers={"x-mock-tokens": "5"})
        assert r.status == 200, r
        assert r.json()["usage"]["completion_tokens"] == 5
        charged += prompt_estimate(r) + 5
    expected = RLS_TOK_CAP - charged
    # The stream-done charge lands after the answer: wait for the level to settle.
    harness.wait_for(lambda: (bucket_level(redis, "rls-tok", "tokens") or RLS_TOK_CAP)
                     <= expected + refill(RLS_TOK_RATE, time.monotonic() - t0), 5,
                     what="prompt estimates and completions charged in Redis")
    level = bucket_level(redis, "rls-tok", "tokens")
    figure("tokens, Envoy ratelimit filter x 2", charged_expected=charged,
           charged_in_redis=RLS_TOK_CAP - level)
    assert expected <= level <= expected + refill(RLS_TOK_RATE, time.monotonic() - t0), \
        (level, expected)


def test_ratelimit_filter_token_budget_across_two_envoys(rls2):
    redis, ports = rls2
    body = chat("tell me about tokens " * 10, max_tokens=8)
    ok, refused = [], []
    t0 = time.monotonic()
    for i in range(60):
        r = send(ports[i % 2], "rls-cap", body)
        assert r.status in (200, 429), r
        (ok if r.status == 200 else refused).append(r)
        if len(refused) >= 4:
            break
    duration = time.monotonic() - t0
    prompt_charged = sum(prompt_estimate(r) for r in ok)
    bound = 600 + refill(RLS_TOK_RATE, duration)
    figure("token budget, Envoy ratelimit filter x 2", capacity=600, admitted=len(ok),
           prompt_estimates=prompt_charged, bound=bound)
    assert refused and all(r.headers.get("x-envoy-ratelimited") == "true" for r in refused), \
        [r.headers for r in refused[:2]]
    assert prompt_charged <= bound, (prompt_charged, bound)
    assert {p for p in ports} == {ports[i % 2] for i in range(len(ok))}
