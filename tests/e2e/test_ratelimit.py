"""End-to-end tests of the per-tenant rate limits: a real Envoy (`--concurrency 2`) running
variants of envoy-config/envoy.yaml with dist/llm_router.wasm in front of the mock model servers.

Every variant is made from the shipped envoy.yaml with harness.config_variant: only the plugin's
`tenants` block (tight limits), the listener/admin ports (free ports, so these run next to the
module Envoy of other test files) and, for the JWT test, an extra jwt_authn filter change.

One Envoy (module fixture `rl`) carries the limits of most tests; each test uses its own tenant,
so the tests do not share buckets:

    default   3 rpm          unconfigured ids (own bucket for the first 5 ids, then `overflow`)
                             and `anonymous` (no header)
    acme      20 rpm         the burst test (tokens practically unlimited)
    bob       100000 rpm     the bystander of the burst
    tok       2000 tpm       token bucket checked before the request
    recon / sse / err        6000 tpm: reconciliation from JSON usage / SSE usage / upstream error
    big / debt               2000 tpm: requests larger than the whole token burst

The unconfigured-tenant test must be the only one that sends unconfigured ids to `rl` (the
tracked-id slots are a property of the Envoy process).

Not covered here: changing limits by a new configuration while keeping bucket levels (static
Envoy cannot reload the plugin configuration in place; host-sim covers it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

import harness
from harness import metric_value, post_json, stream_sse

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
CAP = 4096  # max_tokens_cap of envoy.yaml
RL_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
              "x-ratelimit-reset-requests", "x-ratelimit-limit-tokens",
              "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")
LABELS_OK = {"default", "anonymous", "overflow"}

SHIPPED_DEFAULT = '"default": { "requests_per_minute": 600, "tokens_per_minute": 1000000 },'
SHIPPED_ACME = '"acme": { "requests_per_minute": 60, "tokens_per_minute": 200000 }'
SHIPPED_CAP = '"max_tokens_cap": 4096'

ACME_RPM = 20
DEFAULT_RPM = 3
MAX_TRACKED = 5
TOK_TPM = 2000
RECON_TPM = 6000

RL_TENANTS = {
    "acme": (ACME_RPM, 100_000_000),
    "bob": (100_000, 100_000_000),
    "tok": (100_000, TOK_TPM),
    "recon": (100_000, RECON_TPM),
    "sse": (100_000, RECON_TPM),
    "err": (100_000, RECON_TPM),
    "big": (100_000, TOK_TPM),
    "debt": (100_000, TOK_TPM),
}


# ---------------------------------------------------------------------------------------------
# helpers


def variant(replace: dict[str, str], name: str) -> tuple[Path, int, int]:
    """envoy.yaml with `replace` applied (each old text exactly once) and the listener/admin on
    free ports. Returns (path, listener_port, admin_port)."""
    text = harness.DEFAULT_CONFIG.read_text()
    listener, admin = harness.free_port(), harness.free_port()
    replace = dict(replace)
    replace["port_value: 10000"] = f"port_value: {listener}"
    replace["port_value: 9901"] = f"port_value: {admin}"
    for old in replace:
        assert text.count(old) == 1, f"{old!r} must occur once in envoy.yaml (it has changed?)"
    return harness.config_variant(harness.DEFAULT_CONFIG, replace, name), listener, admin


def limits_line(tenants: dict[str, tuple[int, int]]) -> str:
    return ", ".join(f'"{t}": {{ "requests_per_minute": {r}, "tokens_per_minute": {k} }}'
                     for t, (r, k) in tenants.items())


def chat(content: str = "hello there", **extra) -> dict:
    body = {"model": "m", "messages": [{"role": "user", "content": content}]}
    body.update(extra)
    return body


class Gateway:
    """An Envoy variant: its listener port and admin."""

    def __init__(self, envoy: harness.EnvoyProcess, port: int):
        self.envoy = envoy
        self.port = port

    def post(self, body, tenant: str | None = None, path: str = CHAT, headers=None,
             timeout: float = 10.0) -> harness.Response:
        h = dict(headers or {})
        if tenant is not None:
            h["x-tenant-id"] = tenant
        return post_json(path, body, h, port=self.port, timeout=timeout)

    def prom(self):
        return harness.parse_prometheus(self.envoy.prometheus())

    def limited(self, tenant: str | None = None, bucket: str | None = None) -> float:
        labels = {}
        if tenant is not None:
            labels["tenant"] = tenant
        if bucket is not None:
            labels["bucket"] = bucket
        return metric_value(self.prom(), "llm_router_rate_limited_total", **labels)

    def finished(self) -> int:
        """Inspected requests whose end (on_log: usage reconciliation, then this counter) is done."""
        return int(sum(self.envoy.stats(filter="llm_router_requests_total").values()))

    def wait_finished(self, n: int, timeout: float = 5.0) -> None:
        harness.wait_for(lambda: self.finished() >= n, timeout, what=f"{n} requests finished")


def served(mocks, path: str | None = None) -> int:
    return sum(mocks.counts(path).values())


def inflight(mocks) -> int:
    return sum(s["inflight"] for s in mocks.all_stats().values())


def remaining_tokens(r) -> int:
    return int(r.headers["x-ratelimit-remaining-tokens"])


def prompt_estimate(r) -> int:
    """The filter's prompt estimate, as the upstream saw it."""
    return int(r.mock["headers"]["x-llm-prompt-tokens"])


def assert_429(r, bucket: str, limit_requests: int | None = None) -> dict:
    """A well-formed rate-limit refusal (OpenAI shape and headers)."""
    assert r.status == 429, f"{r.status} {r.text[:300]}"
    j = r.json()
    assert set(j) == {"error"}, j
    e = j["error"]
    assert set(e) == {"message", "type", "param", "code"}, e
    assert e["code"] == "rate_limit_exceeded" and e["type"] == bucket and e["param"] is None, e
    assert isinstance(e["message"], str) and f"for {bucket} per minute" in e["message"], e
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    assert int(r.headers["retry-after"]) >= 1, r.headers
    for h in RL_HEADERS:
        assert h in r.headers, f"429 without {h}: {r.headers}"
    if limit_requests is not None:
        assert r.headers["x-ratelimit-limit-requests"] == str(limit_requests)
    if bucket == "requests":
        assert r.headers["x-ratelimit-remaining-requests"] == "0", r.headers
    assert r.mock is None  # the filter answered, not the upstream
    return e


def held(gw: Gateway, mocks, body, tenant: str, delay_ms: int, expect_inflight: int):
    """Send a request that the upstream holds for delay_ms (its charge stays unreconciled
    meanwhile); returns (thread, result list) once the upstream has it."""
    out: list = []

    def run():
        try:
            out.append(gw.post(body, tenant, headers={"x-mock-delay-ms": str(delay_ms)}))
        except Exception as e:  # noqa: BLE001 - reported by the caller
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    harness.wait_for(lambda: out or inflight(mocks) >= expect_inflight, 5,
                     what=f"{expect_inflight} requests held upstream")
    if out and not (isinstance(out[0], harness.Response) and out[0].status == 200):
        raise AssertionError(f"held request was not admitted: {out[0]!r}")
    return t, out


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(claims: dict, key: bytes, kid: str = "e2e") -> str:
    header = {"alg": "HS256", "typ": "JWT", "kid": kid}
    signing_input = (b64url(json.dumps(header, separators=(",", ":")).encode()) + "." +
                     b64url(json.dumps(claims, separators=(",", ":")).encode()))
    sig = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(sig)


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def rl(envoy_bin, mocks):
    """Envoy (2 workers) with the tight limits of the module docstring."""
    path, port, _ = variant({
        SHIPPED_DEFAULT: SHIPPED_DEFAULT.replace("600", str(DEFAULT_RPM)),
        SHIPPED_ACME: limits_line(RL_TENANTS),
        SHIPPED_CAP: f'{SHIPPED_CAP}, "max_tracked_tenants": {MAX_TRACKED}',
    }, "envoy-ratelimit.yaml")
    with harness.start_envoy(path, concurrency=2) as e:
        yield Gateway(e, port)


# ---------------------------------------------------------------------------------------------
# 1. Request bucket under a parallel burst, shared by both workers


def test_burst_is_bounded_across_workers(rl, mocks):
    n_acme, n_bob, conc = 300, 60, 32
    body = chat("burst test", max_tokens=1)
    port = rl.port
    listener = f"listener.127.0.0.1_{port}.worker_"

    def worker_cx():
        st = rl.envoy.stats(filter=r"^listener\.127\.0\.0\.1_%d\.worker_" % port)
        return {k[len(listener):].split(".")[0]: v for k, v in st.items()
                if k.endswith("downstream_cx_total")}

    cx0 = worker_cx()
    chat0, comp0 = served(mocks, CHAT), served(mocks, COMPLETIONS)
    # bob's requests are interleaved with acme's, on /v1/completions so the mock counts them apart.
    plan = ["acme"] * n_acme
    for i in range(n_bob):
        plan.insert(i * (n_acme // n_bob) + i, "bob")

    def one(i):
        if plan[i] == "bob":
            return "bob", post_json(COMPLETIONS, {"model": "m", "prompt": "bob here", "max_tokens": 1},
                                    {"x-tenant-id": "bob"}, port=port)
        return "acme", post_json(CHAT, body, {"x-tenant-id": "acme"}, port=port)

    t0 = time.monotonic()
    rs = harness.burst(len(plan), conc, one)
    duration = time.monotonic() - t0

    acme = [r for who, r in rs if who == "acme"]
    bob = [r for who, r in rs if who == "bob"]
    statuses = Counter(r.status for r in acme)
    assert set(statuses) <= {200, 429}, statuses
    admitted, refused = statuses[200], statuses[429]
    # Bucket capacity 20, refilled at 20/min from its creation (the first acme request, after
    # t0) until the last admission (before the burst ended): at most capacity + rate * duration
    # whole requests (+2 ms for Envoy's millisecond clock).
    allowed = math.floor(ACME_RPM + ACME_RPM * (duration + 0.002) / 60)
    print(f"\nadmitted={admitted} allowed={allowed} refused={refused} duration={duration:.2f}s "
          f"(acme {ACME_RPM}/min, {n_acme} requests on {conc} connections, 2 workers)")
    assert admitted >= ACME_RPM, f"false refusals: only {admitted} of a full bucket of {ACME_RPM}"
    assert admitted <= allowed, f"{admitted} admitted, at most {allowed} allowed in {duration:.2f}s"
    for r in acme:
        if r.status == 429:
            assert_429(r, "requests", limit_requests=ACME_RPM)
        else:
            assert r.headers["x-ratelimit-limit-requests"] == str(ACME_RPM), r.headers
            assert all(h in r.headers for h in RL_HEADERS), r.headers
    # The upstream saw exactly the admitted acme requests, and every bob request.
    assert served(mocks, CHAT) - chat0 == admitted
    assert served(mocks, COMPLETIONS) - comp0 == n_bob
    assert [r.status for r in bob] == [200] * n_bob, Counter(r.status for r in bob)
    # Right after the burst bob is still served, acme still refused.
    assert rl.post({"model": "m", "prompt": "bob again"}, "bob", COMPLETIONS).status == 200
    assert_429(rl.post(body, "acme"), "requests", limit_requests=ACME_RPM)
    assert rl.limited("acme", "requests") == refused + 1
    assert rl.limited("bob") == 0
    # Both workers took part (one connection per request).
    cx1 = worker_cx()
    per_worker = {w: cx1.get(w, 0) - cx0.get(w, 0) for w in cx1}
    print(f"connections per worker: {per_worker}")
    assert len(per_worker) == 2 and all(v > 0 for v in per_worker.values()), per_worker


# ---------------------------------------------------------------------------------------------
# 2. Token bucket: charged before the request, refused as soon as the next charge does not fit


def test_token_bucket_refuses_exactly_when_charge_does_not_fit(rl, mocks):
    prompt = "please count the tokens of this prompt"
    # The filter's estimate of this prompt (a bystander tenant pays for finding out).
    p = prompt_estimate(rl.post(chat(prompt, max_tokens=1), "bob"))
    assert 0 < p < 100

    def body(charge):  # a request charged exactly `charge` tokens (estimate + max_tokens)
        return chat(prompt, max_tokens=charge - p)

    base = inflight(mocks)
    t0 = time.monotonic()
    threads = []
    # Three requests of 500 tokens, held upstream so no usage refund happens meanwhile.
    for k in range(1, 4):
        threads.append(held(rl, mocks, body(500), "tok", 3000, base + k))
    # 500 tokens left: a request charged 600 does not fit (refused before reaching upstream) ...
    before = served(mocks)
    r = rl.post(body(600), "tok")
    elapsed = time.monotonic() - t0
    refill = math.ceil(TOK_TPM * (elapsed + 0.01) / 60)
    e = assert_429(r, "tokens")
    assert 500 <= remaining_tokens(r) <= 500 + refill, r.headers
    assert int(r.headers["x-ratelimit-remaining-requests"]) > 0, r.headers
    assert served(mocks) == before
    # ... one of exactly 500 does (the bucket goes to ~0, not one request late or early) ...
    threads.append(held(rl, mocks, body(500), "tok", 3000, base + 4))
    # ... and the next one, again 500, is refused.
    r = rl.post(body(500), "tok")
    elapsed = time.monotonic() - t0
    refill = math.ceil(TOK_TPM * (elapsed + 0.01) / 60)
    assert refill < 500
    assert_429(r, "tokens")
    assert 0 <= remaining_tokens(r) <= refill, r.headers
    assert served(mocks) == before + 1
    assert rl.limited("tok", "tokens") == 2 and rl.limited("tok", "requests") == 0
    # The admitted ones reported the level after their own charge.
    for k, (t, out) in enumerate(threads, start=1):
        t.join(10)
        assert out and isinstance(out[0], harness.Response) and out[0].status == 200, out
        assert TOK_TPM - 500 * k <= remaining_tokens(out[0]) <= TOK_TPM - 500 * k + refill, \
            (k, out[0].headers)
        assert out[0].headers["x-ratelimit-limit-tokens"] == str(TOK_TPM)
    print(f"\ntok: estimate {p}, charges 500/500/500 admitted, 600 refused, 500 admitted, 500 "
          f"refused ({e['message']})")


# ---------------------------------------------------------------------------------------------
# 3-5. Reconciliation


def test_json_usage_refund(rl, mocks):
    body = chat("reconcile me from the json usage please")  # no max_tokens: charged estimate + cap
    n0 = rl.finished()
    base = inflight(mocks)
    a_thread, a_out = held(rl, mocks, body, "recon", 1500, base + 1)
    # While A is in flight its full charge stands: B does not fit.
    b = rl.post(body, "recon")
    assert_429(b, "tokens")
    a_thread.join(10)
    a = a_out[0]
    assert a.status == 200, a
    p = prompt_estimate(a)
    charge = p + CAP
    assert 2 * charge > RECON_TPM  # two charges never fit together
    ra = remaining_tokens(a)
    assert RECON_TPM - charge <= ra <= RECON_TPM - charge + 5, a.headers
    usage = a.json()["usage"]["total_tokens"]
    assert usage == harness.mock_prompt_tokens(a.mock["body"]) + 8
    rl.wait_finished(n0 + 2)  # A reconciled (and B counted)
    c = rl.post(body, "recon")
    assert c.status == 200, c
    # A's refund (charge - usage) plus refill, never above capacity, minus C's charge.
    want = RECON_TPM - usage - charge
    assert want <= remaining_tokens(c) <= RECON_TPM - charge, (want, c.headers)
    print(f"\nrecon: charged {charge}, remaining {ra} while in flight (B refused), usage {usage}, "
          f"after refund C admitted with remaining {remaining_tokens(c)} (expected {want}..{RECON_TPM - charge})")


def test_sse_usage_refund_and_include_usage_injected(rl, mocks):
    body = chat("stream me some tokens", stream=True)  # no stream_options, no max_tokens
    n0 = rl.finished()
    s = stream_sse(CHAT, body, {"x-tenant-id": "sse", "x-mock-tokens": "10",
                                "x-mock-token-delay-ms": "40"}, port=rl.port)
    assert s.status == 200, s.raw[:300]
    echo = s.chunks[0]["mock"]
    assert echo["body"]["stream_options"] == {"include_usage": True}, echo["body"]
    assert echo["body"]["stream"] is True
    p = int(echo["headers"]["x-llm-prompt-tokens"])
    charge = p + CAP
    assert 2 * charge > RECON_TPM
    content_events = [e for e in s.events if not e.done and e.json.get("choices")]
    assert len(content_events) == 10, len(content_events)
    assert s.done and s.usage is not None
    assert s.usage["total_tokens"] == harness.mock_prompt_tokens(echo["body"]) + 10
    # Token by token: the events arrive spread over time, not in one piece at the end.
    gaps = [b.t - a.t for a, b in zip(content_events, content_events[1:])]
    assert content_events[-1].t - content_events[0].t >= 9 * 0.040 * 0.7, gaps
    assert sum(g >= 0.020 for g in gaps) >= 7, gaps
    r1 = int(s.headers["x-ratelimit-remaining-tokens"])
    assert RECON_TPM - charge <= r1 <= RECON_TPM - charge + 5, s.headers
    rl.wait_finished(n0 + 1)
    r = rl.post(chat("stream me some tokens"), "sse")
    assert r.status == 200, r
    want = RECON_TPM - s.usage["total_tokens"] - charge
    assert want <= remaining_tokens(r) <= RECON_TPM - charge, (want, r.headers)
    print(f"\nsse: charged {charge}, stream of {len(s.events)} events over "
          f"{content_events[-1].t - content_events[0].t:.2f}s, usage {s.usage['total_tokens']}, "
          f"next request remaining {remaining_tokens(r)} (expected {want}..{RECON_TPM - charge})")


def test_upstream_error_keeps_the_prompt_charged(rl, mocks):
    # SPEC "Token accounting": once forwarded, the prompt stays charged (the server ran the
    # prefill); only the unused completion reservation comes back.
    body = chat("this one fails upstream")
    n0 = rl.finished()
    a = rl.post(body, "err", headers={"x-mock-status": "503"})
    assert a.status == 503 and a.mock is not None, a
    p = prompt_estimate(a)
    charge = p + CAP
    assert 2 * charge > RECON_TPM
    assert RECON_TPM - charge <= remaining_tokens(a) <= RECON_TPM - charge + 5, a.headers
    rl.wait_finished(n0 + 1)
    b = rl.post(body, "err")
    assert b.status == 200, b
    # A's completion reservation came back, its prompt did not: B sees a full bucket minus A's
    # prompt and its own charge (+ a little refill).
    assert RECON_TPM - p - charge <= remaining_tokens(b) <= RECON_TPM - p - charge + 5, b.headers


def test_request_larger_than_burst_passes_when_bucket_is_full(rl, mocks):
    # No max_tokens: estimate + 4096 > the whole burst of 2000; charged the burst, so it runs.
    base = inflight(mocks)
    t, out = held(rl, mocks, chat("a prompt"), "big", 1000, base + 1)
    b = rl.post(chat("a prompt"), "big")  # meanwhile the bucket is empty
    assert_429(b, "tokens")
    t.join(10)
    assert out[0].status == 200 and remaining_tokens(out[0]) == 0, out[0].headers


def test_request_larger_than_burst_is_reconciled_against_its_real_charge(rl, mocks):
    n0 = rl.finished()
    # Charged 2000 (the burst); the upstream really generates 3000 tokens.
    a = rl.post(chat("a prompt"), "debt", headers={"x-mock-tokens": "3000"})
    assert a.status == 200 and remaining_tokens(a) == 0, a.headers
    usage = a.json()["usage"]["total_tokens"]
    assert usage >= TOK_TPM + 1000
    rl.wait_finished(n0 + 1)
    # The bucket now owes usage - 2000 (> 1000) tokens: even a small request must wait ~30 s.
    # (Seen: admitted with x-ratelimit-remaining-tokens ~1040, i.e. the bucket was credited
    # estimate + 4096 - usage instead of being debited usage - 2000.)
    b = rl.post(chat("a prompt", max_tokens=50), "debt")
    assert_429(b, "tokens")
    assert int(b.headers["retry-after"]) >= 25, b.headers


# ---------------------------------------------------------------------------------------------
# 6-7. Unknown tenants, anonymous, reject


def test_unknown_tenants_are_bounded(rl, mocks):
    body = chat("who am i", max_tokens=1)
    ids = [f"rand-{uuid.uuid4().hex[:12]}" for _ in range(50)]
    lim_default0, lim_overflow0 = rl.limited("default"), rl.limited("overflow")
    # The first MAX_TRACKED ids each get a bucket of their own with the default limits.
    for tid in ids[:MAX_TRACKED]:
        st = [rl.post(body, tid).status for _ in range(DEFAULT_RPM + 1)]
        assert st == [200] * DEFAULT_RPM + [429], (tid, st)
    assert rl.limited("default", "requests") - lim_default0 == MAX_TRACKED
    # The rest share one overflow bucket of the same size.
    t0 = time.monotonic()
    st = Counter()
    for tid in ids[MAX_TRACKED:]:
        r = rl.post(body, tid)
        st[r.status] += 1
        if r.status == 429:
            assert_429(r, "requests", limit_requests=DEFAULT_RPM)
    duration = time.monotonic() - t0
    allowed = math.floor(DEFAULT_RPM + DEFAULT_RPM * (duration + 0.002) / 60)
    assert DEFAULT_RPM <= st[200] <= allowed, (st, allowed)
    assert rl.limited("overflow", "requests") - lim_overflow0 == st[429]
    # ... and more fresh ids neither get a bucket nor add metrics.
    names0 = set(rl.envoy.stats())
    for _ in range(20):
        assert rl.post(body, f"rand-{uuid.uuid4().hex[:12]}").status == 429
    assert set(rl.envoy.stats()) == names0
    labels = {l.get("tenant") for n, l, v in rl.prom() if n == "llm_router_rate_limited_total"}
    assert labels <= LABELS_OK | set(RL_TENANTS), labels
    assert not any(i in rl.envoy.prometheus() for i in ids)
    print(f"\nunknown ids: {MAX_TRACKED} tracked x {DEFAULT_RPM} admitted each; "
          f"{len(ids) - MAX_TRACKED} more share overflow: {dict(st)} in {duration:.2f}s; "
          f"rate-limit labels {sorted(labels)}")


def test_anonymous_uses_default_limits(rl, mocks):
    body = chat("no tenant header", max_tokens=1)
    rs = [rl.post(body) for _ in range(DEFAULT_RPM + 1)]
    assert [r.status for r in rs] == [200] * DEFAULT_RPM + [429], rs
    assert rs[0].headers["x-ratelimit-limit-requests"] == str(DEFAULT_RPM)
    assert_429(rs[-1], "requests", limit_requests=DEFAULT_RPM)
    assert rl.limited("anonymous", "requests") == 1


def test_unknown_reject_is_401(envoy_factory, mocks):
    path, port, _ = variant({'"unknown": "default",': '"unknown": "reject",'}, "envoy-reject.yaml")
    gw = Gateway(envoy_factory(path, concurrency=2), port)
    before = served(mocks)
    r = gw.post(chat("let me in", max_tokens=1), "stranger")
    assert r.status == 401, r
    assert r.json() == {"error": {"message": r.json()["error"]["message"],
                                  "type": "invalid_request_error", "param": None,
                                  "code": "unknown_tenant"}}
    assert served(mocks) == before, "a rejected request reached the upstream"
    ok = gw.post(chat("let me in", max_tokens=1), "acme")
    assert ok.status == 200 and ok.headers["x-ratelimit-limit-requests"] == "60", ok
    assert served(mocks) == before + 1


# ---------------------------------------------------------------------------------------------
# 8. Tenant from a JWT claim (Envoy's jwt_authn in front of the filter)


JWT_KEY = b"llm-router-e2e-hmac-secret-0123456789abcdef"
JWT_ISSUER = "https://issuer.e2e.test"


def jwt_filter_yaml() -> str:
    jwks = json.dumps({"keys": [{"kty": "oct", "alg": "HS256", "kid": "e2e", "k": b64url(JWT_KEY)}]})
    return f"""          http_filters:
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                e2e:
                  issuer: {JWT_ISSUER}
                  local_jwks:
                    inline_string: '{jwks}'
                  payload_in_metadata: jwt_payload
              rules:
              - match: {{ prefix: "/" }}
                requires:
                  requires_any:
                    requirements:
                    - provider_name: e2e
                    - allow_missing: {{}}
          - name: envoy.filters.http.wasm
"""


def test_jwt_claim_tenants(envoy_factory, mocks):
    path, port, _ = variant({
        "          http_filters:\n          - name: envoy.filters.http.wasm\n": jwt_filter_yaml(),
        '"header": "x-tenant-id",': '"jwt_claim": "org",',
        SHIPPED_ACME: limits_line({"acme": (2, 1_000_000), "globex": (3, 1_000_000)}),
    }, "envoy-jwt.yaml")
    gw = Gateway(envoy_factory(path, concurrency=2), port)
    now = int(time.time())

    def token(org, key=JWT_KEY):
        return hs256({"iss": JWT_ISSUER, "sub": f"user-of-{org}", "org": org,
                      "iat": now, "exp": now + 3600}, key)

    def call(tok, tenant_header=None):
        h = {"authorization": f"Bearer {tok}"}
        if tenant_header:
            h["x-tenant-id"] = tenant_header  # ignored: the claim decides
        return post_json(CHAT, chat("jwt tenant", max_tokens=1), h, port=port)

    acme, globex = token("acme"), token("globex")
    # A bad signature is refused by jwt_authn itself (proves HS256 verification is live).
    forged = call(token("acme", key=b"not-the-key-not-the-key-not-the-key"))
    assert forged.status == 401 and forged.mock is None, forged
    ra = [call(acme, "globex") for _ in range(3)]
    assert [r.status for r in ra] == [200, 200, 429], ra
    assert ra[0].headers["x-ratelimit-limit-requests"] == "2", ra[0].headers
    assert_429(ra[2], "requests", limit_requests=2)
    assert "tenant 'acme'" in ra[2].json()["error"]["message"]
    # The other org has its own bucket, untouched by acme's.
    rg = [call(globex, "acme") for _ in range(4)]
    assert [r.status for r in rg] == [200, 200, 200, 429], rg
    assert rg[0].headers["x-ratelimit-limit-requests"] == "3", rg[0].headers
    assert gw.limited("acme", "requests") == 1 and gw.limited("globex", "requests") == 1
