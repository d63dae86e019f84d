#!/usr/bin/env python3
"""A small OTLP/gRPC trace receiver: the OpenTelemetry collector's TraceService, built from the
published protos (PyPI's opentelemetry-proto + grpcio, in .venv via tests/requirements.txt).

The e2e tests start it in-process and read the spans Envoy and llm-router-extproc export;
`make run TRACING=1` runs it as a program that prints each span it receives:

    .venv/bin/python scripts/otlp_receiver.py --port 4317
"""

from __future__ import annotations

import argparse
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    service: str
    kind: int
    attributes: dict = field(default_factory=dict)

    def describe(self) -> str:
        attrs = "\n".join(f"    {k} = {v!r}" for k, v in sorted(self.attributes.items()))
        parent = self.parent_span_id or "-"
        return (f"span {self.name!r} service={self.service} trace={self.trace_id} "
                f"span={self.span_id} parent={parent}\n{attrs}")


def _value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind)


def spans_of(request) -> list[Span]:
    out = []
    for rs in request.resource_spans:
        res = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(Span(
                    name=s.name, trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                    parent_span_id=s.parent_span_id.hex(), service=str(res.get("service.name", "")),
                    kind=s.kind, attributes={kv.key: _value(kv.value) for kv in s.attributes}))
    return out


class _Service(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: "OtlpReceiver"):
        self.receiver = receiver

    def Export(self, request, context):  # noqa: N802 (the proto's name)
        self.receiver._add(spans_of(request))
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    """Listens on 127.0.0.1:`port` (0: a free port, see `.port`); keeps every span."""

    def __init__(self, port: int = 0, on_span=None):
        self._spans: list[Span] = []
        self._cv = threading.Condition()
        self._on_span = on_span
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Service(self), self._server)
        self.port = self._server.add_insecure_port(f"127.0.0.1:{port}")
        if self.port == 0:
            raise RuntimeError(f"otlp receiver: cannot listen on 127.0.0.1:{port}")
        self._server.start()

    def _add(self, spans: list[Span]) -> None:
        with self._cv:
            self._spans.extend(spans)
            self._cv.notify_all()
        if self._on_span:
            for s in spans:
                self._on_span(s)

    @property
    def spans(self) -> list[Span]:
        with self._cv:
            return list(self._spans)

    def clear(self) -> None:
        with self._cv:
            self._spans.clear()

    def wait(self, match, count: int = 1, timeout: float = 15.0) -> list[Span]:
        """The spans `match(span)` accepts once there are at least `count`; [] on timeout
        (the caller asserts, so a missing span fails with what did arrive)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                found = [s for s in self._spans if match(s)]
                left = deadline - time.monotonic()
                if len(found) >= count or left <= 0:
                    return found
                self._cv.wait(left)

    def stop(self) -> None:
        self._server.stop(grace=None)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=4317)
    args = p.parse_args()
    r = OtlpReceiver(args.port, on_span=lambda s: print(s.describe(), flush=True))
    print(f"otlp receiver: listening on 127.0.0.1:{r.port}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        r.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
