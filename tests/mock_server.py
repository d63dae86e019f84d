#!/usr/bin/env python3
"""Mock OpenAI-compatible model server (vLLM-like) for llm-router's e2e tests and `make run`.

One process serves one or more named instances, each on its own address:

    python3 tests/mock_server.py \
        --instance small-1=127.0.0.1:8101 --instance small-2=127.0.0.1:8102 \
        --instance large-1=127.0.0.1:8201 --token-delay-ms 20 --load small-1=3,2,0.5

Endpoints of every instance:

  POST /v1/chat/completions, /v1/completions, /v1/embeddings
      OpenAI response shape (streamed as SSE when the body has "stream": true). `model` is the
      model of the request body. Extra top-level field "mock" echoes what the instance received:
      {"instance", "method", "path", "headers" (lowercased), "body" (parsed JSON or null),
       "body_raw" (only when not JSON), "body_bytes", "chunked" (request body was chunked)}.
      An invalid JSON body answers 400 in OpenAI's error shape, still with the echo.
  GET  /metrics        vLLM-style Prometheus gauges with labels {engine="0",model_name="..."}:
                       vllm:num_requests_waiting, vllm:num_requests_running and the KV cache
                       usage as vllm:kv_cache_usage_perc (default), vllm:gpu_cache_usage_perc
                       (--kv-metric legacy, older vLLM) or both (--legacy-kv-metric).
  POST /admin/load     {"waiting": n, "running": n, "kv_cache": f, "metrics_delay_ms": n}
                       (any subset) sets the load this instance reports.
  GET  /admin/stats    {"instance", "total", "by_path", "by_model", "metrics_scrapes",
                        "inflight", "load", "recent": [last requests]}
  POST /admin/reset    zeroes the counters of /admin/stats.
  anything else        200 JSON {"mock": {...echo...}} (pass-through checks).

Per-request control headers (handy in tests):
  x-mock-status: 503        answer that status with an OpenAI-style error JSON
  x-mock-tokens: N          completion length (default --tokens)
  x-mock-token-delay-ms: N  delay between streamed tokens (default --token-delay-ms)
  x-mock-delay-ms: N        delay before the response starts
  x-mock-obs-text-header: NAME
                            the response header NAME (e.g. content-type, or a new one) ends in
                            the obs-text bytes 0xA1 0xB1 (not UTF-8; HTTP allows them)
  x-mock-echo-raw: 1        the echo always carries "body_raw" (the bytes as received, decoded
                            as UTF-8 with replacement), e.g. to see duplicated JSON keys

Streams: one `data:` chunk per token (the first also carries role and the "mock" echo, the last
the finish_reason), then with stream_options.include_usage a chunk with "choices": [] and usage,
then `data: [DONE]`; each event is flushed on its own.
--count-inflight adds the requests in progress to vllm:num_requests_running.

A non-streaming completion takes tokens * token-delay-ms before it answers, like a real server.
Completion length is min(tokens, max_tokens or max_completion_tokens of the body);
finish_reason is "length" when max_tokens cut it, else "stop".

Prompt tokens (usage.prompt_tokens) are deterministic: whitespace-separated words of every text
in the prompt, plus 4 per chat message; token-id arrays count one per id. See `count_prompt_tokens`.

Only the Python standard library is used.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
import time
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
DEFAULT_MODEL_NAMES = {"small": "llama-3.1-8b-instruct", "large": "llama-3.1-70b-instruct"}
MAX_BODY = 64 * 1024 * 1024
OBS_TEXT = "\xa1\xb1"  # sent as the bytes A1 B1 (http.server encodes header lines as latin-1)
EMBEDDING_DIM = 8


# ---------------------------------------------------------------------------------------------
# Token counting (deterministic, importable by tests)


def _words(text) -> int:
    if isinstance(text, str):
        return len(text.split())
    if isinstance(text, list):
        # A list of token ids counts one per id; a list of strings or content parts, summed.
        if text and all(isinstance(x, int) for x in text):
            return len(text)
        total = 0
        for part in text:
            if isinstance(part, dict):
                total += _words(part.get("text", ""))
            else:
                total += _words(part)
        return total
    return 0


def count_prompt_tokens(body) -> int:
    """Deterministic prompt token count of an OpenAI request body."""
    if not isinstance(body, dict):
        return 0
    total = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        for msg in messages:
            total += 4
            if isinstance(msg, dict):
                total += _words(msg.get("content"))
    for key in ("prompt", "input"):
        if key in body:
            total += _words(body[key])
    return total


def completion_length(body, default_tokens: int) -> tuple[int, str]:
    """(completion tokens, finish_reason) for a request body."""
    n = max(0, default_tokens)
    limit = None
    if isinstance(body, dict):
        for key in ("max_completion_tokens", "max_tokens"):
            v = body.get(key)
            if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
                limit = v
                break
    if limit is not None and limit < n:
        return limit, "length"
    return n, "stop"


def token_text(i: int) -> str:
    return f"tok{i + 1} "


# ---------------------------------------------------------------------------------------------
# Instance state


class Instance:
    def __init__(self, name: str, host: str, port: int, model_name: str, args):
        self.name = name
        self.host = host
        self.port = port
        self.model_name = model_name
        self.args = args
        self.lock = threading.Lock()
        self.waiting = 0
        self.running = 0
        self.kv_cache = 0.0
        self.metrics_delay_ms = 0
        self.inflight = 0
        self.seq = 0
        self.reset_stats()

    def reset_stats(self):
        with getattr(self, "lock", threading.Lock()):
            self.total = 0
            self.by_path = Counter()
            self.by_model = Counter()
            self.metrics_scrapes = 0
            self.recent = deque(maxlen=50)

    def next_id(self) -> int:
        with self.lock:
            self.seq += 1
            return self.seq

    def load(self) -> dict:
        return {
            "waiting": self.waiting,
            "running": self.running,
            "kv_cache": self.kv_cache,
            "metrics_delay_ms": self.metrics_delay_ms,
        }

    def stats(self) -> dict:
        with self.lock:
            return {
                "instance": self.name,
                "address": f"{self.host}:{self.port}",
                "total": self.total,
                "by_path": dict(self.by_path),
                "by_model": dict(self.by_model),
                "metrics_scrapes": self.metrics_scrapes,
                "inflight": self.inflight,
                "load": self.load(),
                "recent": list(self.recent),
            }

    def metrics_text(self) -> str:
        with self.lock:
            waiting, running, kv = self.waiting, self.running, self.kv_cache
            if self.args.count_inflight:
                running += self.inflight
        # vLLM v1 labels every series with the engine index and the served model name.
        label = '{engine="0",model_name="%s"}' % self.model_name
        out = []

        def gauge(name, help_text, value):
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} gauge")
            out.append(f"{name}{label} {value}")

        gauge("vllm:num_requests_running", "Number of requests in model execution batches.", float(running))
        gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", float(waiting))
        if self.args.kv_metric in ("new", "both"):
            gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", float(kv))
        if self.args.kv_metric in ("legacy", "both"):
            gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.", float(kv))
        out.append("# HELP vllm:request_success_total Count of successfully processed requests.")
        out.append("# TYPE vllm:request_success_total counter")
        with self.lock:
            served = self.total
        out.append('vllm:request_success_total{engine="0",finished_reason="stop",model_name="%s"} %s'
                   % (self.model_name, float(served)))
        return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# HTTP handler


class BadRequest(Exception):
    pass


def _int_header(headers, name, default):
    v = headers.get(name)
    if v is None:
        return default
    try:
        return int(v.strip())
    except ValueError:
        return default


def error_body(status: int, message: str, code=None, err_type=None) -> dict:
    if err_type is None:
        err_type = "invalid_request_error" if 400 <= status < 500 else "server_error"
    return {"error": {"message": message, "type": err_type, "param": None,
                      "code": code if code is not None else str(status)}}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mock-vllm/1.0"
    instance: Instance  # set on the per-instance subclass

    # -- plumbing ------------------------------------------------------------------------------

    def version_string(self):
        return self.server_version

    def setup(self):
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def log_request(self, code="-", size="-"):
        if self.instance.args.quiet:
            return
        sys.stderr.write(f"mock {self.instance.name} {self.command} {self.path} {code}\n")
        sys.stderr.flush()

    def log_message(self, format, *args):  # noqa: A002 - signature from the base class
        if self.instance.args.quiet:
            return
        sys.stderr.write(f"mock {self.instance.name}: {format % args}\n")
        sys.stderr.flush()

    def read_body(self) -> tuple[bytes, bool]:
        te = (self.headers.get("transfer-encoding") or "").lower()
        if "chunked" in te:
            return self._read_chunked(), True
        length = self.headers.get("content-length")
        if length is None:
            return b"", False
        try:
            n = int(length)
        except ValueError:
            raise BadRequest("bad content-length")
        if n < 0 or n > MAX_BODY:
            raise BadRequest("content-length out of range")
        data = b""
        while len(data) < n:
            part = self.rfile.read(n - len(data))
            if not part:
                raise BadRequest("body shorter than content-length")
            data += part
        return data, False

    def _read_chunked(self) -> bytes:
        parts = []
        size_total = 0
        while True:
            line = self.rfile.readline(65537)
            if not line:
                raise BadRequest("connection closed inside chunked body")
            size_str = line.split(b";", 1)[0].strip()
            try:
                size = int(size_str, 16)
            except ValueError:
                raise BadRequest(f"bad chunk size line {line!r}")
            if size == 0:
                # Trailers until an empty line.
                while True:
                    t = self.rfile.readline(65537)
                    if not t or t in (b"\r\n", b"\n"):
                        break
                return b"".join(parts)
            size_total += size
            if size_total > MAX_BODY:
                raise BadRequest("chunked body too large")
            chunk = self.rfile.read(size)
            if len(chunk) != size:
                raise BadRequest("connection closed inside chunk")
            parts.append(chunk)
            self.rfile.readline(65537)  # CRLF after the chunk data

    def send_header(self, keyword, value):
        name = getattr(self, "obs_text_header", "")
        if name and keyword.lower() == name:
            value = f"{value}; {OBS_TEXT}"
            self.obs_text_sent = True
        super().send_header(keyword, value)

    def end_headers(self):
        name = getattr(self, "obs_text_header", "")
        if name and not getattr(self, "obs_text_sent", False):
            self.send_header(name, "mock")
        super().end_headers()

    def send_json(self, status: int, obj, extra_headers=None):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("x-mock-instance", self.instance.name)
        for k, v in (extra_headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_text(self, status: int, text: str, content_type: str):
        data = text.encode()
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.send_header("x-mock-instance", self.instance.name)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def write_chunk(self, data: bytes):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    # -- dispatch ------------------------------------------------------------------------------

    def _handle(self):
        inst = self.instance
        try:
            raw, chunked = self.read_body()
        except BadRequest as e:
            self.close_connection = True
            self.send_json(400, error_body(400, f"mock: unreadable request body: {e}"),
                           {"connection": "close"})
            return
        path = self.path.split("?", 1)[0]
        headers = {}
        for k, v in self.headers.items():
            k = k.lower()
            headers[k] = f"{headers[k]},{v}" if k in headers else v
        self.obs_text_header = headers.get("x-mock-obs-text-header", "").strip().lower()
        self.obs_text_sent = False

        if path.startswith("/admin/"):
            return self._admin(path, raw)
        if path == "/metrics" and self.command == "GET":
            with inst.lock:
                inst.metrics_scrapes += 1
                delay = inst.metrics_delay_ms
            if delay > 0:
                time.sleep(delay / 1000.0)
            return self.send_text(200, inst.metrics_text(), "text/plain; version=0.0.4; charset=utf-8")

        body = None
        parse_error = None
        if raw:
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as e:
                parse_error = str(e)
        echo = {
            "instance": inst.name,
            "method": self.command,
            "path": self.path,
            "headers": headers,
            "body": body,
            "body_bytes": len(raw),
            "chunked": chunked,
        }
        if parse_error is not None or headers.get("x-mock-echo-raw") == "1":
            echo["body_raw"] = raw.decode("utf-8", "replace")[:65536]
        model = body.get("model") if isinstance(body, dict) else None
        with inst.lock:
            inst.total += 1
            inst.by_path[path] += 1
            if isinstance(model, str):
                inst.by_model[model] += 1
            inst.recent.append({"method": self.command, "path": self.path, "model": model,
                                "headers": headers, "t": time.time()})
            inst.inflight += 1
        try:
            self._serve(path, headers, body, parse_error, echo)
        finally:
            with inst.lock:
                inst.inflight -= 1

    def _serve(self, path, headers, body, parse_error, echo):
        delay_ms = _int_header(headers, "x-mock-delay-ms", 0)
        if delay_ms > 0:
            time.sleep(delay_ms / 1000.0)
        status = _int_header(headers, "x-mock-status", 200)
        if status != 200 and 100 <= status <= 599:
            err = error_body(status, f"mock: forced status {status}",
                             err_type="rate_limit_error" if status == 429 else None)
            err["mock"] = echo
            return self.send_json(status, err)

        if self.command != "POST" or path not in API_PATHS:
            return self.send_json(200, {"mock": echo})

        if parse_error is not None:
            err = error_body(400, f"mock: request body is not valid JSON: {parse_error}",
                             code="invalid_json", err_type="BadRequestError")
            err["mock"] = echo
            return self.send_json(400, err)
        if not isinstance(body, dict):
            err = error_body(400, "mock: request body must be a JSON object",
                             code="invalid_json", err_type="BadRequestError")
            err["mock"] = echo
            return self.send_json(400, err)

        tokens = _int_header(headers, "x-mock-tokens", self.instance.args.tokens)
        token_delay = _int_header(headers, "x-mock-token-delay-ms", self.instance.args.token_delay_ms)
        model = body.get("model") if isinstance(body.get("model"), str) else self.instance.model_name
        prompt_tokens = count_prompt_tokens(body)

        if path == "/v1/embeddings":
            return self._embeddings(body, model, prompt_tokens, echo)
        n, finish = completion_length(body, tokens)
        if body.get("stream") is True:
            return self._stream(path, body, model, prompt_tokens, n, finish, token_delay, echo)
        if token_delay > 0 and n > 0:
            time.sleep(token_delay * n / 1000.0)
        text = "".join(token_text(i) for i in range(n))
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n,
                 "total_tokens": prompt_tokens + n}
        rid = self.instance.next_id()
        if path == "/v1/chat/completions":
            resp = {
                "id": f"chatcmpl-mock-{self.instance.name}-{rid}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "logprobs": None, "finish_reason": finish}],
                "usage": usage,
            }
        else:
            resp = {
                "id": f"cmpl-mock-{self.instance.name}-{rid}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
                "usage": usage,
            }
        resp["mock"] = echo
        self.send_json(200, resp)

    def _embeddings(self, body, model, prompt_tokens, echo):
        inp = body.get("input")
        if isinstance(inp, list) and inp and not all(isinstance(x, int) for x in inp):
            count = len(inp)
        else:
            count = 1
        data = []
        for i in range(count):
            vec = [round(((i + 1) * (j + 3) % 17) / 17.0, 6) for j in range(EMBEDDING_DIM)]
            data.append({"object": "embedding", "index": i, "embedding": vec})
        resp = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 0,
                      "total_tokens": prompt_tokens},
            "mock": echo,
        }
        self.send_json(200, resp)

    def _stream(self, path, body, model, prompt_tokens, n, finish, token_delay, echo):
        chat = path == "/v1/chat/completions"
        opts = body.get("stream_options")
        include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
        rid = self.instance.next_id()
        cid = f"{'chatcmpl' if chat else 'cmpl'}-mock-{self.instance.name}-{rid}"
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"

        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("x-mock-instance", self.instance.name)
        self.end_headers()
        self.wfile.flush()

        def event(payload) -> None:
            self.write_chunk(b"data: " + json.dumps(payload).encode() + b"\n\n")

        try:
            for i in range(n):
                if i > 0 and token_delay > 0:
                    time.sleep(token_delay / 1000.0)
                fr = finish if i == n - 1 else None
                if chat:
                    delta = {"content": token_text(i)}
                    if i == 0:
                        delta = {"role": "assistant", "content": token_text(i)}
                    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": fr}
                else:
                    choice = {"index": 0, "text": token_text(i), "logprobs": None, "finish_reason": fr}
                chunk = {"id": cid, "object": obj, "created": created, "model": model,
                         "choices": [choice]}
                if include_usage:
                    chunk["usage"] = None
                if i == 0:
                    chunk["mock"] = echo
                event(chunk)
            if include_usage:
                event({"id": cid, "object": obj, "created": created, "model": model, "choices": [],
                       "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n,
                                 "total_tokens": prompt_tokens + n}})
            self.write_chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _admin(self, path, raw):
        inst = self.instance
        if path == "/admin/stats" and self.command == "GET":
            return self.send_json(200, inst.stats())
        if path == "/admin/reset" and self.command == "POST":
            inst.reset_stats()
            return self.send_json(200, inst.stats())
        if path == "/admin/load":
            if self.command == "GET":
                with inst.lock:
                    return self.send_json(200, inst.load())
            if self.command == "POST":
                try:
                    upd = json.loads(raw or b"{}")
                    if not isinstance(upd, dict):
                        raise ValueError("not an object")
                    unknown = set(upd) - {"waiting", "running", "kv_cache", "metrics_delay_ms"}
                    if unknown:
                        raise ValueError(f"unknown fields {sorted(unknown)}")
                    with inst.lock:
                        if "waiting" in upd:
                            inst.waiting = int(upd["waiting"])
                        if "running" in upd:
                            inst.running = int(upd["running"])
                        if "kv_cache" in upd:
                            inst.kv_cache = float(upd["kv_cache"])
                        if "metrics_delay_ms" in upd:
                            inst.metrics_delay_ms = int(upd["metrics_delay_ms"])
                        load = inst.load()
                except (ValueError, TypeError) as e:
                    return self.send_json(400, error_body(400, f"mock: bad load update: {e}"))
                return self.send_json(200, load)
        return self.send_json(404, error_body(404, f"mock: no admin endpoint {self.command} {path}"))

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _handle

    def do_HEAD(self):
        self._handle()


# ---------------------------------------------------------------------------------------------
# Command line


def _split_assignment(value: str, what: str) -> tuple[str, str]:
    if "=" not in value:
        raise argparse.ArgumentTypeError(f"{what}: expected NAME=VALUE, got {value!r}")
    name, rest = value.split("=", 1)
    if not name:
        raise argparse.ArgumentTypeError(f"{what}: empty instance name in {value!r}")
    return name, rest


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Mock OpenAI-compatible (vLLM-like) model servers.")
    p.add_argument("--instance", action="append", default=[], metavar="NAME=HOST:PORT",
                   help="serve an instance (repeatable)")
    p.add_argument("--token-delay-ms", type=int, default=0, help="delay between tokens (default 0)")
    p.add_argument("--tokens", type=int, default=8, help="completion length in tokens (default 8)")
    p.add_argument("--load", action="append", default=[], metavar="NAME=WAITING,RUNNING,KV",
                   help="initial load of an instance (repeatable)")
    p.add_argument("--model-name", action="append", default=[], metavar="NAME=MODEL",
                   help="model_name label in /metrics (default by instance prefix: small-* -> "
                        "llama-3.1-8b-instruct, large-* -> llama-3.1-70b-instruct, else the name)")
    p.add_argument("--metrics-delay-ms", action="append", default=[], metavar="[NAME=]MS",
                   help="delay /metrics answers (all instances, or NAME=MS for one)")
    p.add_argument("--kv-metric", choices=("new", "legacy", "both"), default="new",
                   help="KV cache gauge: vllm:kv_cache_usage_perc (new), vllm:gpu_cache_usage_perc "
                        "(legacy, older vLLM), or both")
    p.add_argument("--legacy-kv-metric", action="store_true",
                   help="also export vllm:gpu_cache_usage_perc (same as --kv-metric both)")
    p.add_argument("--count-inflight", action="store_true",
                   help="add requests in progress to vllm:num_requests_running")
    p.add_argument("--quiet", action="store_true", help="no per-request log lines on stderr")
    args = p.parse_args(argv)
    if args.legacy_kv_metric and args.kv_metric == "new":
        args.kv_metric = "both"
    if not args.instance:
        p.error("at least one --instance NAME=HOST:PORT is required")
    return args


def default_model_name(name: str) -> str:
    prefix = name.rsplit("-", 1)[0] if "-" in name else name
    return DEFAULT_MODEL_NAMES.get(prefix, name)


def build_instances(args) -> list[Instance]:
    model_names = dict(_split_assignment(v, "--model-name") for v in args.model_name)
    instances = []
    seen = set()
    for spec in args.instance:
        name, addr = _split_assignment(spec, "--instance")
        if name in seen:
            raise SystemExit(f"mock_server: duplicate instance name {name!r}")
        seen.add(name)
        host, _, port = addr.rpartition(":")
        if not host or not port.isdigit():
            raise SystemExit(f"mock_server: --instance {spec!r}: expected NAME=HOST:PORT")
        instances.append(Instance(name, host, int(port), model_names.get(name, default_model_name(name)), args))
    by_name = {i.name: i for i in instances}
    for spec in args.load:
        name, val = _split_assignment(spec, "--load")
        if name not in by_name:
            raise SystemExit(f"mock_server: --load for unknown instance {name!r}")
        parts = val.split(",")
        if len(parts) != 3:
            raise SystemExit(f"mock_server: --load {spec!r}: expected NAME=WAITING,RUNNING,KV")
        inst = by_name[name]
        inst.waiting, inst.running, inst.kv_cache = int(parts[0]), int(parts[1]), float(parts[2])
    for spec in args.metrics_delay_ms:
        if "=" in spec:
            name, val = _split_assignment(spec, "--metrics-delay-ms")
            if name not in by_name:
                raise SystemExit(f"mock_server: --metrics-delay-ms for unknown instance {name!r}")
            by_name[name].metrics_delay_ms = int(val)
        else:
            for inst in instances:
                inst.metrics_delay_ms = int(spec)
    return instances


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def main(argv=None) -> int:
    args = parse_args(argv)
    instances = build_instances(args)
    servers = []
    for inst in instances:
        handler = type(f"Handler_{inst.name}", (Handler,), {"instance": inst})
        try:
            srv = Server((inst.host, inst.port), handler)
        except OSError as e:
            for s in servers:
                s.server_close()
            sys.stderr.write(f"mock_server: cannot listen on {inst.host}:{inst.port} for "
                             f"{inst.name}: {e}\n")
            return 2
        servers.append(srv)

    stop = threading.Event()

    def on_signal(signum, _frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    threads = []
    for srv in servers:
        t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        t.start()
        threads.append(t)
    sys.stderr.write("mock_server: serving " + " ".join(
        f"{i.name}={i.host}:{i.port}" for i in instances) + "\n")
    sys.stderr.flush()
    while not stop.wait(0.5):
        pass
    for srv in servers:
        srv.shutdown()
        srv.server_close()
    sys.stderr.write("mock_server: stopped\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
