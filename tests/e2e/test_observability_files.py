"""The observability files against the filter's metric catalogue (no Envoy needed).

- observability/grafana/llm-router.json and observability/prometheus/llm-router-alerts.yaml use
  only metrics that filter/src/metrics/mod.rs defines (counters by their name, histograms as
  _bucket/_sum/_count), and only label names those metrics have: in `{...}` selectors,
  `by/without/on/ignoring (...)`, Grafana legends (`{{model}}`), alert templates
  (`$labels.model`) and `label_values(...)`. Renaming a metric or a label fails here.
- envoy-config/envoy-dogstatsd.yaml is exactly what scripts/gen-dogstatsd-config.py makes of
  envoy.yaml.
"""

from __future__ import annotations

import importlib.util
import json
import re

import pytest
import yaml

import harness

REPO = harness.REPO_ROOT
METRICS_RS = REPO / "filter" / "src" / "metrics" / "mod.rs"
DASHBOARD = REPO / "observability" / "grafana" / "llm-router.json"
ALERTS = REPO / "observability" / "prometheus" / "llm-router-alerts.yaml"
GENERATOR = REPO / "scripts" / "gen-dogstatsd-config.py"

METRIC_REF = re.compile(r"\b(llm_router_[a-z_]+)\b")
HIST_SUFFIXES = ("_bucket", "_sum", "_count")


# ---------------------------------------------------------------------------------------------
# The catalogue, read from the Rust source


def _fn_body(src: str, signature: str) -> str:
    """Text of the Rust function whose signature contains `signature` (up to its closing brace)."""
    i = src.index(signature)
    i = src.index("{", i)
    depth = 0
    for j in range(i, len(src)):
        if src[j] == "{":
            depth += 1
        elif src[j] == "}":
            depth -= 1
            if depth == 0:
                return src[i + 1:j]
    raise ValueError(f"unbalanced braces after {signature!r}")


def _arms(body: str) -> list[tuple[list[str], str]]:
    """`A::X | A::Y => value,` match arms as ([variants], value text)."""
    out = []
    for m in re.finditer(r"((?:\w+::\w+\s*\|\s*)*\w+::\w+)\s*=>\s*(.+?)(?:,\s*$|\n\s*\})",
                         body, re.M | re.S):
        variants = [v.split("::")[1].strip() for v in m.group(1).split("|")]
        out.append((variants, m.group(2).strip()))
    return out


def load_catalogue() -> dict[str, dict]:
    """{name: {"kind": "counter"|"histogram", "labels": set}} from filter/src/metrics/mod.rs."""
    src = METRICS_RS.read_text()
    names = {}
    for variants, value in _arms(_fn_body(src, "pub fn base(self)")):
        m = re.fullmatch(r'"(llm_router_[a-z_]+)"', value)
        assert m, f"base(): unexpected arm {value!r}"
        for v in variants:
            names[v] = m.group(1)
    histograms = set()
    for variants, value in _arms(_fn_body(src, "pub fn kind(self)")):
        if "Histogram" in value:
            histograms.update(variants)
    label_name = {}
    for variants, value in _arms(_fn_body(src, "fn name(self) -> &'static str")):
        m = re.fullmatch(r'"([a-z_]+)"', value)
        assert m, f"Label::name(): unexpected arm {value!r}"
        for v in variants:
            label_name[v] = m.group(1)
    labels = {}
    for variants, value in _arms(_fn_body(src, "fn labels(self)")):
        m = re.fullmatch(r"&\[([\w,\s]*)\]", value)
        assert m, f"labels(): unexpected arm {value!r}"
        for v in variants:
            labels[v] = {label_name[x.strip()] for x in m.group(1).split(",") if x.strip()}
    assert names and set(names) == set(labels), (names, labels)
    return {names[v]: {"kind": "histogram" if v in histograms else "counter", "labels": labels[v]}
            for v in names}


CATALOGUE = load_catalogue()


def test_catalogue_parse_matches_spec():
    """The parser reads what SPEC.md's metric table says (a parser bug would make the other
    tests here vacuous)."""
    assert CATALOGUE["llm_router_requests_total"] == {"kind": "counter",
                                                      "labels": {"tier", "model", "status"}}
    assert CATALOGUE["llm_router_request_duration_milliseconds"] == {"kind": "histogram",
                                                                     "labels": {"model"}}
    assert CATALOGUE["llm_router_endpoint_fallback_total"]["labels"] == {"pool", "reason"}
    assert CATALOGUE["llm_router_invalid_body_total"]["labels"] == {"reason"}
    assert CATALOGUE["llm_router_global_calls_total"]["labels"] == {"method", "result"}
    assert CATALOGUE["llm_router_global_outage"]["labels"] == {"action"}
    assert CATALOGUE["llm_router_prefix_affinity_changed_total"]["labels"] == {"pool"}
    assert len(CATALOGUE) == 17
    assert {k for k, v in CATALOGUE.items() if v["kind"] == "histogram"} == {
        "llm_router_prompt_tokens_estimated", "llm_router_request_duration_milliseconds",
        "llm_router_time_to_first_token_milliseconds", "llm_router_prefix_match_tokens"}


def series_labels(ref: str) -> set[str]:
    """Label names of an exported series name; AssertionError if the catalogue has no such series."""
    if ref in CATALOGUE:
        assert CATALOGUE[ref]["kind"] == "counter", \
            f"{ref} is a histogram: use {ref}_bucket, _sum or _count"
        return set(CATALOGUE[ref]["labels"])
    for suffix in HIST_SUFFIXES:
        base = ref[: -len(suffix)]
        if ref.endswith(suffix) and CATALOGUE.get(base, {}).get("kind") == "histogram":
            return set(CATALOGUE[base]["labels"]) | ({"le"} if suffix == "_bucket" else set())
    raise AssertionError(f"{ref} is not a metric of filter/src/metrics/mod.rs")


# ---------------------------------------------------------------------------------------------
# PromQL checks


GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
SELECTOR = re.compile(r"\b(llm_router_[a-z_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
LABEL_VALUES = re.compile(r"label_values\(\s*(llm_router_[a-z_]+)[^,]*,\s*([A-Za-z_]\w*)\s*\)")


def check_expr(expr: str, where: str, templates: list[str] = ()) -> set[str]:
    """Checks one PromQL expression; returns the metric names it uses."""
    refs = set(METRIC_REF.findall(expr))
    assert refs, f"{where}: no llm_router_* metric in {expr!r}"
    allowed: set[str] = set()
    for ref in refs:
        try:
            allowed |= series_labels(ref)
        except AssertionError as e:
            raise AssertionError(f"{where}: {e}\n  in {expr!r}") from None
    for metric, body in SELECTOR.findall(expr):
        for label in MATCHER.findall(body):
            assert label in series_labels(metric), \
                f"{where}: {metric} has no label {label!r} (labels: {sorted(series_labels(metric))})"
    for group in GROUPING.findall(expr):
        for label in (x.strip() for x in group.split(",")):
            if label:
                assert label in allowed, \
                    f"{where}: grouping label {label!r} is not a label of {sorted(refs)}"
    for text in templates:
        for label in re.findall(r"\{\{\s*\$?labels\.(\w+)\s*\}\}|\$labels\.(\w+)|\{\{\s*(\w+)\s*\}\}",
                                text):
            label = next(x for x in label if x)
            if label in ("value",):
                continue
            assert label in allowed, f"{where}: template uses label {label!r}, not a label of {sorted(refs)}"
    return refs


def dashboard_exprs(dash: dict) -> list[tuple[str, str, list[str]]]:
    """(where, expr, [legendFormat]) of every panel target, nested rows included."""
    out = []

    def walk(panels, path):
        for p in panels:
            title = p.get("title", "?")
            for t in p.get("targets", []):
                if "expr" in t:
                    out.append((f"panel {path}{title!r} {t.get('refId')}", t["expr"],
                                [t.get("legendFormat", "")]))
            walk(p.get("panels", []), f"{path}{title!r} / ")

    walk(dash.get("panels", []), "")
    return out


def test_dashboard_is_valid_and_uses_catalogue_metrics():
    dash = json.loads(DASHBOARD.read_text())
    assert dash.get("title") and dash.get("uid")
    exprs = dashboard_exprs(dash)
    assert len(exprs) >= 10
    used = set()
    for where, expr, legends in exprs:
        used |= check_expr(expr, where, legends)
    # Template variables: label_values(metric, label).
    for var in dash.get("templating", {}).get("list", []):
        q = var.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        for metric, label in LABEL_VALUES.findall(q):
            assert label in series_labels(metric), f"variable {var['name']}: {metric} has no {label}"
    # Every metric of the catalogue is on the dashboard.
    bases = {re.sub(r"_(bucket|sum|count)$", "", u) if u not in CATALOGUE else u for u in used}
    assert set(CATALOGUE) <= bases, f"not on the dashboard: {sorted(set(CATALOGUE) - bases)}"
    # Panels the dashboard promises.
    titles = " | ".join(p.get("title", "") for p in dash["panels"]).lower()
    for word in ("request rate", "error", "p50", "p99", "first token", "tokens/s",
                 "rate-limited", "invalid", "endpoint picks", "shed", "fallback"):
        assert word in titles, f"no panel about {word!r}"


def test_alert_rules_are_valid_and_use_catalogue_metrics():
    doc = yaml.safe_load(ALERTS.read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), names
    for r in rules:
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, r
        assert r["labels"]["severity"] in ("critical", "warning", "info"), r
        assert r["annotations"].get("summary"), r["alert"]
        assert re.fullmatch(r"\d+[smh]", r.get("for", "0s")), r["alert"]
        check_expr(r["expr"], f"alert {r['alert']}", list(r["annotations"].values()))
    used = {m for r in rules for m in METRIC_REF.findall(r["expr"])}
    # The alerts the observability README promises.
    for metric in ("llm_router_requests_total", "llm_router_request_duration_milliseconds_bucket",
                   "llm_router_rate_limited_total", "llm_router_endpoint_fallback_total",
                   "llm_router_shed_total"):
        assert metric in used, f"no alert on {metric}"


def test_checker_catches_renames():
    """The checks above fail on an unknown metric, a bare histogram name and an unknown label."""
    with pytest.raises(AssertionError):
        check_expr("rate(llm_router_request_total[5m])", "t")
    with pytest.raises(AssertionError):
        check_expr("rate(llm_router_request_duration_milliseconds[5m])", "t")
    with pytest.raises(AssertionError):
        check_expr('rate(llm_router_requests_total{modle="x"}[5m])', "t")
    with pytest.raises(AssertionError):
        check_expr("sum by (tenant) (rate(llm_router_requests_total[5m]))", "t")
    with pytest.raises(AssertionError):
        check_expr("sum by (model) (rate(llm_router_tokens_total[5m]))", "t", ["{{tier}}"])
    check_expr("sum by (le, model) (rate(llm_router_request_duration_milliseconds_bucket[5m]))",
               "t", ["{{model}}"])


# ---------------------------------------------------------------------------------------------
# DogStatsD config


def _generator():
    spec = importlib.util.spec_from_file_location("gen_dogstatsd_config", GENERATOR)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_dogstatsd_config_is_generated_from_envoy_yaml():
    gen = _generator()
    committed = (REPO / "envoy-config" / "envoy-dogstatsd.yaml").read_text()
    assert committed == gen.generate(harness.DEFAULT_CONFIG.read_text()), \
        "envoy-config/envoy-dogstatsd.yaml is out of date: run scripts/gen-dogstatsd-config.py"
    # Everything but the sink is identical.
    base = yaml.safe_load(harness.DEFAULT_CONFIG.read_text())
    dog = yaml.safe_load(committed)
    sinks = dog.pop("stats_sinks")
    assert dog == base
    assert [s["name"] for s in sinks] == ["envoy.stat_sinks.dog_statsd"]
    sa = sinks[0]["typed_config"]["address"]["socket_address"]
    assert (sa["address"], sa["port_value"]) == ("127.0.0.1", 8125)
    assert sinks[0]["typed_config"]["@type"].endswith("envoy.config.metrics.v3.DogStatsdSink")
