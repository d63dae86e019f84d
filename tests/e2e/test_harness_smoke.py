"""Tests of the e2e harness itself: start/stop of a real Envoy, readiness, port checks, the HTTP
helpers through Envoy, and the Envoy log dump on test failure. Uses a throwaway config (plain
router to a mock, no wasm) on free ephemeral ports, so it runs next to `make run`."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import harness
from harness import post_chunked, post_json, split_bytes, stream_sse

CHAT = "/v1/chat/completions"


def minimal_config(listener_port: int, admin_port: int, upstream_port: int,
                   marker_header: str = "x-smoke") -> str:
    return textwrap.dedent(f"""\
        admin:
          address:
            socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }}
        static_resources:
          listeners:
          - name: main
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {listener_port} }}
            filter_chains:
            - filters:
              - name: envoy.filters.network.http_connection_manager
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                  stat_prefix: smoke
                  route_config:
                    virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes:
                      - match: {{ prefix: "/" }}
                        route: {{ cluster: mock, timeout: 10s }}
                        request_headers_to_add:
                        - header: {{ key: {marker_header}, value: "1" }}
                  http_filters:
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          clusters:
          - name: mock
            type: STATIC
            connect_timeout: 1s
            load_assignment:
              cluster_name: mock
              endpoints:
              - lb_endpoints:
                - endpoint:
                    address:
                      socket_address: {{ address: 127.0.0.1, port_value: {upstream_port} }}
        """)


@pytest.fixture(scope="module")
def smoke():
    """Mock + Envoy on a generated config; yields (envoy, mocks)."""
    up = harness.free_port()
    with harness.start_mocks({"up-1": up}, token_delay_ms=0) as m:
        cfg = harness.write_config(minimal_config(harness.free_port(), harness.free_port(), up),
                                   "smoke.yaml")
        with harness.start_envoy(cfg, concurrency=2) as e:
            yield e, m


def test_config_ports_parser():
    text = minimal_config(10000, 9901, 8101)
    p = harness.write_config(text, "ports.yaml")
    assert harness.config_ports(p) == {"admin": [9901], "listeners": [10000]}
    pj = harness.write_config(json.dumps({
        "admin": {"address": {"socket_address": {"port_value": 9901}}},
        "static_resources": {"listeners": [{"address": {"socket_address": {"port_value": 10000}}}],
                             "clusters": [{"x": {"port_value": 8101}}]}}), "ports.json")
    assert harness.config_ports(pj) == {"admin": [9901], "listeners": [10000]}


def test_envoy_is_ready_and_proxies(smoke):
    envoy, mocks = smoke
    assert envoy.running()
    assert envoy.listeners and envoy.listeners[0][1] == envoy.listener_port
    body = {"model": "m1", "messages": [{"role": "user", "content": "hello"}]}
    r = post_json(CHAT, body, {"x-client": "c"}, port=envoy.listener_port)
    assert r.status == 200, r.text
    assert r.headers["x-mock-instance"] == "up-1"
    assert r.mock["headers"]["x-smoke"] == "1"          # went through Envoy's route
    assert r.mock["headers"]["x-client"] == "c"
    assert r.json()["model"] == "m1"
    assert mocks.stats("up-1")["by_path"].get(CHAT, 0) >= 1


def test_chunked_post_through_envoy(smoke):
    envoy, _ = smoke
    body = {"model": "m2", "messages": [{"role": "user", "content": "a b c d e f"}]}
    r = post_chunked(CHAT, split_bytes(json.dumps(body), 4), port=envoy.listener_port)
    assert r.status == 200, r.text
    assert r.mock["body"] == body and r.mock["chunked"] is True  # Envoy kept it chunked


def test_sse_through_envoy_is_not_buffered(smoke):
    envoy, _ = smoke
    body = {"model": "m", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "hi"}]}
    s = stream_sse(CHAT, body, {"x-mock-token-delay-ms": "80", "x-mock-tokens": "4"},
                   port=envoy.listener_port)
    assert s.status == 200 and s.done
    assert len(s.chunks) == 5 and s.usage["completion_tokens"] == 4
    t = [e.t for e in s.events[:4]]
    gaps = sorted(b - a for a, b in zip(t, t[1:]))
    assert t[3] - t[0] > 0.2, t                  # 3 gaps of 80 ms: Envoy did not buffer
    assert gaps[1] > 0.04, t


def test_admin_stats_and_prometheus(smoke):
    envoy, _ = smoke
    post_json("/x", {}, port=envoy.listener_port)
    stats = harness.wait_for(
        lambda: (s := envoy.stats()).get("cluster.mock.upstream_rq_total", 0) >= 1 and s,
        what="cluster.mock.upstream_rq_total")
    assert stats["http.smoke.downstream_rq_total"] >= 1
    only = harness.admin_stats(filter=r"^cluster\.mock\.upstream_rq_total$", port=envoy.admin_port)
    assert list(only) == ["cluster.mock.upstream_rq_total"]
    text = envoy.prometheus()
    v = harness.metric_value(text, "envoy_cluster_upstream_rq_total", envoy_cluster_name="mock")
    assert v >= 1


def test_burst_through_envoy(smoke):
    envoy, mocks = smoke
    before = mocks.stats("up-1")["by_path"].get("/burst", 0)
    rs = harness.burst(40, 8, lambda i: harness.get("/burst", port=envoy.listener_port))
    assert [r.status for r in rs] == [200] * 40
    assert mocks.stats("up-1")["by_path"]["/burst"] - before == 40


def test_log_is_written(smoke):
    envoy, _ = smoke
    envoy.wait_log(r"starting main dispatch loop", timeout=5)


def test_port_in_use_is_reported():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        cfg = harness.write_config(minimal_config(busy, harness.free_port(), 1), "busy.yaml")
        with pytest.raises(harness.PortInUse) as ei:
            with harness.start_envoy(cfg):
                pass
        msg = str(ei.value)
        assert f"127.0.0.1:{busy}" in msg and f"pid {os.getpid()}" in msg and "make run" in msg


def test_bad_config_fails_fast_with_log():
    cfg = harness.write_config("static_resources: {listeners: [{name: x, bogus_field: 1}]}\n",
                               "bad.yaml")
    with pytest.raises(harness.EnvoyStartError) as ei:
        with harness.start_envoy(cfg, check_ports=False, timeout=20):
            pass
    assert "exited with code" in str(ei.value)
    assert "bogus_field" in str(ei.value)


def test_failure_dumps_envoy_log(tmp_path):
    """A failing test that used Envoy gets Envoy's log in its report (inner pytest run)."""
    here = Path(__file__).resolve().parent
    shutil.copy(here / "conftest.py", tmp_path / "conftest.py")
    up, listener, admin = harness.free_port(), harness.free_port(), harness.free_port()
    (tmp_path / "smoke.yaml").write_text(minimal_config(listener, admin, up))
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(f"""\
        import sys
        import harness

        def test_fails(envoy_factory, mocks_factory, process_factory):
            process_factory([sys.executable, "-c", "print('hello from helper', flush=True); "
                             "import time; time.sleep(30)"], "helper")
            mocks_factory({{"inner-1": {up}}})
            envoy = envoy_factory({str(tmp_path / "smoke.yaml")!r})
            r = harness.get("/inner-path", port={listener})
            assert r.status == 599, "deliberate failure"

        def test_passes():
            pass
        """))
    env = dict(os.environ, PYTHONPATH=str(here))
    env.pop("E2E_KEEP_LOGS", None)
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "--rootdir", str(tmp_path), str(tmp_path / "test_inner.py")],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    assert "1 failed, 1 passed" in out, out
    assert "Envoy log (smoke.yaml" in out, out
    assert "starting main dispatch loop" in out, out
    assert "mock servers log" in out and "mock inner-1 GET /inner-path 200" in out, out
    assert "helper log" in out and "hello from helper" in out, out


def test_redis_is_started_killed_and_restarted_empty_on_the_same_port(redis_factory):
    redis = redis_factory()
    port = redis.port
    assert redis.command("PING") == "PONG"
    assert redis.command("HSET", "llm_router:q:{smoke}:requests", "lvl", 42, "ts", 7) == 2
    assert redis.hgetall("llm_router:q:{smoke}:requests") == {"lvl": "42", "ts": "7"}
    # No persistence configured: nothing written to disk by a save or an append-only file.
    assert redis.command("CONFIG", "GET", "save") == ["save", ""]
    assert redis.command("CONFIG", "GET", "appendonly") == ["appendonly", "no"]
    old_pid = redis.pid
    redis.kill()
    assert not redis.running()
    with pytest.raises(OSError):
        harness.resp_command(port, "PING", timeout=0.5)
    redis.restart()
    assert redis.port == port and redis.pid != old_pid
    assert redis.command("PING") == "PONG"
    assert redis.hgetall("llm_router:q:{smoke}:requests") == {}  # a restart starts empty
    with pytest.raises(harness.RedisError):
        redis.command("NOSUCHCOMMAND")


def test_quota_service_missing_binary_fails(tmp_path, monkeypatch, redis_factory):
    redis = redis_factory()
    monkeypatch.setattr(harness, "QUOTA_BIN", tmp_path / "no-such-binary")
    with pytest.raises(FileNotFoundError):
        with harness.start_quota(redis):
            pass
