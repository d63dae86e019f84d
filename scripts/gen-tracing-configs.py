#!/usr/bin/env python3
"""Generate the tracing variants of envoy-config/envoy.yaml.

    envoy-config/envoy-otel.yaml       OpenTelemetry (OTLP/gRPC to the collector cluster
                                       `otel_collector`), every attribute; Envoy >= 1.37
    envoy-config/envoy-otel-1.36.yaml  the same tracer, only the attributes Envoy 1.36 can read
                                       (the request headers the filter writes); any version
    envoy-config/envoy-datadog.yaml    Datadog (`envoy.tracers.datadog` to the agent cluster
                                       `datadog_agent`), every attribute; Envoy >= 1.37

Each is envoy.yaml with a `tracing` block in the connection manager and the collector's cluster
appended; only text is inserted, so a test can check the committed files are this script's
output (docs/tracing.md explains the attributes):

    scripts/gen-tracing-configs.py            # rewrite the three files
    scripts/gen-tracing-configs.py --check    # exit 1 if a committed file is out of date

The attribute table is the filter's (`filter/src/trace/mod.rs`, ATTRIBUTES); a filter unit
test checks every attribute there appears here. Standard library only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "envoy-config" / "envoy.yaml"

# Span attribute <- the filter's property (filter state `wasm.<property>`), as in
# filter/src/trace/mod.rs.
FILTER_STATE_TAGS = [
    ("gen_ai.operation.name", "llm_router.operation"),
    ("gen_ai.request.model", "llm_router.model"),
    ("gen_ai.usage.input_tokens", "llm_router.prompt_tokens"),
    ("gen_ai.usage.output_tokens", "llm_router.completion_tokens"),
    ("llm_router.tier", "llm_router.tier"),
    ("llm_router.rule", "llm_router.rule"),
    ("llm_router.split", "llm_router.split"),
    ("llm_router.split_target", "llm_router.split_target"),
    ("llm_router.prompt_estimate", "llm_router.prompt_estimate"),
    ("llm_router.stream", "llm_router.stream"),
    ("llm_router.tenant", "llm_router.tenant"),
    ("llm_router.endpoint", "llm_router.endpoint"),
    ("llm_router.endpoint_reason", "llm_router.endpoint_reason"),
    ("llm_router.local_reply", "llm_router.local_reply"),
]
# Envoy 1.36 custom tags cannot read filter state: these attributes come from the request
# headers the filter writes on forwarded requests (the shipped `headers` names). The filter
# removes client-supplied values of these headers, so a client cannot forge them.
HEADER_TAGS = [
    ("gen_ai.request.model", "x-model-id"),
    ("llm_router.tier", "x-llm-model-type"),
    ("llm_router.prompt_estimate", "x-llm-prompt-tokens"),
    ("llm_router.endpoint", "x-gateway-destination-endpoint"),
]

HCM_ANCHOR = "          stat_prefix: gateway\n"
I = "          "  # indentation of the connection manager's fields


def tags_block(full: bool) -> str:
    out = [f"{I}  custom_tags:\n"]
    if full:
        for attr, prop in FILTER_STATE_TAGS:
            out.append(f"{I}  - tag: {attr}\n")
            out.append(f'{I}    value: "%FILTER_STATE(wasm.{prop}:PLAIN)%"\n')
    else:
        for attr, header in HEADER_TAGS:
            out.append(f"{I}  - tag: {attr}\n")
            out.append(f"{I}    request_header: {{ name: {header} }}\n")
    return "".join(out)


OTEL_PROVIDER = f"""\
{I}  provider:
{I}    name: envoy.tracers.opentelemetry
{I}    typed_config:
{I}      "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
{I}      # OTLP/gRPC to the collector: the cluster `otel_collector` at the end of this file.
{I}      grpc_service:
{I}        envoy_grpc: {{ cluster_name: otel_collector }}
{I}        timeout: 2s
{I}      service_name: llm-router-gateway
"""

DATADOG_PROVIDER = f"""\
{I}  provider:
{I}    name: envoy.tracers.datadog
{I}    typed_config:
{I}      "@type": type.googleapis.com/envoy.config.trace.v3.DatadogConfig
{I}      # The Datadog agent's trace intake: the cluster `datadog_agent` at the end of this file.
{I}      collector_cluster: datadog_agent
{I}      service_name: llm-router-gateway
"""

OTEL_CLUSTER = """\
  # The OpenTelemetry collector (OTLP/gRPC, its default port 4317). The one place that names it:
  # point this address at your collector (an IP literal; use a STRICT_DNS cluster for a name).
  - name: otel_collector
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: otel_collector
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 4317 } } }
"""

DATADOG_CLUSTER = """\
  # The Datadog agent's trace intake (APM, its default port 8126). The one place that names it:
  # the node IP (status.hostIP) for a DaemonSet agent, 127.0.0.1 for a sidecar.
  - name: datadog_agent
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: datadog_agent
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 8126 } } }
"""

MIN_137 = "# min-envoy: 1.37 (custom tags with `value`, which reads the filter's filter state)\n"


def header(name: str, what: str, min_envoy: bool) -> str:
    return (
        f"# GENERATED by scripts/gen-tracing-configs.py from envoy-config/envoy.yaml: do not edit.\n"
        f"# Edit envoy.yaml and run `scripts/gen-tracing-configs.py` (a test checks this file).\n"
        + (MIN_137 if min_envoy else "")
        + "#\n"
        f"# envoy.yaml plus tracing: {what}\n"
        f"# Every request gets a span with the filter's decision as attributes (docs/tracing.md).\n"
        f"# Start it from the repository root: envoy -c envoy-config/{name}\n#\n"
    )


def generate(source: str, provider: str, cluster: str, full: bool, name: str, what: str) -> str:
    if source.count(HCM_ANCHOR) != 1:
        raise SystemExit(f"gen-tracing-configs: envoy.yaml must contain {HCM_ANCHOR.strip()!r} once")
    if "tracing:" in source:
        raise SystemExit("gen-tracing-configs: envoy.yaml already has a tracing block")
    block = f"{I}tracing:\n" + provider + tags_block(full)
    body = source.replace(HCM_ANCHOR, HCM_ANCHOR + block, 1)
    if not body.endswith("\n"):
        body += "\n"
    return header(name, what, full) + body + cluster


def outputs() -> dict[Path, str]:
    src = SOURCE.read_text()
    d = REPO / "envoy-config"
    return {
        d / "envoy-otel.yaml": generate(
            src, OTEL_PROVIDER, OTEL_CLUSTER, True, "envoy-otel.yaml",
            "OpenTelemetry, OTLP/gRPC to `otel_collector`; every attribute (Envoy >= 1.37)."),
        d / "envoy-otel-1.36.yaml": generate(
            src, OTEL_PROVIDER, OTEL_CLUSTER, False, "envoy-otel-1.36.yaml",
            "OpenTelemetry for Envoy 1.36: the attributes from the filter's request headers."),
        d / "envoy-datadog.yaml": generate(
            src, DATADOG_PROVIDER, DATADOG_CLUSTER, True, "envoy-datadog.yaml",
            "Datadog APM via the agent `datadog_agent`; every attribute (Envoy >= 1.37)."),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="fail if a committed file differs")
    args = p.parse_args(argv)
    stale = 0
    for path, text in outputs().items():
        rel = path.relative_to(REPO)
        if args.check:
            if not path.exists() or path.read_text() != text:
                print(f"{rel} is out of date: run scripts/gen-tracing-configs.py", file=sys.stderr)
                stale = 1
        else:
            path.write_text(text)
            print(f"wrote {rel}")
    return stale


if __name__ == "__main__":
    sys.exit(main())
