#!/usr/bin/env python3
"""Writes the Envoy configs of the load benchmark (scripts/bench.sh) into OUTDIR.

All gateway variants are derived from the shipped envoy-config/envoy.yaml, so the benchmark
measures what users run. Changes made to it, for every variant:

  * listener and admin moved to the benchmark's own ports;
  * the `small` / `large` clusters point at the fast upstream's listeners;
  * the stdout access log is removed (it would cost the same in every variant and only dilute
    the comparison; BENCH_ACCESS_LOG=1 keeps it, written to a file);
  * the Wasm module path made absolute.

Variants (each gateway on ports of its own, see `ports`, so they all run at once):

  A  no Wasm filter at all (plain Envoy proxying): passthrough.
  F  Envoy's own `buffer` filter instead of the Wasm filter (the whole body held, nothing read):
     the floor of any filter that reads the body.
  W  the Proxy-Wasm floor (bench/load/floor.wat) instead of the filter: holds the headers,
     buffers the body, reads it into the VM once, sets the tier header, re-matches the route,
     nothing else. What any Wasm filter that routes on the body costs at least.
  L  the Lua anchor (bench/load/anchor.lua) instead of the Wasm filter: the body, a pattern
     match for `model`, a length rule, the tier header and a route re-match.
  B  the filter with routing only: the shipped tiers, default tier, rules and models; no
     `tenants`, no `endpoints`.
  C  the shipped plugin configuration as is (tenants + endpoints), except that the tenant
     limits are raised to 1e9 per minute, so that every request of the load test is admitted
     and goes through the whole path (bucket charge with compare-and-swap, usage reconciliation)
     instead of being answered 429 after the first 600 requests.

The upstream is a separate Envoy with one `direct_response` listener per model server of the
shipped topology (3 small, 2 large), answering a canned OpenAI chat completion with `usage`.

Usage: gen-configs.py SHIPPED_YAML OUTDIR WASM_PATH PORT_BASE FLOOR_WASM_PATH
  FLOOR_WASM_PATH  bench/load/floor.wat compiled (variant W)
  PORT_BASE     +2 upstream admin; +101..+103 upstream "small" servers; +201..+202 upstream
                "large" servers; gateway of variant number k (VARIANTS order) listens on
                +10+2k, its admin on +11+2k. Variant X (the ext_proc path, from
                envoy-extproc.yaml next to SHIPPED_YAML, plugin configuration in
                OUTDIR/plugin-X.json): llm-router-extproc gRPC +3, health +4, metrics +5.
Also writes OUTDIR/snapshot.json (a load snapshot naming the upstream's servers, as the sidecar
would push it, with some load on them so the scoring has something to compare) and prints the
push path of the shipped config on stdout.
"""

import copy
import json
import os
import sys

import yaml

WASM_FILTER = "envoy.filters.http.wasm"
RAISED_LIMIT = 1_000_000_000
VARIANTS = ["A", "F", "L", "B", "C", "W", "X"]
# What bench/load/floor.wat sets (variant W): the shipped routes must match on it.
FLOOR_HEADER = ("x-llm-model-type", "small")
ANCHOR_LUA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "anchor.lua")


def ports(base, variant):
    """(listener, admin) of a variant's gateway."""
    k = VARIANTS.index(variant)
    return base + 10 + 2 * k, base + 11 + 2 * k

# ~300 bytes, like a short answer of an OpenAI-compatible server (vLLM, TGI).
CANNED = json.dumps(
    {
        "id": "chatcmpl-bench-0001",
        "object": "chat.completion",
        "created": 1735689600,
        "model": "llama-3.1-8b-instruct",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "The ticket is about a failed payment; refund issued, no further action needed.",
                },
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 262, "completion_tokens": 18, "total_tokens": 280},
    },
    separators=(",", ":"),
)


def sock(port):
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def upstream_config(base):
    listeners = []
    names = [("small-1", base + 101), ("small-2", base + 102), ("small-3", base + 103),
             ("large-1", base + 201), ("large-2", base + 202)]
    for name, port in names:
        listeners.append({
            "name": name,
            "address": sock(port),
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network."
                             "http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": name,
                    "codec_type": "AUTO",
                    "route_config": {
                        "name": name,
                        "virtual_hosts": [{
                            "name": name,
                            "domains": ["*"],
                            "routes": [{
                                "match": {"prefix": "/"},
                                "direct_response": {"status": 200, "body": {"inline_string": CANNED}},
                                "response_headers_to_add": [
                                    {"header": {"key": "content-type", "value": "application/json"}},
                                    {"header": {"key": "x-mock-instance", "value": name}},
                                ],
                            }],
                        }],
                    },
                    # The buffer filter reads the whole request before the direct response:
                    # answered with the request body still unread, Envoy closes the
                    # connection, and every gateway request would pay a new upstream
                    # connection (it did: upstream_cx_total == requests).
                    "http_filters": [{
                        "name": "envoy.filters.http.buffer",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                            "max_request_bytes": 4 * 1024 * 1024,
                        },
                    }, {
                        "name": "envoy.filters.http.router",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                        },
                    }],
                },
            }]}],
        })
    return {
        "admin": {"address": sock(base + 2)},
        "static_resources": {"listeners": listeners},
    }, {"small": [f"127.0.0.1:{p}" for n, p in names if n.startswith("small")],
        "large": [f"127.0.0.1:{p}" for n, p in names if n.startswith("large")]}


def hcm_of(cfg):
    listeners = cfg["static_resources"]["listeners"]
    if len(listeners) != 1:
        sys.exit(f"gen-configs: expected 1 listener in the shipped config, found {len(listeners)}")
    for f in listeners[0]["filter_chains"][0]["filters"]:
        if f["name"] == "envoy.filters.network.http_connection_manager":
            return listeners[0], f["typed_config"]
    sys.exit("gen-configs: no http_connection_manager in the shipped config")


def check_floor_header(hcm):
    """The floor module's fixed tier header must still pick a route of the shipped table."""
    name, value = FLOOR_HEADER
    for vh in hcm["route_config"]["virtual_hosts"]:
        for r in vh["routes"]:
            for h in r.get("match", {}).get("headers", []):
                if h.get("name") == name and h.get("string_match", {}).get("exact") == value:
                    return
    sys.exit(f"gen-configs: no shipped route matches {name}: {value}; update bench/load/floor.wat")


def gateway_config(shipped, variant, base, wasm, pools, outdir, floor=None):
    cfg = copy.deepcopy(shipped)
    listen, admin = ports(base, variant)
    cfg["admin"]["address"] = sock(admin)
    listener, hcm = hcm_of(cfg)
    listener["address"] = sock(listen)
    if os.environ.get("BENCH_ACCESS_LOG") == "1":
        for log in hcm.get("access_log", []):
            log["name"] = "envoy.access_loggers.file"
            log["typed_config"] = {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": os.path.join(outdir, f"access-{variant}.log"),
            }
    else:
        hcm.pop("access_log", None)

    for cluster in cfg["static_resources"]["clusters"]:
        if cluster["name"] in pools:
            cluster["load_assignment"]["endpoints"] = [{"lb_endpoints": [
                {"endpoint": {"address": sock(int(a.rsplit(":", 1)[1]))}} for a in pools[cluster["name"]]
            ]}]

    filters = hcm["http_filters"]
    wasm_filters = [f for f in filters if f["name"] == WASM_FILTER]
    if len(wasm_filters) != 1:
        sys.exit(f"gen-configs: expected 1 {WASM_FILTER} filter in the shipped config")
    wf = wasm_filters[0]
    if variant in ("A", "F"):
        hcm["http_filters"] = [f for f in filters if f["name"] != WASM_FILTER]
        # Without the filter no request gets a tier: drop the route that refuses uninspected
        # POSTs, so the catch-all serves them (the baseline measures Envoy alone).
        for vh in hcm["route_config"]["virtual_hosts"]:
            vh["routes"] = [r for r in vh["routes"] if "direct_response" not in r]
        if variant == "F":
            hcm["http_filters"].insert(0, {
                "name": "envoy.filters.http.buffer",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                    "max_request_bytes": 4 * 1024 * 1024,
                },
            })
        return cfg
    if variant == "L":
        with open(ANCHOR_LUA) as f:
            code = f.read()
        i = filters.index(wf)
        filters[i] = {
            "name": "envoy.filters.http.lua",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                "default_source_code": {"inline_string": code},
            },
        }
        return cfg
    plugin = wf["typed_config"]["config"]
    plugin["vm_config"]["code"]["local"]["filename"] = wasm
    if variant == "W":
        check_floor_header(hcm)
        plugin["vm_config"]["code"]["local"]["filename"] = floor
        plugin["vm_config"]["vm_id"] = "floor"
        plugin["name"] = plugin["root_id"] = "floor"
        plugin["vm_config"].pop("environment_variables", None)
        plugin.pop("configuration", None)
        return cfg
    conf = plugin["configuration"]
    pc = json.loads(conf["value"])
    if variant == "B":
        pc.pop("tenants", None)
        pc.pop("endpoints", None)
    elif variant == "C":
        if "tenants" not in pc or "endpoints" not in pc:
            sys.exit("gen-configs: the shipped plugin config has no tenants/endpoints for variant C")
        t = pc["tenants"]
        for limits in [t.get("default", {})] + list(t.get("limits", {}).values()):
            for k in ("requests_per_minute", "tokens_per_minute"):
                if k in limits:
                    limits[k] = RAISED_LIMIT
            limits.pop("burst_requests", None)
            limits.pop("burst_tokens", None)
    else:
        sys.exit(f"gen-configs: unknown variant {variant}")
    conf["value"] = json.dumps(pc, indent=2)
    return cfg


def extproc_gateway_config(shipped, extproc_shipped, base, wasm, pools, outdir):
    """Variant X: C's plugin configuration run by llm-router-extproc (gRPC on PORT_BASE+3, health
    +4, metrics +5), called by envoy-extproc.yaml's ext_proc filter. Returns (gateway config,
    plugin configuration)."""
    c = gateway_config(shipped, "C", base, wasm, pools, outdir)
    _, chcm = hcm_of(c)
    wf = [f for f in chcm["http_filters"] if f["name"] == WASM_FILTER][0]
    plugin = json.loads(wf["typed_config"]["config"]["configuration"]["value"])
    cfg = copy.deepcopy(extproc_shipped)
    listen, admin = ports(base, "X")
    cfg["admin"]["address"] = sock(admin)
    listener, hcm = hcm_of(cfg)
    listener["address"] = sock(listen)
    hcm.pop("access_log", None)
    for cluster in cfg["static_resources"]["clusters"]:
        if cluster["name"] in pools:
            cluster["load_assignment"]["endpoints"] = [{"lb_endpoints": [
                {"endpoint": {"address": sock(int(a.rsplit(":", 1)[1]))}} for a in pools[cluster["name"]]
            ]}]
        if cluster["name"] == "llm_router_extproc":
            (ep,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
            ep["endpoint"]["address"] = sock(base + 3)
            ep["endpoint"]["health_check_config"]["port_value"] = base + 4
    return cfg, plugin


def _str(dumper, s):
    # Multi-line strings (the plugin JSON) as literal blocks, readable like the shipped file.
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None)


yaml.SafeDumper.add_representer(str, _str)


def main():
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    shipped_path, outdir, wasm, base = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    floor = os.path.abspath(sys.argv[5])
    with open(shipped_path) as f:
        shipped = yaml.safe_load(f)
    os.makedirs(outdir, exist_ok=True)
    up, pools = upstream_config(base)
    with open(os.path.join(outdir, "upstream.yaml"), "w") as f:
        yaml.safe_dump(up, f, sort_keys=False)
    extproc_path = os.path.join(os.path.dirname(shipped_path), "envoy-extproc.yaml")
    with open(extproc_path) as f:
        x, plugin = extproc_gateway_config(shipped, yaml.safe_load(f), base,
                                           os.path.abspath(wasm), pools, outdir)
    with open(os.path.join(outdir, "gateway-X.yaml"), "w") as f:
        yaml.safe_dump(x, f, sort_keys=False)
    with open(os.path.join(outdir, "plugin-X.json"), "w") as f:
        json.dump(plugin, f, indent=2)
    for v in VARIANTS:
        if v == "X":
            continue
        with open(os.path.join(outdir, f"gateway-{v}.yaml"), "w") as f:
            yaml.safe_dump(gateway_config(shipped, v, base, os.path.abspath(wasm), pools, outdir,
                                          floor), f, sort_keys=False)
    # waiting / running / kv_cache below the shipped saturation points (max_queue 5, max_kv_cache
    # 0.8), different per server so picking has to score.
    load = [(0, 1, 0.10), (1, 3, 0.30), (2, 2, 0.45)]
    snapshot = {"pools": {
        pool: [{"address": a, "waiting": w, "running": r, "kv_cache": kv}
               for a, (w, r, kv) in zip(addrs, load)]
        for pool, addrs in pools.items()
    }}
    with open(os.path.join(outdir, "snapshot.json"), "w") as f:
        json.dump(snapshot, f)
    _, hcm = hcm_of(shipped)
    wf = [f for f in hcm["http_filters"] if f["name"] == WASM_FILTER][0]
    pc = json.loads(wf["typed_config"]["config"]["configuration"]["value"])
    print(pc.get("endpoints", {}).get("push_path", "/.well-known/llm-router/load"))


if __name__ == "__main__":
    main()
