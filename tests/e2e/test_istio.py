"""istio/: manifests parse, every plugin configuration is accepted by the real filter, and the
EnvoyFilter patches applied to an Istio-like gateway base (istio/tools/apply_envoyfilter.py) pass
`envoy --mode validate` and route like envoy-config/envoy.yaml in a real Envoy.

Own Envoy and mock servers on free ports (nothing on 10000/9901/81xx/82xx).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import harness

REPO = harness.REPO_ROOT
ISTIO = REPO / "istio"
TOOL = ISTIO / "tools" / "apply_envoyfilter.py"
ROUTING = json.loads((REPO / "tests" / "scenarios" / "routing.json").read_text())
SCENARIOS = {s["name"]: s for s in ROUTING["scenarios"]}
HOST_SIM = REPO / "target" / "release" / "host-sim"

EXPECTED_KINDS = {
    "gateway.yaml": ["Gateway"],
    "virtualservice.yaml": ["VirtualService"],
    "envoyfilter-gateway.yaml": ["EnvoyFilter"],
    "envoyfilter-filter.yaml": ["EnvoyFilter"],
    "wasmplugin.yaml": ["WasmPlugin"],
    "wasmplugin-gateway-api.yaml": ["WasmPlugin"],
    "gateway-api.yaml": ["Gateway", "HTTPRoute"],
    "sidecar.yaml": ["ConfigMap", "Secret", "Deployment"],
    "telemetry.yaml": ["Telemetry"],
}


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((ISTIO / name).read_text()) if d]


def plugin_configs() -> dict[str, dict]:
    """Every plugin configuration shipped in istio/: WasmPlugin pluginConfig and the EnvoyFilter's
    Wasm configuration (a JSON string)."""
    out = {}
    for name in sorted(p.name for p in ISTIO.glob("*.yaml")):
        for i, d in enumerate(docs(name)):
            if d["kind"] == "WasmPlugin":
                out[f"{name}#{i}"] = d["spec"]["pluginConfig"]
            elif d["kind"] == "EnvoyFilter":
                for p in d["spec"]["configPatches"]:
                    tc = p["patch"].get("value", {}).get("typed_config", {})
                    if tc.get("@type", "").endswith("filters.http.wasm.v3.Wasm"):
                        out[f"{name}#{i}"] = json.loads(tc["config"]["configuration"]["value"])
    return out


CONFIGS = plugin_configs()


def render(variant: str, out: Path, listener: int, admin: int, upstreams: dict[str, list[str]] | None = None):
    cmd = [sys.executable, str(TOOL), "--variant", variant, "--out", str(out),
           "--listener-port", str(listener), "--admin-port", str(admin),
           "--wasm", str(harness.WASM_PATH)]
    for host, addrs in (upstreams or {}).items():
        cmd += ["--upstream", f"{host}={','.join(addrs)}"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    return json.loads(out.read_text())


# ---------------------------------------------------------------------------------------------
# Manifests


def test_every_manifest_parses_with_expected_kinds():
    files = sorted(p.name for p in ISTIO.glob("*.yaml"))
    assert set(files) == set(EXPECTED_KINDS), f"istio/*.yaml changed: {files}"
    for name, kinds in EXPECTED_KINDS.items():
        ds = docs(name)
        assert [d["kind"] for d in ds] == kinds, name
        for d in ds:
            assert d.get("apiVersion") and d["metadata"].get("name"), (name, d.get("kind"))


def test_telemetry_tags_are_the_headers_the_filter_owns():
    """istio/telemetry.yaml tags spans with the 1.36-compatible header attributes of
    envoy-config/envoy-otel-1.36.yaml (the same names, the same headers)."""
    spec = docs("telemetry.yaml")[0]["spec"]
    tags = spec["tracing"][0]["customTags"]
    shipped = yaml.safe_load((REPO / "envoy-config" / "envoy-otel-1.36.yaml").read_text())
    hcm = shipped["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    want = {t["tag"]: t["request_header"]["name"] for t in hcm["tracing"]["custom_tags"]}
    assert {k: v["header"]["name"] for k, v in tags.items()} == want


def test_wasmplugin_fields():
    for name in ("wasmplugin.yaml", "wasmplugin-gateway-api.yaml"):
        spec = docs(name)[0]["spec"]
        for k in ("url", "sha256", "pluginConfig", "phase", "failStrategy", "match", "vmConfig"):
            assert k in spec, (name, k)
        assert spec["url"].startswith("oci://")
        assert len(spec["sha256"]) == 64
        assert spec["phase"] in ("AUTHN", "AUTHZ", "STATS", "UNSPECIFIED_PHASE")
        assert spec["failStrategy"] in ("FAIL_CLOSE", "FAIL_OPEN", "FAIL_RELOAD")
        assert {"name": "LLM_ROUTER_PUSH_TOKEN", "valueFrom": "HOST"} in spec["vmConfig"]["env"]
    assert docs("wasmplugin.yaml")[0]["spec"]["selector"]["matchLabels"] == {"istio": "ingressgateway"}
    refs = docs("wasmplugin-gateway-api.yaml")[0]["spec"]["targetRefs"]
    assert refs == [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "llm-gateway"}]


def test_envoyfilter_sets_stop_iteration_and_original_dst():
    ef = docs("envoyfilter-filter.yaml")[0]
    wasm = ef["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["config"]
    assert wasm["allow_on_headers_stop_iteration"] is True
    gw = docs("envoyfilter-gateway.yaml")[0]
    clusters = [p["patch"]["value"] for p in gw["spec"]["configPatches"] if p["applyTo"] == "CLUSTER"]
    assert clusters and clusters[0]["type"] == "ORIGINAL_DST"
    assert clusters[0]["original_dst_lb_config"]["http_header_name"] == "x-gateway-destination-endpoint"
    boot = [p for p in gw["spec"]["configPatches"] if p["applyTo"] == "BOOTSTRAP"][0]
    tags = {t["tag_name"] for t in boot["patch"]["value"]["stats_config"]["stats_tags"]}
    assert tags == {"tier", "model", "status", "reason", "type", "tenant", "bucket", "pool", "endpoint",
                    "method", "result", "action", "trigger"}


def test_routes_match_the_tier_header():
    vs = docs("virtualservice.yaml")[0]
    tiers = set(next(iter(CONFIGS.values()))["tiers"])
    seen = set()
    for h in vs["spec"]["http"]:
        for m in h.get("match", []):
            if "x-llm-model-type" in m.get("headers", {}):
                seen.add(m["headers"]["x-llm-model-type"]["exact"])
    assert seen == tiers
    route = docs("gateway-api.yaml")[1]
    vals = {hm["value"] for r in route["spec"]["rules"] for m in r["matches"]
            for hm in m.get("headers", []) if hm["name"] == "x-llm-model-type"}
    assert vals == tiers


def test_plugin_configs_agree():
    """Every shipped plugin configuration is the same, and routes like the scenario table's."""
    assert len(CONFIGS) == 3, list(CONFIGS)
    first = next(iter(CONFIGS.values()))
    for name, cfg in CONFIGS.items():
        assert cfg == first, f"{name} differs"
    ref = ROUTING["plugin_config"]
    for k in ("tiers", "default_tier", "rules", "models", "tenants", "endpoints"):
        assert first[k] == ref[k], k


def test_sidecar_config_matches_filter():
    cm = docs("sidecar.yaml")[0]
    sc = json.loads(cm["data"]["sidecar.json"])
    cfg = next(iter(CONFIGS.values()))
    assert set(sc["pools"]) == set(cfg["tiers"])
    assert sc["push_url"].endswith(cfg["endpoints"]["push_path"])
    assert sc["push_url"].startswith("http://127.0.0.1:8080/")
    dep = docs("sidecar.yaml")[2]
    names = [c["name"] for c in dep["spec"]["template"]["spec"]["containers"]]
    assert names == ["istio-proxy", "llm-router-sidecar"]


# ---------------------------------------------------------------------------------------------
# Each plugin configuration through the real filter (host-sim)


@pytest.fixture(scope="module")
def host_sim():
    if not HOST_SIM.exists():
        r = subprocess.run(["cargo", "build", "-q", "--release", "-p", "host-sim"], cwd=REPO,
                           capture_output=True, text=True, timeout=900)
        if r.returncode != 0 or not HOST_SIM.exists():
            pytest.fail(f"host-sim could not be built: {r.stderr[-500:]}")
    return HOST_SIM


@pytest.mark.parametrize("name", list(CONFIGS))
def test_plugin_config_accepted_by_filter_host_sim(host_sim, tmp_path, name):
    plugin = tmp_path / "plugin.json"
    plugin.write_text(json.dumps(CONFIGS[name]))
    traffic = tmp_path / "traffic.jsonl"
    reqs = [SCENARIOS["short prompt goes to the small tier with its model"]["request"],
            SCENARIOS["long prompt goes to the large tier"]["request"],
            SCENARIOS["model rule sends gpt-4o to the large tier"]["request"]]
    traffic.write_text("".join(json.dumps(r) + "\n" for r in reqs))
    r = subprocess.run([str(host_sim), "replay", "--wasm", str(harness.WASM_PATH), "--config", str(plugin),
                        "--requests", str(traffic)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    tiers = [line.split("tier=", 1)[1].split()[0] for line in r.stdout.split("== metrics ==")[0].splitlines()
             if line.strip().startswith("tier=")]
    assert tiers == ["small", "large", "large"], r.stdout


def test_broken_plugin_config_is_rejected_host_sim(host_sim, tmp_path):
    """The check above can fail: a typo in the configuration is refused by the filter."""
    cfg = dict(next(iter(CONFIGS.values())))
    cfg["tenant"] = cfg.pop("tenants")
    plugin = tmp_path / "plugin.json"
    plugin.write_text(json.dumps(cfg))
    traffic = tmp_path / "t.jsonl"
    traffic.write_text("")
    r = subprocess.run([str(host_sim), "replay", "--wasm", str(harness.WASM_PATH), "--config", str(plugin),
                        "--requests", str(traffic)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode != 0 and "tenant" in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------------
# EnvoyFilter patches on an Istio-like gateway: envoy --mode validate, then real traffic


@pytest.mark.parametrize("variant", ["envoyfilter", "wasmplugin"])
def test_rendered_gateway_config_validates(tmp_path, variant):
    out = tmp_path / f"istio-{variant}.json"
    cfg = render(variant, out, harness.free_port(), harness.free_port())
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    names = [f["name"] for f in hcm["http_filters"]]
    assert names[-1] == "envoy.filters.http.router" and len(names) == 2, names
    wasm = hcm["http_filters"][0]["typed_config"]["config"]
    if variant == "envoyfilter":
        assert wasm["allow_on_headers_stop_iteration"] is True
    else:
        assert "allow_on_headers_stop_iteration" not in wasm  # the WasmPlugin API has no such field
    r = subprocess.run([harness.envoy_bin(), "--mode", "validate", "-c", str(out), "--log-level", "warn"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def test_broken_plugin_config_fails_envoy_validate(tmp_path):
    out = tmp_path / "bad.json"
    cfg = render("envoyfilter", out, harness.free_port(), harness.free_port())
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    conf = hcm["http_filters"][0]["typed_config"]["config"]["configuration"]
    conf["value"] = conf["value"].replace('"default_tier": "small"', '"default_tier": "medium"')
    out.write_text(json.dumps(cfg))
    r = subprocess.run([harness.envoy_bin(), "--mode", "validate", "-c", str(out), "--log-level", "warn"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode != 0


@pytest.fixture(scope="module")
def istio_mocks():
    inst = {"small-1": harness.free_port(), "small-2": harness.free_port(),
            "large-1": harness.free_port(), "large-2": harness.free_port()}
    with harness.start_mocks(inst, quiet=True) as m:
        yield m


def upstreams_of(m) -> dict[str, list[str]]:
    return {"llm-small.llm.svc.cluster.local": [m.address("small-1"), m.address("small-2")],
            "llm-large.llm.svc.cluster.local": [m.address("large-1"), m.address("large-2")]}


ROUTED = ["short prompt goes to the small tier with its model", "long prompt goes to the large tier",
          "model rule sends gpt-4o to the large tier", "header rule sends premium customers to the large tier",
          "spoofed routing headers are replaced or removed", "body in many chunks",
          "invalid JSON goes to the default tier untouched"]


def test_envoyfilter_variant_routes_like_envoy_yaml(tmp_path, istio_mocks):
    from test_routing import send_scenario  # the same request builder as the envoy.yaml tests
    listener, admin = harness.free_port(), harness.free_port()
    out = tmp_path / "istio-envoyfilter.json"
    render("envoyfilter", out, listener, admin, upstreams_of(istio_mocks))
    with harness.start_envoy(out, env={"LLM_ROUTER_PUSH_TOKEN": "istio-test-token"}) as envoy:
        for name in ROUTED:
            sc = SCENARIOS[name]
            r, _, _ = send_scenario(sc["request"], port=listener)
            # The mock answers 400 to a body that is not JSON, with its echo.
            assert r.status == (400 if "body_raw" in sc["request"] else 200), (name, r.status, r.text[:300])
            echo = r.mock
            want_tier = sc["expect"]["upstream_headers"]["x-llm-model-type"]
            assert echo["headers"]["x-llm-model-type"] == want_tier, name
            assert echo["instance"].startswith(want_tier), (name, echo["instance"])
            for k, v in sc["expect"].get("upstream_headers", {}).items():
                assert echo["headers"].get(k) == v, (name, k)
            if "upstream_body_model" in sc["expect"]:
                assert echo["body"]["model"] == sc["expect"]["upstream_body_model"], name
            for k in sc["expect"].get("absent_headers", []):
                assert k not in echo["headers"], (name, k)
        # The bootstrap MERGE of stats tags: labelled Prometheus series.
        prom = harness.wait_for(lambda: (lambda t: t if 'llm_router_requests_total{' in t else None)(
            envoy.prometheus()), timeout=5)
        assert 'tier="large"' in prom and 'tier="small"' in prom, prom[:2000]


def test_envoyfilter_variant_hardens_paths(tmp_path, istio_mocks):
    """The gateway patches make paths canonical before the filter and refuse uninspected POSTs."""
    listener, admin = harness.free_port(), harness.free_port()
    out = tmp_path / "istio-envoyfilter.json"
    render("envoyfilter", out, listener, admin, upstreams_of(istio_mocks))
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    with harness.start_envoy(out, env={"LLM_ROUTER_PUSH_TOKEN": "istio-test-token"}):
        before = sum(istio_mocks.counts().values())
        for path in ("//v1/chat/completions", "/v1/x/../chat/completions"):
            r = harness.post_json(path, body, port=listener)
            assert r.status == 200 and r.mock["headers"]["x-llm-model-type"] == "large", (path, r)
            assert r.mock["path"] == "/v1/chat/completions"
        r = harness.post_json("/v1/chat%2Fcompletions", body, port=listener)
        assert r.status == 307 and r.headers["location"].endswith("/v1/chat/completions"), r
        r = harness.post_json("/v1/files", body, port=listener)
        assert r.status == 404 and r.json()["error"]["code"] == "not_found", r
        assert sum(istio_mocks.counts().values()) == before + 2
        assert harness.get("/v1/models", port=listener).status == 200


def test_picked_endpoint_goes_through_original_dst(tmp_path, istio_mocks):
    """A load snapshot pushed to the gateway makes the filter name an endpoint; the patched route
    sends the request to exactly that address via the EnvoyFilter's ORIGINAL_DST cluster."""
    listener, admin = harness.free_port(), harness.free_port()
    out = tmp_path / "istio-picked.json"
    render("envoyfilter", out, listener, admin, upstreams_of(istio_mocks))
    token = "istio-test-token"
    target = istio_mocks.address("large-2")
    snap = {"pools": {"large": [{"address": istio_mocks.address("large-1"), "waiting": 4, "running": 4, "kv_cache": 0.7, "healthy": True},
                                {"address": target, "waiting": 0, "running": 0, "kv_cache": 0.0, "healthy": True}],
                      "small": []}}
    with harness.start_envoy(out, env={"LLM_ROUTER_PUSH_TOKEN": token}):
        r = harness.post_json("/.well-known/llm-router/load", snap, {"authorization": f"Bearer {token}"}, port=listener)
        assert r.status == 204, (r.status, r.text[:300])
        sc = SCENARIOS["model rule sends gpt-4o to the large tier"]
        r = harness.post_json(sc["request"]["path"], sc["request"]["body"], port=listener)
        assert r.status == 200, r.text[:300]
        assert r.mock["headers"].get("x-gateway-destination-endpoint") == target
        assert r.headers.get("x-mock-instance") == "large-2", r.headers


def test_wasmplugin_variant_stalls_without_stop_iteration(tmp_path, istio_mocks):
    """Why istio/ loads the filter with an EnvoyFilter: the filter istiod renders from a WasmPlugin
    has no allow_on_headers_stop_iteration, and an inspected POST never reaches upstream."""
    listener, admin = harness.free_port(), harness.free_port()
    out = tmp_path / "istio-wasmplugin.json"
    render("wasmplugin", out, listener, admin, upstreams_of(istio_mocks))
    with harness.start_envoy(out, env={"LLM_ROUTER_PUSH_TOKEN": "t"}):
        r = harness.get("/v1/models", port=listener)
        assert r.status == 200  # not inspected: passes
        sc = SCENARIOS["short prompt goes to the small tier with its model"]
        with pytest.raises(Exception):
            harness.post_json(sc["request"]["path"], sc["request"]["body"], port=listener, timeout=3)
