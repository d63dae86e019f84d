"""End-to-end metric tests: the filter's llm_router_* metrics as a real Envoy exports them on
/stats/prometheus (stats_tags of envoy-config/envoy.yaml turn the `;tier=.=small;.;` parts of the
names into labels).

Nothing is reset: each test reads the llm_router_* series before and after a known mix of
traffic and compares the *whole* set of changed series with the expected one, so a metric that
moves when it should not fails as well as one that does not move. Counters are live; histograms
reach /stats/prometheus at the stats flush (1 s), so the after-read is polled until the expected
deltas show up (on_log, where the request is counted, may also run just after the client has the
last byte).

Envoys: the module's shipped envoy.yaml (fixture `envoy`), a "tight" variant (tiny rate limits,
on_invalid_body: reject, a sheddable split, a push token and short staleness) and, for the
cardinality test, a variant whose small tier has no model to write (so the client's model name is
what would be labelled). Variants listen on free ports and share the module's mock servers.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import yaml

import harness
from harness import post_json, post_raw, stream_sse

CHAT = "/v1/chat/completions"
PUSH = "/.well-known/llm-router/load"
PUSH_TOKEN = "e2e-metrics-push-token"
SMALL = "llama-3.1-8b-instruct"
LARGE = "llama-3.1-70b-instruct"
CANARY_TARGETS = {"llama-3.1-8b-v2", "llama-3.1-8b"}

# SPEC.md "Metrics" (+ the extra endpoint_fallback_total): Prometheus name -> (type, label names).
SPEC_METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "llm_router_requests_total": ("counter", frozenset({"tier", "model", "status"})),
    "llm_router_model_selected_total": ("counter", frozenset({"tier", "model", "reason"})),
    "llm_router_tokens_total": ("counter", frozenset({"model", "type"})),
    "llm_router_prompt_tokens_estimated": ("histogram", frozenset({"tier"})),
    "llm_router_rate_limited_total": ("counter", frozenset({"tenant", "bucket"})),
    "llm_router_request_duration_milliseconds": ("histogram", frozenset({"model"})),
    "llm_router_time_to_first_token_milliseconds": ("histogram", frozenset({"model"})),
    "llm_router_invalid_body_total": ("counter", frozenset({"reason"})),
    "llm_router_endpoint_picked_total": ("counter", frozenset({"pool", "endpoint"})),
    "llm_router_shed_total": ("counter", frozenset({"model"})),
    "llm_router_endpoint_fallback_total": ("counter", frozenset({"pool", "reason"})),
}
HISTOGRAMS = [n for n, (k, _) in SPEC_METRICS.items() if k == "histogram"]

# Bounded label values (configured names of envoy.yaml and the filter's fixed sets).
CONFIGURED_MODELS = {SMALL, LARGE, "chat-canary", *CANARY_TARGETS, "gpt-4o", "large"}
BOUNDED = {
    "tier": {"small", "large", "other"},
    "pool": {"small", "large", "other"},
    "model": CONFIGURED_MODELS | {"other"},
    "status": {"2xx", "4xx", "5xx", "local", "cancelled", "other"},
    "type": {"prompt", "completion"},
    "tenant": {"acme", "big", "default", "anonymous", "overflow"},
    "bucket": {"requests", "tokens"},
}
REASONS = {
    "llm_router_model_selected_total": {"rule", "default", "invalid_body"},
    "llm_router_invalid_body_total": {"empty", "too_large", "not_json", "not_object", "invalid_field"},
    "llm_router_endpoint_fallback_total": {"no_snapshot", "stale", "no_endpoint"},
}

# Names seen by the tests of this module (test_every_spec_metric_is_exported checks the union).
SEEN: set[str] = set()
RAN: set[str] = set()


# ---------------------------------------------------------------------------------------------
# helpers


Key = tuple[str, frozenset]


def key(name: str, **labels: str) -> Key:
    return (name, frozenset(labels.items()))


def base_name(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in SPEC_METRICS:
            return name[: -len(suffix)]
    return name


def llm_series(text: str, buckets: bool = False) -> dict[Key, float]:
    """llm_router_* samples as {(name, labels): value}: counters and histogram _count (and the
    _bucket/_sum series with buckets=True)."""
    out = {}
    for name, labels, value in harness.parse_prometheus(text):
        if not name.startswith("llm_router_"):
            continue
        if not buckets and (name.endswith("_bucket") or name.endswith("_sum")):
            continue
        out[(name, frozenset(labels.items()))] = value
    return out


def deltas(before: dict[Key, float], after: dict[Key, float]) -> dict[Key, float]:
    out = {}
    for k in set(before) | set(after):
        d = after.get(k, 0.0) - before.get(k, 0.0)
        if d:
            out[k] = d
    return out


def fmt(d: dict[Key, float]) -> str:
    rows = []
    for (name, labels), v in sorted(d.items(), key=lambda kv: (kv[0][0], sorted(kv[0][1]))):
        lab = ",".join(f'{k}="{v2}"' for k, v2 in sorted(labels))
        rows.append(f"  {name}{{{lab}}} {v:+g}")
    return "\n".join(rows) or "  (none)"


def check_schema(text: str) -> None:
    """Every llm_router_* series has exactly the labels SPEC names and bounded values."""
    for name, labels, _ in harness.parse_prometheus(text):
        if not name.startswith("llm_router_"):
            continue
        base = base_name(name)
        assert base in SPEC_METRICS, f"unexpected metric {name}"
        kind, want = SPEC_METRICS[base]
        if kind == "histogram":
            assert name != base, f"histogram {base} exported without _bucket/_sum/_count"
        got = set(labels) - ({"le"} if name.endswith("_bucket") else set())
        assert got == want, f"{name}: labels {sorted(got)} != {sorted(want)}"
        for label, value in labels.items():
            assert "rnd-" not in value, f"{name}: client input {value!r} became a label"
            if label in BOUNDED:
                assert value in BOUNDED[label], f"{name}: {label}={value!r} not in {BOUNDED[label]}"
            if label == "reason":
                assert value in REASONS[base], f"{name}: reason={value!r}"
            if label == "endpoint":
                host, _, port = value.rpartition(":")
                assert host == "127.0.0.1" and port.isdigit(), f"{name}: endpoint={value!r}"
        SEEN.add(base)


def snapshot(port: int) -> dict[Key, float]:
    return llm_series(harness.prometheus(port=port))


def expect_deltas(port: int, before: dict[Key, float], expected: dict[Key, float],
                  timeout: float = 8.0, adjust=None) -> str:
    """Poll /stats/prometheus until the llm_router_* deltas since `before` equal `expected`
    (histogram counts arrive at the 1 s flush); assert with a readable diff on timeout.
    `adjust(got) -> expected` may fill in values only known after the fact. Returns the text."""
    deadline = time.monotonic() + timeout
    while True:
        text = harness.prometheus(port=port)
        got = deltas(before, llm_series(text))
        want = adjust(got, dict(expected)) if adjust else expected
        if got == want:
            # One more flush: nothing late shows up on top.
            time.sleep(1.2)
            text = harness.prometheus(port=port)
            got = deltas(before, llm_series(text))
            if got == want:
                check_schema(text)
                return text
        if time.monotonic() > deadline:
            missing = {k: v for k, v in want.items() if got.get(k) != v}
            extra = {k: v for k, v in got.items() if k not in want}
            raise AssertionError(
                f"llm_router_* deltas differ after {timeout}s\nexpected:\n{fmt(want)}\n"
                f"got:\n{fmt(got)}\nwrong or missing:\n{fmt(missing)}\nunexpected:\n{fmt(extra)}")
        time.sleep(0.2)


def chat(content: str, model: str = "rnd-client-model", max_tokens: int = 3,
         headers: dict | None = None, port: int = harness.LISTENER_PORT, **extra):
    body = {"model": model, "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens, **extra}
    return post_json(CHAT, body, headers or {}, port=port)


def usage_of(r) -> dict:
    assert r.status == 200, r.text[:300]
    return r.json()["usage"]


def tight_variant() -> tuple[Path, int, int]:
    listener, admin = harness.free_port(), harness.free_port()
    return harness.config_variant(harness.DEFAULT_CONFIG, {
        "port_value: 10000": f"port_value: {listener}",
        "port_value: 9901": f"port_value: {admin}",
        '"default_tier": "small",': '"default_tier": "small", "on_invalid_body": "reject",',
        '"acme": { "requests_per_minute": 60,': '"big": { "requests_per_minute": 100000, '
        '"tokens_per_minute": 100000000 }, "acme": { "requests_per_minute": 2,',
        '"default": { "requests_per_minute": 600, "tokens_per_minute": 1000000 }':
            '"default": { "requests_per_minute": 600, "tokens_per_minute": 100 }',
        '"chat-canary": {': '"chat-canary": { "criticality": "sheddable",',
        '"stale_after_ms": 2000': '"stale_after_ms": 700',
    }, "envoy-metrics-tight.yaml"), listener, admin


@pytest.fixture(scope="module")
def tight(envoy_bin, mocks):
    """Envoy on the tight variant: (EnvoyProcess, listener port)."""
    path, listener, _ = tight_variant()
    with harness.start_envoy(path, env={"LLM_ROUTER_PUSH_TOKEN": PUSH_TOKEN}) as e:
        yield e, listener


# ---------------------------------------------------------------------------------------------
# The shipped config: a known mix of traffic


def test_traffic_mix_deltas(envoy, mocks):
    port = envoy.admin_port
    before = snapshot(port)

    # A. short prompt, client model unknown -> default tier small (model rewritten)
    a = chat("hello metrics")
    assert a.mock["headers"]["x-llm-model-type"] == "small"
    # B. long prompt -> rule min_prompt_tokens -> large
    b = chat("lorem " * 1500)
    assert b.mock["headers"]["x-llm-model-type"] == "large"
    # C. model rule (gpt-4o) -> large
    c = chat("short one", model="gpt-4o")
    assert c.mock["headers"]["x-llm-model-type"] == "large"
    # D. invalid JSON -> default tier (invalid_body), forwarded as is; the mock answers 400
    d = post_raw(CHAT, b'{"model": "gpt-4o", "messages": [', {"content-type": "application/json"})
    assert d.status == 400 and d.mock["headers"]["x-llm-model-type"] == "small", d.text[:300]
    # E. stream with usage (final event)
    e = stream_sse(CHAT, {"model": "rnd-client-model", "stream": True,
                          "stream_options": {"include_usage": True},
                          "messages": [{"role": "user", "content": "stream me please"}]},
                   {"x-mock-tokens": "5"})
    assert e.status == 200 and e.events[-1].done
    e_usage = [ch for ch in e.chunks if ch.get("usage")][-1]["usage"]
    assert e_usage["completion_tokens"] == 5
    # F. stream whose upstream sends no usage (the client opted out explicitly, so the filter
    #    does not inject include_usage): the prompt falls back to the filter's estimate
    f = stream_sse(CHAT, {"model": "rnd-client-model", "stream": True,
                          "stream_options": {"include_usage": False},
                          "messages": [{"role": "user", "content": "no usage in this stream"}]},
                   {"x-mock-tokens": "4"})
    assert f.status == 200 and not any(ch.get("usage") for ch in f.chunks)
    f_estimate = int(f.chunks[0]["mock"]["headers"]["x-llm-prompt-tokens"])
    assert f_estimate > 0
    # G. upstream 503: counted as 5xx, no tokens
    g = chat("this one fails", headers={"x-mock-status": "503"})
    assert g.status == 503

    ua, ub, uc = usage_of(a), usage_of(b), usage_of(c)
    assert (ua["completion_tokens"], ub["completion_tokens"], uc["completion_tokens"]) == (3, 3, 3)
    expected = {
        key("llm_router_requests_total", tier="small", model=SMALL, status="2xx"): 3,  # A E F
        key("llm_router_requests_total", tier="small", model=SMALL, status="4xx"): 1,  # D
        key("llm_router_requests_total", tier="small", model=SMALL, status="5xx"): 1,  # G
        key("llm_router_requests_total", tier="large", model=LARGE, status="2xx"): 2,  # B C
        key("llm_router_model_selected_total", tier="small", model=SMALL, reason="default"): 4,
        key("llm_router_model_selected_total", tier="small", model=SMALL, reason="invalid_body"): 1,
        key("llm_router_model_selected_total", tier="large", model=LARGE, reason="rule"): 2,
        key("llm_router_tokens_total", model=SMALL, type="prompt"):
            ua["prompt_tokens"] + e_usage["prompt_tokens"] + f_estimate,
        key("llm_router_tokens_total", model=SMALL, type="completion"): 3 + 5,
        key("llm_router_tokens_total", model=LARGE, type="prompt"):
            ub["prompt_tokens"] + uc["prompt_tokens"],
        key("llm_router_tokens_total", model=LARGE, type="completion"): 3 + 3,
        key("llm_router_invalid_body_total", reason="not_json"): 1,
        # No sidecar pushes to this Envoy: every forwarded request falls back to the pool.
        key("llm_router_endpoint_fallback_total", pool="small", reason="no_snapshot"): 5,
        key("llm_router_endpoint_fallback_total", pool="large", reason="no_snapshot"): 2,
        # Histograms: one sample per forwarded request / stream / prompt estimate.
        key("llm_router_request_duration_milliseconds_count", model=SMALL): 5,
        key("llm_router_request_duration_milliseconds_count", model=LARGE): 2,
        key("llm_router_time_to_first_token_milliseconds_count", model=SMALL): 2,
        key("llm_router_prompt_tokens_estimated_count", tier="small"): 4,  # no estimate for D
        key("llm_router_prompt_tokens_estimated_count", tier="large"): 2,
    }
    expect_deltas(port, before, expected)
    RAN.add("mix")


def test_histograms_use_configured_buckets(envoy, mocks):
    """The LLM-sized buckets of stats_config.histogram_bucket_settings, not Envoy's defaults."""
    # Make sure every histogram has a series (also when this test runs alone).
    r = stream_sse(CHAT, {"model": "x", "stream": True,
                          "messages": [{"role": "user", "content": "buckets"}]})
    assert r.status == 200
    cfg = yaml.safe_load(harness.DEFAULT_CONFIG.read_text())
    configured = {s["match"]["contains"]: s["buckets"]
                  for s in cfg["stats_config"]["histogram_bucket_settings"]}
    assert set(configured) == set(HISTOGRAMS)

    def les(text, name):
        return {lab["le"] for n, lab, _ in harness.parse_prometheus(text)
                if n == name + "_bucket" and lab.get("model", SMALL) == SMALL
                and lab.get("tier", "small") == "small"}

    def all_there():
        t = envoy.prometheus()
        return t if all(les(t, h) for h in HISTOGRAMS) else None

    text = harness.wait_for(all_there, timeout=5, what="histogram buckets on /stats/prometheus")
    for h in HISTOGRAMS:
        want = {f"{b:g}" for b in configured[h]} | {"+Inf"}
        assert les(text, h) == want, f"{h}: le values {sorted(les(text, h))}"
    assert 'llm_router_request_duration_milliseconds_bucket{model="%s",le="30000"}' % SMALL in text
    assert 'llm_router_request_duration_milliseconds_bucket{model="%s",le="600000"}' % SMALL in text
    assert 'llm_router_time_to_first_token_milliseconds_bucket{model="%s",le="15000"}' % SMALL in text
    assert 'llm_router_prompt_tokens_estimated_bucket{tier="small",le="131072"}' in text
    # Envoy's default buckets (0.5, 1, 5, ... 3600000) are not used.
    assert 'llm_router_request_duration_milliseconds_bucket{model="%s",le="0.5"}' % SMALL not in text
    # Counters are exported under their own names: no envoy_ prefix, no wasmcustom, no extra _total.
    assert "# TYPE llm_router_requests_total counter" in text
    assert "# TYPE llm_router_request_duration_milliseconds histogram" in text
    assert "wasmcustom" not in text and "envoy_llm_router" not in text and "_total_total" not in text


# ---------------------------------------------------------------------------------------------
# Cardinality


def tier_without_model() -> tuple[Path, int, int]:
    listener, admin = harness.free_port(), harness.free_port()
    return harness.config_variant(harness.DEFAULT_CONFIG, {
        "port_value: 10000": f"port_value: {listener}",
        "port_value: 9901": f"port_value: {admin}",
        '"small": { "model": "llama-3.1-8b-instruct" }': '"small": {}',
    }, "envoy-metrics-passthrough.yaml"), listener, admin


@pytest.mark.parametrize("config", ["shipped", "small-tier-without-model"])
def test_random_client_values_do_not_create_series(config, envoy, mocks, envoy_factory):
    """200 requests with random model names (and random tenant ids and header values) add no
    series labelled with them: at most the `model="other"` series of a tier that forwards the
    client's model unchanged."""
    if config == "shipped":
        port, admin = harness.LISTENER_PORT, envoy.admin_port
    else:
        path, port, _ = tier_without_model()
        admin = envoy_factory(path).admin_port
    # Warm-up with a configured model name (in the variant, a split target: the small tier has
    # none) that keeps its own label: creates the series of this kind of traffic.
    warm = SMALL if config == "shipped" else "llama-3.1-8b"
    assert chat("warm up", model=warm, max_tokens=1, port=port).status == 200
    time.sleep(1.2)  # its histogram samples flush
    before = llm_series(harness.prometheus(port=admin), buckets=True)

    def one(i):
        rnd = f"rnd-{uuid.uuid4()}"
        return chat(f"random {i}", model=rnd, max_tokens=1, port=port,
                    headers={"x-tenant-id": rnd, "x-customer-tier": rnd})

    rs = harness.burst(200, 16, one)
    assert all(r.status == 200 for r in rs), {r.status for r in rs}
    if config != "shipped":
        assert rs[0].mock["body"]["model"].startswith("rnd-")  # forwarded unchanged

    count = key("llm_router_request_duration_milliseconds_count",
                model=SMALL if config == "shipped" else "other")

    def settled():
        a = harness.prometheus(port=admin)
        return a if llm_series(a).get(count, 0) >= before.get(count, 0) + 200 else None

    text = harness.wait_for(settled, timeout=6, what="200 duration samples")
    after = llm_series(text, buckets=True)
    assert "rnd-" not in text, "a client-chosen value became part of a series"
    new = set(after) - set(before)
    gone = set(before) - set(after)
    assert not gone, gone
    not_other = [k for k in new if dict(k[1]).get("model") != "other"]
    assert not not_other, f"new series not labelled model=other:\n{fmt({k: 1 for k in not_other})}"
    if config == "shipped":
        assert not new, f"the shipped config rewrites every model; new series:\n{fmt({k: 1 for k in new})}"
    else:
        # requests, model_selected, tokens x2 and the duration histogram (16 buckets + +Inf,
        # _sum, _count): nothing that grows with the number of distinct client values.
        assert 0 < len(new) <= 23, fmt({k: 1 for k in new})
    check_schema(text)
    RAN.add(f"cardinality-{config}")


# ---------------------------------------------------------------------------------------------
# The tight variant: rate limits, rejected bodies, endpoint picking and shedding


def test_rate_limited(tight):
    e, port = tight
    before = snapshot(e.admin_port)
    acme = [chat("limited", max_tokens=1, headers={"x-tenant-id": "acme"}, port=port)
            for _ in range(3)]
    assert [r.status for r in acme] == [200, 200, 429], [r.text[:200] for r in acme]
    # An unknown tenant shares the `default` limits (100 tokens a minute here): the first
    # request is admitted (its charge clamped to the bucket) and really uses ~500 tokens, which
    # leaves the bucket empty or in debt: the second is refused on tokens.
    rnd = f"rnd-{uuid.uuid4()}"
    unknown = [chat("tokens", max_tokens=500, port=port,
                    headers={"x-tenant-id": rnd, "x-mock-tokens": "500"}) for _ in range(2)]
    assert [r.status for r in unknown] == [200, 429], [r.text[:200] for r in unknown]
    served = [usage_of(r) for r in acme[:2] + unknown[:1]]
    expected = {
        key("llm_router_rate_limited_total", tenant="acme", bucket="requests"): 1,
        key("llm_router_rate_limited_total", tenant="default", bucket="tokens"): 1,
        key("llm_router_requests_total", tier="small", model=SMALL, status="2xx"): 3,
        key("llm_router_requests_total", tier="small", model=SMALL, status="local"): 2,
        key("llm_router_model_selected_total", tier="small", model=SMALL, reason="default"): 3,
        key("llm_router_tokens_total", model=SMALL, type="prompt"):
            sum(u["prompt_tokens"] for u in served),
        key("llm_router_tokens_total", model=SMALL, type="completion"): 1 + 1 + 500,
        key("llm_router_endpoint_fallback_total", pool="small", reason="no_snapshot"): 3,
        # A refused request has no upstream duration and no estimate sample.
        key("llm_router_request_duration_milliseconds_count", model=SMALL): 3,
        key("llm_router_prompt_tokens_estimated_count", tier="small"): 3,
    }
    expect_deltas(e.admin_port, before, expected)
    RAN.add("rate_limited")


def test_rejected_bodies(tight):
    """on_invalid_body: reject answers 400/413 itself; each reason counts once."""
    e, port = tight
    before = snapshot(e.admin_port)
    h = {"content-type": "application/json", "x-tenant-id": "big"}
    cases = {
        "not_json": (b'{"model": ', 400),
        "not_object": (b"[1, 2]", 400),
        "empty": (b"", 400),
        "invalid_field": (b'{"model": "m", "max_tokens": "many", "messages": []}', 400),
        "too_large": (b'{"model": "x", "pad": "' + b"a" * (1024 * 1024 + 16) + b'"}', 413),
    }
    for reason, (body, status) in cases.items():
        r = post_raw(CHAT, body, h, port=port)
        assert r.status == status, (reason, r.status, r.text[:200])
        assert r.mock is None, f"{reason}: reached the upstream"
    expected = {key("llm_router_invalid_body_total", reason=r): 1 for r in cases}
    # A rejected body is answered before a tier is chosen; it counts as a local reply of the
    # default tier, so error ratios include it.
    expected[key("llm_router_requests_total", tier="small", model=SMALL, status="local")] = len(cases)
    expect_deltas(e.admin_port, before, expected)
    RAN.add("rejected")


def test_endpoint_picks_shedding_and_fallbacks(tight, mocks):
    """Runs after the other tight tests: it leaves a (stale) snapshot behind."""
    e, port = tight
    small1 = mocks.address("small-1")
    before = snapshot(e.admin_port)
    auth = {"authorization": f"Bearer {PUSH_TOKEN}"}
    big = {"x-tenant-id": "big"}

    def push(waiting):
        snap = {"pools": {"small": [{"address": small1, "waiting": waiting, "running": 0,
                                     "kv_cache": 0.1}]}}  # no "large" pool
        r = post_json(PUSH, snap, auth, port=port)
        assert r.status == 204, r.text[:200]

    push(0)
    picked = [chat("pick me", max_tokens=1, headers=big, port=port) for _ in range(2)]
    assert all(r.status == 200 and r.mock["instance"] == "small-1" for r in picked)
    large = chat("to the large pool", model="gpt-4o", max_tokens=1, headers=big, port=port)
    assert large.status == 200 and large.mock["headers"]["x-llm-model-type"] == "large"
    push(9)  # small-1 saturated (max_queue 5)
    shed = chat("sheddable", model="chat-canary", max_tokens=1, headers=big, port=port)
    assert shed.status == 429 and "overloaded" in shed.text, shed.text[:200]
    standard = chat("standard still goes", max_tokens=1, headers=big, port=port)
    assert standard.status == 200 and standard.mock["instance"] == "small-1"
    time.sleep(0.9)  # stale_after_ms 700
    stale = chat("stale load", max_tokens=1, headers=big, port=port)
    assert stale.status == 200
    served = [usage_of(r) for r in picked + [standard, stale]]

    expected = {
        key("llm_router_endpoint_picked_total", pool="small", endpoint=small1): 3,
        key("llm_router_endpoint_fallback_total", pool="large", reason="no_endpoint"): 1,
        key("llm_router_endpoint_fallback_total", pool="small", reason="stale"): 1,
        key("llm_router_requests_total", tier="small", model=SMALL, status="2xx"): 4,
        key("llm_router_requests_total", tier="large", model=LARGE, status="2xx"): 1,
        key("llm_router_model_selected_total", tier="small", model=SMALL, reason="default"): 4,
        key("llm_router_model_selected_total", tier="large", model=LARGE, reason="rule"): 1,
        key("llm_router_tokens_total", model=SMALL, type="prompt"):
            sum(u["prompt_tokens"] for u in served),
        key("llm_router_tokens_total", model=SMALL, type="completion"): 4,
        key("llm_router_tokens_total", model=LARGE, type="prompt"): usage_of(large)["prompt_tokens"],
        key("llm_router_tokens_total", model=LARGE, type="completion"): 1,
        key("llm_router_request_duration_milliseconds_count", model=SMALL): 4,
        key("llm_router_request_duration_milliseconds_count", model=LARGE): 1,
        key("llm_router_prompt_tokens_estimated_count", tier="small"): 4,
        key("llm_router_prompt_tokens_estimated_count", tier="large"): 1,
    }

    def with_shed_target(got, want):
        # The split picks its target at random: the shed series carries the target's name.
        shed_keys = [k for k in got if k[0] == "llm_router_shed_total"]
        target = dict(shed_keys[0][1])["model"] if len(shed_keys) == 1 else "?"
        assert target in CANARY_TARGETS | {"?"}, target
        want[key("llm_router_shed_total", model=target)] = 1
        want[key("llm_router_requests_total", tier="small", model=target, status="local")] = 1
        return want

    expect_deltas(e.admin_port, before, expected, adjust=with_shed_target)
    RAN.add("endpoints")


def test_every_spec_metric_is_exported():
    """Across the tests above, every metric of SPEC appeared with exactly its label set."""
    needed = {"mix", "rate_limited", "rejected", "endpoints"}
    # Run alone (or after one of them failed) this fails rather than skips: its claim needs
    # the series the other tests of the module produced.
    assert needed <= RAN, f"needs the other tests of this module to run first (ran: {sorted(RAN)})"
    assert SEEN == set(SPEC_METRICS), f"missing: {sorted(set(SPEC_METRICS) - SEEN)}"
