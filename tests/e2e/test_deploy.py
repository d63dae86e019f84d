"""deploy/: the llm-router-extproc Deployment and the InferencePool manifests of every gateway.

Every manifest in deploy/ and istio/ is checked against published schemas (what `kubectl apply`
with strict field validation would refuse): the Kubernetes OpenAPI and the Gateway API, Istio and
GKE CRD schemas from the npm packages pinned in tests/e2e/k8s_schema/ (scripts/setup-k8s-schemas.sh),
and InferencePool v1 against tests/e2e/k8s_schema/inferencepool-v1.json. Broken copies must fail,
so the check can fail. Then the pieces must fit together (names, ports, token, config, tiers),
the plugin configuration must be accepted by the real filter (host-sim), and the body-router
EnvoyFilter, applied to an Istio-like gateway, must pass `envoy --mode validate`.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

import harness

REPO = harness.REPO_ROOT
DEPLOY = REPO / "deploy"
SCHEMA_DIR = REPO / "tests" / "e2e" / "k8s_schema"
GATEWAYS = ["agentgateway", "istio", "envoy-ai-gateway", "gke"]
HOST_SIM = REPO / "target" / "release" / "host-sim"
# istio/sidecar.yaml's Deployment is a strategic-merge patch for `kubectl patch`, not an object.
PATCHES = {("istio/sidecar.yaml", 2)}


def load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifest_files() -> list[Path]:
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted((REPO / "istio").glob("*.yaml"))
    return [f for f in files if "node_modules" not in f.parts]


def rel(p: Path) -> str:
    return str(p.relative_to(REPO))


@pytest.fixture(scope="module")
def schemas():
    r = subprocess.run([str(REPO / "scripts" / "setup-k8s-schemas.sh")], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, f"could not install the schema packages: {r.stderr[-2000:]}"
    return SCHEMA_DIR / "validate.mjs"


def validate(tool: Path, docs: list[tuple[str, dict]], patch: set[str] = frozenset()) -> dict[str, list[str]]:
    """where -> errors (empty when valid). `patch`: wheres whose missing required fields are fine."""
    payload = [{"where": w, "doc": d} for w, d in docs]
    r = subprocess.run(["node", str(tool)], input=json.dumps(payload), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode in (0, 1), r.stderr
    out = {}
    for line in r.stdout.splitlines():
        res = json.loads(line)
        errs = res["errors"]
        if res["where"] in patch:
            errs = [e for e in errs if "must have required property" not in e]
        out[res["where"]] = errs
    assert set(out) == {w for w, _ in docs}, r.stdout
    return out


# ---------------------------------------------------------------------------------------------
# Schemas


@pytest.mark.parametrize("path", manifest_files(), ids=rel)
def test_manifest_valid_against_published_schemas(schemas, path):
    docs = [(f"{rel(path)}#{i}", d) for i, d in enumerate(load(path))]
    assert docs, f"{rel(path)} holds no document"
    patch = {f"{f}#{i}" for f, i in PATCHES}
    res = validate(schemas, docs, patch)
    bad = {w: e for w, e in res.items() if e}
    assert not bad, json.dumps(bad, indent=1)


def deployment() -> dict:
    return load(DEPLOY / "extproc" / "deployment.yaml")[0]


def pool() -> dict:
    return load(DEPLOY / "gateways" / "istio" / "inferencepool.yaml")[0]


def route() -> dict:
    return load(DEPLOY / "gateways" / "agentgateway" / "gateway.yaml")[1]


def body_router_ef() -> dict:
    return load(DEPLOY / "gateways" / "istio" / "body-router" / "envoyfilter.yaml")[0]


def _mut(doc, fn):
    d = copy.deepcopy(doc)
    fn(d)
    return d


def _rename(obj: dict, old: str, new: str):
    obj[new] = obj.pop(old)


BROKEN = {
    # A typo in a field name: kubectl's strict validation refuses it, so must we.
    "misspelt probe": (lambda: _mut(deployment(), lambda d: _rename(
        d["spec"]["template"]["spec"]["containers"][0], "readinessProbe", "readinesProbe")), "unknown field"),
    "probe port as text": (lambda: _mut(deployment(), lambda d: d["spec"]["template"]["spec"]["containers"][0]
                                        ["readinessProbe"]["grpc"].update(port="health")), "must be integer"),
    "unknown top-level field": (lambda: _mut(deployment(), lambda d: _rename(d, "spec", "spc")), "spc"),
    "failureMode typo": (lambda: _mut(pool(), lambda d: d["spec"]["endpointPickerRef"].update(
        failureMode="FailOpenn")), "allowed values"),
    "endpoint picker without port": (lambda: _mut(pool(), lambda d: d["spec"]["endpointPickerRef"].pop("port")),
                                     "port"),
    "unknown pool field": (lambda: _mut(pool(), lambda d: d["spec"].update(targetPortNumber=8000)),
                           "additional properties"),
    "no target ports": (lambda: _mut(pool(), lambda d: d["spec"].update(targetPorts=[])), "fewer than 1"),
    "route method": (lambda: _mut(route(), lambda d: d["spec"]["rules"][0]["matches"][0].update(method="FETCH")),
                     "allowed values"),
    "route backend typo": (lambda: _mut(route(), lambda d: d["spec"]["rules"][0]["backendRefs"][0].update(weigth=1)),
                           "unknown field"),
    "envoyfilter applyTo": (lambda: _mut(body_router_ef(), lambda d: d["spec"]["configPatches"][0].update(
        applyTo="HTTP_FILTERS")), "allowed values"),
    "unknown kind": (lambda: {"apiVersion": "example.com/v1", "kind": "Thing", "metadata": {"name": "x"}},
                     "no schema"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_copy_is_refused(schemas, name):
    """The schema check above can fail: each broken copy of a shipped manifest is refused."""
    make, fragment = BROKEN[name]
    res = validate(schemas, [(name, make())])
    assert res[name], f"{name}: accepted"
    assert any(fragment in e for e in res[name]), res[name]


# ---------------------------------------------------------------------------------------------
# The pieces fit together


def by_kind(path: Path) -> dict[str, dict]:
    return {d["kind"]: d for d in load(path)}


def container(name: str) -> dict:
    cs = deployment()["spec"]["template"]["spec"]["containers"]
    return next(c for c in cs if c["name"] == name)


def args_of(c: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for a in c.get("args", []):
        k, _, v = a.partition("=")
        out.setdefault(k, []).append(v)
    return out


def configmap() -> dict:
    return load(DEPLOY / "extproc" / "configmap.yaml")[0]


def plugin_config() -> dict:
    return json.loads((DEPLOY / "extproc" / "config" / "plugin.json").read_text())


def sidecar_config() -> dict:
    return json.loads((DEPLOY / "extproc" / "config" / "sidecar.json").read_text())


def test_configmap_holds_the_shipped_configs():
    data = configmap()["data"]
    assert json.loads(data["plugin.json"]) == plugin_config()
    assert json.loads(data["sidecar.json"]) == sidecar_config()


def test_inference_pools_are_one_pool_over_both_tiers():
    pools = {g: load(DEPLOY / "gateways" / g / "inferencepool.yaml") for g in GATEWAYS}
    first = pools["istio"][0]
    for g, ds in pools.items():
        assert [d["kind"] for d in ds] == ["InferencePool"], g
        assert ds[0] == first, f"{g}: InferencePool differs from istio's"
    spec = first["spec"]
    assert spec["targetPorts"] == [{"number": 8000}]
    # No tier in the selector: the pool spans every tier, the sidecar groups by the tier label.
    assert not any("tier" in k for k in spec["selector"]["matchLabels"])
    assert sidecar_config()["kubernetes"]["tier_label"] == "llm-router.io/tier"
    assert sidecar_config()["kubernetes"]["inference_pool"] == first["metadata"]["name"]
    assert set(plugin_config()["tiers"]) == {"small", "large"}
    # endpointPickerRef -> our Service's ext_proc port.
    svc = load(DEPLOY / "extproc" / "service.yaml")[0]
    epp = spec["endpointPickerRef"]
    assert epp["name"] == svc["metadata"]["name"] and epp.get("kind", "Service") == "Service"
    assert svc["metadata"]["namespace"] == first["metadata"]["namespace"]
    grpc = next(p for p in svc["spec"]["ports"] if p["port"] == epp["port"]["number"])
    assert grpc["appProtocol"] == "http2" and grpc["targetPort"] == "grpc"
    assert epp["failureMode"] in ("FailOpen", "FailClose")


@pytest.mark.parametrize("gateway", GATEWAYS)
def test_routes_send_only_inspected_posts_to_the_pool(gateway):
    docs = load(DEPLOY / "gateways" / gateway / "gateway.yaml")
    gw = next(d for d in docs if d["kind"] == "Gateway")
    rt = next(d for d in docs if d["kind"] == "HTTPRoute")
    assert rt["spec"]["parentRefs"] == [{"name": gw["metadata"]["name"]}]
    name = pool()["metadata"]["name"]
    posts = set()
    for rule in rt["spec"]["rules"]:
        assert rule["backendRefs"] == [{"group": "inference.networking.k8s.io", "kind": "InferencePool",
                                        "name": name}]
        for m in rule["matches"]:
            assert m["method"] in ("POST", "GET", "HEAD"), m
            if m["method"] == "POST":
                posts.add(m["path"]["value"])
    assert posts == set(plugin_config()["apis"])


def test_deployment_wires_server_sidecar_token_and_config():
    pod = deployment()["spec"]["template"]["spec"]
    server, side = container("llm-router-extproc"), container("llm-router-sidecar")
    a = args_of(server)
    cfg = plugin_config()
    token_env = cfg["endpoints"]["push_token_env"]
    assert a["--env"] == [token_env]
    for c in (server, side):
        env = {e["name"]: e for e in c.get("env", [])}
        ref = env[token_env]["valueFrom"]["secretKeyRef"]
        secret = load(DEPLOY / "extproc" / "secret.yaml")[0]
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    # The ConfigMap is mounted as a directory (a subPath mount never sees updates: no reload).
    cfg_dir = str(Path(a["--plugin-config"][0]).parent)
    for c in (server, side):
        mount = next(m for m in c["volumeMounts"] if m["mountPath"] == cfg_dir)
        assert "subPath" not in mount and mount.get("readOnly") is True
        vol = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert vol["configMap"]["name"] == configmap()["metadata"]["name"]
    assert side["args"] == ["--config", f"{cfg_dir}/sidecar.json"]
    # The sidecar pushes to the server's metrics port on loopback, at the filter's push path.
    push = urlparse(sidecar_config()["push_url"])
    metrics_port = int(a["--metrics-addr"][0].rsplit(":", 1)[1])
    assert (push.scheme, push.hostname, push.port, push.path) == (
        "http", "127.0.0.1", metrics_port, cfg["endpoints"]["push_path"])
    assert sidecar_config()["push_token_env"] == token_env
    # Ports: what the Service names are what the server listens on.
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports == {"grpc": int(a["--grpc-addr"][0].rsplit(":", 1)[1]),
                     "health": int(a["--health-addr"][0].rsplit(":", 1)[1]), "metrics": metrics_port}
    assert {p["name"]: p["port"] for p in load(DEPLOY / "extproc" / "service.yaml")[0]["spec"]["ports"]} == ports
    # gRPC probes on the health port, services liveness / readiness.
    assert server["livenessProbe"]["grpc"] == {"port": ports["health"], "service": "liveness"}
    assert server["readinessProbe"]["grpc"] == {"port": ports["health"], "service": "readiness"}
    # Hardening.
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    for c in (server, side):
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    # Both containers from the image `make oci-extproc` builds (it holds both binaries).
    assert server["image"] == side["image"] and side["command"] == ["/usr/local/bin/llm-router-sidecar"]
    pdb = load(DEPLOY / "extproc" / "pdb.yaml")[0]
    assert pdb["spec"]["selector"] == deployment()["spec"]["selector"]
    assert pdb["spec"]["minAvailable"] < deployment()["spec"]["replicas"]


def test_service_account_has_the_sidecar_role():
    """The pod's service account is bound to the sidecar's Role (deploy/sidecar-rbac.yaml, from the
    sidecar's Kubernetes source), which must allow get/list/watch on pods and inferencepools."""
    sa, rb = load(DEPLOY / "extproc" / "serviceaccount.yaml")
    assert deployment()["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    assert rb["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                               "namespace": sa["metadata"]["namespace"]}]
    rbac = DEPLOY / "sidecar-rbac.yaml"
    assert rbac.exists(), ("deploy/sidecar-rbac.yaml (the sidecar's Role, from the sidecar's Kubernetes "
                           "source work) is missing: the RoleBinding points at nothing")
    roles = [d for d in load(rbac) if d["kind"] == "Role" and d["metadata"]["name"] == rb["roleRef"]["name"]]
    assert roles and roles[0]["metadata"]["namespace"] == rb["metadata"]["namespace"], rb["roleRef"]
    granted = {(g, r): set(rule["verbs"]) for rule in roles[0]["rules"]
               for g in rule["apiGroups"] for r in rule["resources"]}
    assert {"get", "list", "watch"} <= granted[("", "pods")]
    assert {"get", "list", "watch"} <= granted[("inference.networking.k8s.io", "inferencepools")]


# ---------------------------------------------------------------------------------------------
# The plugin configuration through the real filter


@pytest.fixture(scope="module")
def host_sim():
    if not HOST_SIM.exists():
        r = subprocess.run(["cargo", "build", "-q", "--release", "-p", "host-sim"], cwd=REPO,
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0 and HOST_SIM.exists(), f"host-sim could not be built: {r.stderr[-1500:]}"
    return HOST_SIM


def replay(host_sim: Path, tmp_path: Path, cfg: dict, reqs: list[dict]):
    plugin = tmp_path / "plugin.json"
    plugin.write_text(json.dumps(cfg))
    traffic = tmp_path / "traffic.jsonl"
    traffic.write_text("".join(json.dumps(r) + "\n" for r in reqs))
    return subprocess.run([str(host_sim), "replay", "--wasm", str(harness.WASM_PATH), "--config", str(plugin),
                           "--requests", str(traffic)], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_default_plugin_config_routes_small_and_large(host_sim, tmp_path):
    routing = json.loads((REPO / "tests" / "scenarios" / "routing.json").read_text())
    sc = {s["name"]: s for s in routing["scenarios"]}
    reqs = [sc["short prompt goes to the small tier with its model"]["request"],
            sc["model rule sends gpt-4o to the large tier"]["request"]]
    r = replay(host_sim, tmp_path, plugin_config(), reqs)
    assert r.returncode == 0, r.stderr
    tiers = [line.split("tier=", 1)[1].split()[0] for line in r.stdout.split("== metrics ==")[0].splitlines()
             if line.strip().startswith("tier=")]
    assert tiers == ["small", "large"], r.stdout


def test_broken_plugin_config_is_refused(host_sim, tmp_path):
    cfg = plugin_config()
    cfg["default_tier"] = "medium"
    r = replay(host_sim, tmp_path, cfg, [])
    assert r.returncode != 0 and "medium" in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------------
# The body-router EnvoyFilter on an Istio-like gateway: envoy --mode validate


def render_body_router(ef: dict, out: Path) -> dict:
    sys.path.insert(0, str(REPO / "istio" / "tools"))
    import apply_envoyfilter as tool

    host = "llm-router-extproc.llm.svc.cluster.local"
    cluster = tool.cluster_name(host, 9002)
    cfg = tool.base_config(harness.free_port(), harness.free_port(), {cluster: ["127.0.0.1:9002"]})
    # What istiod gives the Service's port with appProtocol http2 (+ the DestinationRule's TLS).
    c = cfg["static_resources"]["clusters"][0]
    c["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}}
    c["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext", "sni": host}}
    lst = cfg["static_resources"]["listeners"][0]
    lst["_istio_port"] = 80  # a Gateway API gateway's listener port
    tool.apply_envoyfilter(cfg, ef, {})
    lst.pop("_istio_port")
    out.write_text(json.dumps(cfg))
    return cfg


def envoy_validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([harness.envoy_bin(), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def test_body_router_envoyfilter_validates_in_envoy(tmp_path):
    out = tmp_path / "body-router.json"
    cfg = render_body_router(body_router_ef(), out)
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    names = [f["name"] for f in hcm["http_filters"]]
    assert names == ["envoy.filters.http.ext_proc", "envoy.filters.http.router"], names
    ep = hcm["http_filters"][0]["typed_config"]
    assert ep["processing_mode"]["request_body_mode"] == "FULL_DUPLEX_STREAMED"
    assert ep["allow_mode_override"] is True and ep["route_cache_action"] == "CLEAR"
    assert ep["failure_mode_allow"] is False
    assert ep["grpc_service"]["envoy_grpc"]["cluster_name"] == cfg["static_resources"]["clusters"][0]["name"]
    r = envoy_validate(out)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def test_broken_body_router_envoyfilter_fails_envoy_validate(tmp_path):
    ef = body_router_ef()
    ef["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["processing_mode"]["request_body_mode"] = \
        "FULL_DUPLEX"
    out = tmp_path / "bad.json"
    render_body_router(ef, out)
    r = envoy_validate(out)
    assert r.returncode != 0
