"""End-to-end tests of prefix-cache affinity (`endpoints.prefix`): a real Envoy (envoy.yaml with
`"prefix": {"block_bytes": 64}` added, `--concurrency 2`, so turns reach both workers) with
dist/llm_router.wasm, the real sidecar scraping the three small-pool mock servers of
test_endpoints.py and pushing snapshots.

A multi-turn conversation (each turn resends the growing history) sticks to one mock server while
load allows, also against a small load difference (counted in
`llm_router_prefix_affinity_changed_total{pool}`), and moves when that server is saturated; the
match lengths reach `llm_router_prefix_match_tokens{pool}`.

Build first: `make build` and `cargo build --release -p llm-router-sidecar`.
"""

from __future__ import annotations

import time

import pytest

import harness
from harness import post_json, wait_for
from test_endpoints import (ADDR, CHAT, ENV, INTERVAL_MS, SIDECAR_BIN, SMALL, landed, named,
                            set_loads, sidecar_config, start_sidecar)

MATCH = "llm_router_prefix_match_tokens"
CHANGED = "llm_router_prefix_affinity_changed_total"
PREFIX_REPLACE = {'"max_kv_cache": 0.8\n': '"max_kv_cache": 0.8, "prefix": {"block_bytes": 64}\n'}
IDLE = {n: (0, 0, 0.1) for n in SMALL}


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
def gateway(envoy_factory, small_mocks, process_factory, tmp_path):
    """Envoy with prefix affinity on, idle mocks, the sidecar pushing every INTERVAL_MS."""
    set_loads(small_mocks, IDLE)
    small_mocks.reset()
    cfg = harness.config_variant(harness.DEFAULT_CONFIG, PREFIX_REPLACE, "envoy-prefix.yaml")
    envoy = envoy_factory(cfg, env=ENV)
    start_sidecar(process_factory, sidecar_config(tmp_path, list(ADDR.values())))
    return envoy


def conversation(session: int, turns: int) -> dict:
    messages = [{"role": "system", "content":
                 f"You are support assistant {session}. Answer in two short sentences."}]
    for t in range(turns):
        if t:
            messages.append({"role": "assistant", "content":
                             f"Answer {t} of session {session}: the second charge is a prorated "
                             "invoice for the removed seats; a refund of the difference is due."})
        messages.append({"role": "user", "content":
                         f"Question {t} of session {session}: why was the card charged twice "
                         "this month, and will the difference be refunded?"})
    return {"model": "anything", "messages": messages}


def turn(session: int, turns: int) -> str:
    r = post_json(CHAT, conversation(session, turns))
    where = landed(r)
    assert named(r) == ADDR[where], r
    return where


def metric(name: str) -> float:
    return harness.metric_value(harness.prometheus(), name, pool="small")


def settle() -> None:
    """Long enough for the sidecar to scrape and push a load change (~2 intervals)."""
    time.sleep(2.5 * INTERVAL_MS / 1000)


def test_a_conversation_sticks_to_one_server_while_load_allows(gateway, small_mocks):
    firsts = set()
    for session in range(4):
        first = turn(session, 1)
        firsts.add(first)
        got = [turn(session, t) for t in range(2, 7)]
        assert got == [first] * 5, (session, first, got)
    print("first turns landed on:", sorted(firsts))
    # Matches were recorded (4 sessions x 6 turns, both workers' histograms summed).
    wait_for(lambda: metric(MATCH + "_count") >= 24, what=f"{MATCH}_count >= 24")
    assert metric(MATCH + "_sum") > 0


def test_a_conversation_moves_when_its_server_is_saturated(gateway, small_mocks):
    first = turn(1, 1)
    assert turn(1, 2) == first
    # Its server is a little busier than the others: the conversation stays (affinity decided).
    changed_before = metric(CHANGED)
    set_loads(small_mocks, {**IDLE, first: (1, 0, 0.2)})
    settle()
    assert turn(1, 3) == first
    wait_for(lambda: metric(CHANGED) >= changed_before + 1, what=f"{CHANGED} += 1")
    # Saturated (queue at max_queue 5): the next turn goes elsewhere, and stays there.
    set_loads(small_mocks, {**IDLE, first: (5, 0, 0.2)})
    settle()
    moved = turn(1, 4)
    assert moved != first
    assert turn(1, 5) == moved
    # The first server is free again: the conversation stays where its latest turns went.
    set_loads(small_mocks, IDLE)
    settle()
    assert [turn(1, t) for t in (6, 7)] == [moved, moved]
