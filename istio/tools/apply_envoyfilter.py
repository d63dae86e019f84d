#!/usr/bin/env python3
"""Render what Istio would give an ingress gateway from istio/*.yaml, as a static Envoy bootstrap
that `envoy --mode validate` checks and a local Envoy can serve (tests/e2e/test_istio.py).

    apply_envoyfilter.py --variant envoyfilter|wasmplugin --out FILE \
        [--listener-port N] [--admin-port N] [--wasm dist/llm_router.wasm] \
        [--upstream llm-small.llm.svc.cluster.local=127.0.0.1:8101,127.0.0.1:8102 ...]

Steps (each a small, documented stand-in for istiod + istio-agent):
 1. Base: an Istio-like gateway bootstrap: listener 0.0.0.0_8080 (bound to 127.0.0.1:PORT), one
    HCM with only envoy.filters.http.router, route config "http.8080", a STATIC cluster
    "outbound|PORT||HOST" per --upstream.
 2. The VirtualService (istio/virtualservice.yaml) becomes the routes of that vhost: route name =
    http[].name, header matches exact / regex (/ prefix), method match, single destination,
    timeout, or a directResponse (status, body.string) with headers.response.set.
 3. The filter:
    - variant "envoyfilter": the EnvoyFilter istio/envoyfilter-filter.yaml (EXTENSION_CONFIG ADD,
      HTTP_FILTER INSERT_BEFORE router with config_discovery);
    - variant "wasmplugin": the Wasm filter istiod generates from istio/wasmplugin.yaml
      (name NS.NAME, root_id = pluginName, vm env HOST -> host_env_keys, pluginConfig as JSON,
      fail_open = failStrategy FAIL_OPEN; no allow_on_headers_stop_iteration: the API has none),
      inserted before the router (the base has no authn/authz/stats filters, so every phase
      lands there).
    ECDS is resolved statically: a filter with config_discovery gets the typed_config of the
    EXTENSION_CONFIG of that name, and remote code (oci:// or http) is replaced by
    local.filename = --wasm, which is what istio-agent does after it fetched and verified it.
 4. The EnvoyFilter istio/envoyfilter-gateway.yaml, then the filter one, patch by patch in order.

Patch semantics implemented (the subset istio/*.yaml uses), following Istio's EnvoyFilter docs:
  CLUSTER ADD                  append the cluster
  LISTENER MERGE               merge into listeners whose port == match.listener.portNumber
  NETWORK_FILTER MERGE         merge into the network filters named match...filterChain.filter.name
                               of those listeners (the HTTP connection manager)
  HTTP_FILTER INSERT_BEFORE    insert before the HCM filter named match...subFilter.name
  HTTP_ROUTE MERGE             merge into routes named match.routeConfiguration.vhost.route.name
  EXTENSION_CONFIG ADD         register a named extension config (served by "ECDS")
  BOOTSTRAP MERGE              merge into the bootstrap
  MERGE is protobuf merge on the JSON form: objects merge recursively, lists are appended,
  scalars are replaced; setting a member of a oneof clears its siblings (RouteAction's cluster
  specifier, HttpFilter's typed_config / config_discovery).
Anything else (another operation, applyTo or match field) is an error, never silently ignored.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import yaml

ISTIO = Path(__file__).resolve().parents[1]
REPO = ISTIO.parent
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
HCM = "envoy.filters.network.http_connection_manager"
ROUTER = "envoy.filters.http.router"

# Members of protobuf oneofs that MERGE must treat as exclusive (only those used here).
ONEOFS = [
    {"cluster", "weighted_clusters", "cluster_header", "cluster_specifier_plugin",
     "inline_cluster_specifier_plugin"},
    {"typed_config", "config_discovery"},
    {"local", "remote"},
]


class PatchError(ValueError):
    pass


def proto_merge(dst: dict, src: dict) -> dict:
    """Protobuf MergeFrom on JSON objects (see module docstring)."""
    for k, v in src.items():
        for group in ONEOFS:
            if k in group:
                for other in group - {k}:
                    dst.pop(other, None)
        if isinstance(v, dict) and isinstance(dst.get(k), dict) and \
                dst[k].get("@type", v.get("@type")) == v.get("@type", dst[k].get("@type")):
            proto_merge(dst[k], v)
        elif isinstance(v, list) and isinstance(dst.get(k), list):
            dst[k].extend(copy.deepcopy(v))
        else:
            dst[k] = copy.deepcopy(v)
    return dst


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def one(path: Path, kind: str) -> dict:
    docs = [d for d in load_docs(path) if d.get("kind") == kind]
    if len(docs) != 1:
        raise PatchError(f"{path}: expected one {kind}, found {len(docs)}")
    return docs[0]


def cluster_name(host: str, port: int) -> str:
    return f"outbound|{port}||{host}"


def base_config(listener_port: int, admin_port: int, upstreams: dict[str, list[str]]) -> dict:
    clusters = []
    for name, addrs in upstreams.items():
        eps = []
        for a in addrs:
            h, p = a.rsplit(":", 1)
            eps.append({"endpoint": {"address": {"socket_address": {"address": h, "port_value": int(p)}}}})
        clusters.append({"name": name, "type": "STATIC", "connect_timeout": "1s",
                         "lb_policy": "ROUND_ROBIN",
                         "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": eps}]}})
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "outbound_0.0.0.0_8080",
        "codec_type": "AUTO",
        # As Istio configures gateway listeners: the client address is the TCP peer.
        "use_remote_address": True,
        "route_config": {"name": "http.8080", "virtual_hosts": [{"name": "*:80", "domains": ["*"], "routes": []}]},
        "http_filters": [{"name": ROUTER, "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
        "access_log": [{"name": "envoy.access_loggers.stdout", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"}}],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "stats_config": {"stats_tags": [], "stats_matcher": {"inclusion_list": {"patterns": [
            {"prefix": "reporter="}, {"prefix": "component"}, {"prefix": "istio"}]}}},
        "stats_flush_interval": "1s",
        "static_resources": {
            "listeners": [{
                "name": "0.0.0.0_8080",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener_port}},
                # The port Istio's EnvoyFilter listener match sees (the gateway container port).
                "_istio_port": 8080,
                "filter_chains": [{"filters": [{"name": HCM, "typed_config": hcm}]}],
            }],
            "clusters": clusters,
        },
    }


def render_virtualservice(cfg: dict, vs: dict) -> None:
    routes = []
    for h in vs["spec"]["http"]:
        headers = []
        matches = h.get("match") or [{}]
        if len(matches) != 1:
            raise PatchError(f"VirtualService route {h.get('name')}: one match supported")
        match_headers = dict(matches[0].get("headers") or {})
        if "method" in matches[0]:
            match_headers[":method"] = matches[0]["method"]
        for name, m in match_headers.items():
            if "exact" in m:
                headers.append({"name": name, "string_match": {"exact": m["exact"]}})
            elif "regex" in m:
                headers.append({"name": name, "string_match": {"safe_regex": {"regex": m["regex"]}}})
            elif "prefix" in m:
                headers.append({"name": name, "string_match": {"prefix": m["prefix"]}})
            else:
                raise PatchError(f"header match {m} not supported")
        r = {"name": h["name"], "match": {"prefix": "/"}}
        if "directResponse" in h:
            dr = h["directResponse"]
            r["direct_response"] = {"status": dr["status"]}
            if "body" in dr:
                r["direct_response"]["body"] = {"inline_string": dr["body"]["string"]}
            resp_set = (h.get("headers") or {}).get("response", {}).get("set", {})
            if resp_set:
                r["response_headers_to_add"] = [
                    {"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
                    for k, v in resp_set.items()]
        else:
            dests = h["route"]
            if len(dests) != 1:
                raise PatchError(f"VirtualService route {h.get('name')}: one destination supported")
            d = dests[0]["destination"]
            r["route"] = {"cluster": cluster_name(d["host"], d["port"]["number"]),
                          "timeout": h.get("timeout", "0s")}
        if headers:
            r["match"]["headers"] = headers
        routes.append(r)
    for hcm in hcms(cfg):
        hcm["route_config"]["virtual_hosts"][0]["routes"] = routes


def hcms(cfg: dict, port: int | None = None):
    for lst in cfg["static_resources"]["listeners"]:
        if port is not None and lst.get("_istio_port") != port:
            continue
        for ch in lst["filter_chains"]:
            for f in ch["filters"]:
                if f["name"] == HCM:
                    yield f["typed_config"]


def wasmplugin_filter(wp: dict) -> tuple[dict, dict]:
    """The HTTP filter (with config_discovery) and the extension config istiod builds."""
    spec = wp["spec"]
    name = f"{wp['metadata']['namespace']}.{wp['metadata']['name']}"
    env = spec.get("vmConfig", {}).get("env", [])
    host_keys = [e["name"] for e in env if e.get("valueFrom") == "HOST"]
    inline = {e["name"]: e.get("value", "") for e in env if e.get("valueFrom", "INLINE") == "INLINE"}
    vm = {"vm_id": name, "runtime": "envoy.wasm.runtime.v8",
          "code": {"remote": {"http_uri": {"uri": spec["url"], "timeout": "30s"},
                              "sha256": spec.get("sha256", "")}}}
    if host_keys or inline:
        vm["environment_variables"] = {}
        if host_keys:
            vm["environment_variables"]["host_env_keys"] = host_keys
        if inline:
            vm["environment_variables"]["key_values"] = inline
    conf = {"name": name, "root_id": spec.get("pluginName", ""), "vm_config": vm,
            "fail_open": spec.get("failStrategy") == "FAIL_OPEN"}
    if "pluginConfig" in spec:
        conf["configuration"] = {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                 "value": json.dumps(spec["pluginConfig"])}
    ext = {"name": name, "typed_config": {"@type": WASM_TYPE, "config": conf}}
    flt = {"name": name, "config_discovery": {"config_source": {"ads": {}},
                                              "type_urls": [WASM_TYPE]}}
    return flt, ext


def check_match(match: dict, allowed: set[str], where: str) -> None:
    extra = set(match) - allowed
    if extra:
        raise PatchError(f"{where}: match fields {sorted(extra)} not supported by this tool")
    if match.get("context", "GATEWAY") not in ("GATEWAY", "ANY"):
        raise PatchError(f"{where}: context {match['context']} does not apply to a gateway")


def apply_envoyfilter(cfg: dict, ef: dict, extensions: dict[str, dict]) -> None:
    for i, p in enumerate(ef["spec"]["configPatches"]):
        where = f"EnvoyFilter {ef['metadata']['name']} patch {i}"
        at, op = p["applyTo"], p["patch"]["operation"]
        val = copy.deepcopy(p["patch"].get("value", {}))
        match = p.get("match") or {}
        if (at, op) == ("CLUSTER", "ADD"):
            check_match(match, {"context"}, where)
            cfg["static_resources"]["clusters"].append(val)
        elif (at, op) == ("BOOTSTRAP", "MERGE"):
            proto_merge(cfg, val)
        elif (at, op) == ("EXTENSION_CONFIG", "ADD"):
            extensions[val["name"]] = val
        elif (at, op) == ("LISTENER", "MERGE"):
            check_match(match, {"context", "listener"}, where)
            port = match["listener"]["portNumber"]
            hit = [l for l in cfg["static_resources"]["listeners"] if l.get("_istio_port") == port]
            if not hit:
                raise PatchError(f"{where}: no listener on port {port}")
            for l in hit:
                proto_merge(l, val)
        elif (at, op) == ("NETWORK_FILTER", "MERGE"):
            check_match(match, {"context", "listener"}, where)
            lm = match["listener"]
            name = lm["filterChain"]["filter"]["name"]
            n = 0
            for lst in cfg["static_resources"]["listeners"]:
                if lst.get("_istio_port") != lm.get("portNumber", lst.get("_istio_port")):
                    continue
                for ch in lst["filter_chains"]:
                    for f in ch["filters"]:
                        if f["name"] == name:
                            proto_merge(f, val)
                            n += 1
            if not n:
                raise PatchError(f"{where}: no network filter {name} matched")
        elif (at, op) == ("HTTP_FILTER", "INSERT_BEFORE"):
            check_match(match, {"context", "listener"}, where)
            lm = match["listener"]
            fm = lm["filterChain"]["filter"]
            if fm["name"] != HCM:
                raise PatchError(f"{where}: only {HCM} supported")
            sub = fm["subFilter"]["name"]
            n = 0
            for hcm in hcms(cfg, lm.get("portNumber")):
                idx = [j for j, f in enumerate(hcm["http_filters"]) if f["name"] == sub]
                if idx:
                    hcm["http_filters"].insert(idx[0], val)
                    n += 1
            if not n:
                raise PatchError(f"{where}: no HTTP filter {sub} matched")
        elif (at, op) == ("HTTP_ROUTE", "MERGE"):
            check_match(match, {"context", "routeConfiguration"}, where)
            name = match["routeConfiguration"]["vhost"]["route"]["name"]
            n = 0
            for hcm in hcms(cfg):
                for vh in hcm["route_config"]["virtual_hosts"]:
                    for r in vh["routes"]:
                        if r.get("name") == name:
                            proto_merge(r, val)
                            n += 1
            if not n:
                raise PatchError(f"{where}: no route named {name}")
        else:
            raise PatchError(f"{where}: {at} {op} not supported by this tool")


def resolve_ecds(cfg: dict, extensions: dict[str, dict], wasm: str) -> None:
    """Stand-in for ECDS + istio-agent: inline the named extension configs, local wasm code."""
    for hcm in hcms(cfg):
        for f in hcm["http_filters"]:
            if "config_discovery" not in f:
                continue
            ext = extensions.get(f["name"])
            if ext is None:
                raise PatchError(f"HTTP filter {f['name']}: no extension config of that name")
            types = f["config_discovery"].get("type_urls", [])
            tc = copy.deepcopy(ext["typed_config"])
            if types and tc.get("@type") not in types:
                raise PatchError(f"extension config {f['name']}: type {tc.get('@type')} not in {types}")
            code = tc.get("config", {}).get("vm_config", {}).get("code", {})
            if "remote" in code:
                code.pop("remote")
                code["local"] = {"filename": wasm}
            del f["config_discovery"]
            f["typed_config"] = tc


def render(variant: str, listener_port: int, admin_port: int, upstreams: dict[str, list[str]],
           wasm: str) -> dict:
    cfg = base_config(listener_port, admin_port, upstreams)
    render_virtualservice(cfg, one(ISTIO / "virtualservice.yaml", "VirtualService"))
    extensions: dict[str, dict] = {}
    filter_efs = []
    if variant == "wasmplugin":
        flt, ext = wasmplugin_filter(one(ISTIO / "wasmplugin.yaml", "WasmPlugin"))
        extensions[ext["name"]] = ext
        for hcm in hcms(cfg, 8080):
            hcm["http_filters"].insert(len(hcm["http_filters"]) - 1, flt)
    elif variant == "envoyfilter":
        filter_efs.append(one(ISTIO / "envoyfilter-filter.yaml", "EnvoyFilter"))
    else:
        raise PatchError(f"unknown variant {variant}")
    for ef in [one(ISTIO / "envoyfilter-gateway.yaml", "EnvoyFilter")] + filter_efs:
        apply_envoyfilter(cfg, ef, extensions)
    resolve_ecds(cfg, extensions, wasm)
    for lst in cfg["static_resources"]["listeners"]:
        lst.pop("_istio_port", None)
    return cfg


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", choices=["envoyfilter", "wasmplugin"], required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--listener-port", type=int, default=18080)
    ap.add_argument("--admin-port", type=int, default=19901)
    ap.add_argument("--wasm", default=str(REPO / "dist" / "llm_router.wasm"))
    ap.add_argument("--upstream", action="append", default=[],
                    help="HOST=ip:port[,ip:port...] for the VirtualService destinations")
    a = ap.parse_args(argv)
    ups = {cluster_name("llm-small.llm.svc.cluster.local", 8000): ["127.0.0.1:8101", "127.0.0.1:8102", "127.0.0.1:8103"],
           cluster_name("llm-large.llm.svc.cluster.local", 8000): ["127.0.0.1:8201", "127.0.0.1:8202"]}
    for u in a.upstream:
        host, addrs = u.split("=", 1)
        ups[cluster_name(host, 8000) if "|" not in host else host] = addrs.split(",")
    try:
        cfg = render(a.variant, a.listener_port, a.admin_port, ups, a.wasm)
    except (PatchError, KeyError) as e:
        print(f"apply_envoyfilter: {e}", file=sys.stderr)
        return 1
    Path(a.out).write_text(json.dumps(cfg, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
