"""Tests of tests/mock_server.py itself (no Envoy). Instances run on free ephemeral ports, so these
tests do not collide with `make run`."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys

import pytest

import harness
from harness import get, post_chunked, post_json, post_raw, split_bytes, stream_sse

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def mock():
    inst = {"a": harness.free_port(), "b": harness.free_port()}
    with harness.start_mocks(inst, load={"b": (3, 2, 0.25)}, extra_args=["--legacy-kv-metric"]) as m:
        yield m


def test_chat_completion_shape(mock):
    body = {"model": "gpt-4o", "messages": [{"role": "system", "content": "be brief"},
                                            {"role": "user", "content": "hello there world"}]}
    r = post_json(CHAT, body, {"x-tenant-id": "acme"}, port=mock.port("a"))
    assert r.status == 200
    assert r.headers["x-mock-instance"] == "a"
    j = r.json()
    assert j["object"] == "chat.completion"
    assert j["model"] == "gpt-4o"
    msg = j["choices"][0]["message"]
    assert msg["role"] == "assistant" and msg["content"].split() == [f"tok{i}" for i in range(1, 9)]
    assert j["choices"][0]["finish_reason"] == "stop"
    # 2 + 3 words + 4 per message
    assert j["usage"] == {"prompt_tokens": 13, "completion_tokens": 8, "total_tokens": 21}
    assert harness.mock_prompt_tokens(body) == 13
    m = j["mock"]
    assert m["instance"] == "a" and m["path"] == CHAT and m["method"] == "POST"
    assert m["headers"]["x-tenant-id"] == "acme"
    assert m["body"] == body and m["chunked"] is False


def test_completions_and_max_tokens(mock):
    r = post_json("/v1/completions", {"model": "m", "prompt": "one two three", "max_tokens": 3},
                  port=mock.port("a"))
    j = r.json()
    assert j["object"] == "text_completion" and j["model"] == "m"
    assert j["choices"][0]["text"] == "tok1 tok2 tok3 "
    assert j["choices"][0]["finish_reason"] == "length"
    assert j["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}


def test_embeddings(mock):
    r = post_json("/v1/embeddings", {"model": "e", "input": ["a b", "c"]}, port=mock.port("a"))
    j = r.json()
    assert j["object"] == "list" and j["model"] == "e"
    assert [d["index"] for d in j["data"]] == [0, 1]
    assert all(d["object"] == "embedding" and len(d["embedding"]) == 8 for d in j["data"])
    assert j["usage"]["prompt_tokens"] == 3 and j["usage"]["total_tokens"] == 3


def test_invalid_json_still_echoes(mock):
    r = post_raw(CHAT, b"{not json", {"x-llm-model-type": "small"}, port=mock.port("a"))
    assert r.status == 400
    assert r.headers["x-mock-instance"] == "a"
    j = r.json()
    assert j["error"]["code"] == "invalid_json" and j["error"]["param"] is None
    assert j["mock"]["headers"]["x-llm-model-type"] == "small"
    assert j["mock"]["body"] is None and j["mock"]["body_raw"] == "{not json"


def test_other_paths_echo(mock):
    r = get("/healthz?x=1", {"x-foo": "bar"}, port=mock.port("a"))
    assert r.status == 200 and r.headers["x-mock-instance"] == "a"
    assert r.json()["mock"]["path"] == "/healthz?x=1"
    assert r.json()["mock"]["headers"]["x-foo"] == "bar"
    r = post_raw("/v2/other", b"plain text", {"content-type": "text/plain"}, port=mock.port("a"))
    assert r.status == 200 and r.mock["body_raw"] == "plain text"
    r = harness.request("GET", CHAT, port=mock.port("a"))  # wrong method: echo, not an API answer
    assert r.status == 200 and "choices" not in r.json()


def test_forced_status(mock):
    r = post_json(CHAT, {"model": "m", "messages": []}, {"x-mock-status": "503"}, port=mock.port("a"))
    assert r.status == 503
    assert r.json()["error"]["type"] == "server_error"
    assert r.mock["instance"] == "a"


def test_chunked_request_body(mock):
    body = {"model": "m", "messages": [{"role": "user", "content": "x " * 500}]}
    r = post_chunked(CHAT, split_bytes(json.dumps(body), 7), port=mock.port("a"), delay=0.005)
    assert r.status == 200, r.text
    assert r.mock["chunked"] is True and r.mock["body"] == body
    assert r.json()["usage"]["prompt_tokens"] == 504


def test_keep_alive_and_chunked_on_one_connection(mock):
    conn = http.client.HTTPConnection("127.0.0.1", mock.port("a"), timeout=5)
    try:
        for i in range(3):
            conn.request("POST", CHAT, body=iter([b'{"model":', b'"k%d"}' % i]),
                         headers={"content-type": "application/json"}, encode_chunked=True)
            r = conn.getresponse()
            j = json.loads(r.read())
            assert r.status == 200 and j["model"] == f"k{i}" and j["mock"]["chunked"]
        conn.request("POST", CHAT, body=b'{"model":"cl"}', headers={"content-type": "application/json"})
        r = conn.getresponse()
        assert json.loads(r.read())["model"] == "cl"
    finally:
        conn.close()


def test_stream_events_arrive_one_by_one(mock):
    body = {"model": "m", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "hi"}]}
    s = stream_sse(CHAT, body, {"x-mock-token-delay-ms": "60", "x-mock-tokens": "5"},
                   port=mock.port("a"))
    assert s.status == 200
    assert s.headers["content-type"].startswith("text/event-stream")
    assert s.headers.get("transfer-encoding") == "chunked"
    assert s.done
    chunks = s.chunks
    assert len(chunks) == 6  # 5 tokens + usage
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "m" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[4]["choices"][0]["finish_reason"] == "stop"
    assert chunks[5]["choices"] == [] and s.usage == {"prompt_tokens": 5, "completion_tokens": 5,
                                                      "total_tokens": 10}
    assert s.content == "tok1 tok2 tok3 tok4 tok5 "
    # Tokens arrive one by one (60 ms apart), not all at the end. Tolerant of a loaded machine:
    # the spread and the median gap, not every single gap.
    times = [e.t for e in s.events[:5]]
    gaps = sorted(b - a for a, b in zip(times, times[1:]))
    assert times[-1] - times[0] > 0.18, times
    assert gaps[len(gaps) // 2] > 0.03, gaps


def test_stream_without_usage_and_completions_stream(mock):
    s = stream_sse("/v1/completions", {"model": "m", "prompt": "a", "stream": True, "max_tokens": 2},
                   port=mock.port("b"))
    assert s.done and len(s.chunks) == 2 and s.usage is None
    assert s.chunks[0]["object"] == "text_completion" and s.content == "tok1 tok2 "
    assert "usage" not in s.chunks[0]


def test_metrics_and_admin_load(mock):
    text = get("/metrics", port=mock.port("b")).text
    assert "# TYPE vllm:num_requests_waiting gauge" in text
    assert metric(text, "vllm:num_requests_waiting") == 3
    assert metric(text, "vllm:num_requests_running") == 2
    assert metric(text, "vllm:kv_cache_usage_perc") == 0.25
    assert metric(text, "vllm:gpu_cache_usage_perc") == 0.25   # --legacy-kv-metric
    samples = harness.parse_prometheus(text)
    assert ("vllm:num_requests_waiting", {"engine": "0", "model_name": "b"}, 3.0) in samples
    mock.set_load("b", waiting=7, kv_cache=0.9)
    text = get("/metrics", port=mock.port("b")).text
    assert metric(text, "vllm:num_requests_waiting") == 7
    assert metric(text, "vllm:num_requests_running") == 2
    assert metric(text, "vllm:kv_cache_usage_perc") == 0.9
    r = post_json("/admin/load", {"bogus": 1}, port=mock.port("b"))
    assert r.status == 400


def test_legacy_only_kv_metric():
    port = harness.free_port()
    with harness.start_mocks({"old": port}, load={"old": (1, 1, 0.5)}, quiet=True,
                             extra_args=["--kv-metric", "legacy", "--model-name", "old=org/m"]):
        text = get("/metrics", port=port).text
    assert "vllm:kv_cache_usage_perc" not in text
    assert harness.metric_value(text, "vllm:gpu_cache_usage_perc", model_name="org/m") == 0.5


def test_metrics_delay(mock):
    mock.set_load("a", metrics_delay_ms=300)
    try:
        r = get("/metrics", port=mock.port("a"))
        assert r.elapsed >= 0.29
    finally:
        mock.set_load("a", metrics_delay_ms=0)


def test_admin_stats_and_reset(mock):
    mock.reset()
    post_json(CHAT, {"model": "x", "messages": []}, port=mock.port("b"))
    post_json(CHAT, {"model": "x", "messages": []}, port=mock.port("b"))
    post_json("/v1/embeddings", {"model": "y", "input": "z"}, port=mock.port("b"))
    get("/metrics", port=mock.port("b"))
    st = mock.stats("b")
    assert st["total"] == 3
    assert st["by_path"] == {CHAT: 2, "/v1/embeddings": 1}
    assert st["by_model"] == {"x": 2, "y": 1}
    assert st["metrics_scrapes"] == 1
    assert st["recent"][-1]["path"] == "/v1/embeddings"
    assert mock.counts(CHAT) == {"a": 0, "b": 2}


def test_concurrent_requests(mock):
    rs = harness.burst(20, 10, lambda i: post_json(CHAT, {"model": f"m{i}", "messages": []},
                                                   {"x-mock-delay-ms": "100"}, port=mock.port("a")))
    assert [r.json()["model"] for r in rs] == [f"m{i}" for i in range(20)]
    assert max(r.elapsed for r in rs) < 1.5  # served in parallel, not one by one


def test_cli_errors_and_sigterm():
    # A port that is taken: exit code 2 with a clear message.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = subprocess.run([sys.executable, str(harness.MOCK_SERVER), "--instance", f"x=127.0.0.1:{port}"],
                           capture_output=True, text=True, timeout=10)
        assert p.returncode == 2 and "cannot listen" in p.stderr
    # SIGTERM: graceful exit 0.
    port = harness.free_port()
    p = subprocess.Popen([sys.executable, str(harness.MOCK_SERVER), "--instance", f"x=127.0.0.1:{port}",
                          "--quiet"], stderr=subprocess.PIPE, text=True)
    try:
        harness.wait_for_port(port, proc=p)
        p.send_signal(signal.SIGTERM)
        assert p.wait(5) == 0
        assert "stopped" in p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()


def test_request_log_lines(mock):
    post_json(CHAT, {"model": "m", "messages": []}, port=mock.port("a"))
    harness.wait_for(lambda: f"mock a POST {CHAT} 200" in mock.log_text(), timeout=2,
                     what="request log line")


def metric(text: str, name: str) -> float:
    v = harness.metric_value(text, name, default=None)
    assert v is not None, f"{name} missing from:\n{text}"
    return v
