#!/usr/bin/env python3
"""Time between server-sent events at the client, through gateways with and without the filter
(the `sse` part of `make bench`, scripts/bench.sh).

The upstream (tests/mock_server.py) streams EVENTS chat-completion chunks GAP_MS apart; each
gateway variant is asked for REQUESTS streamed completions, interleaved (A C A C ...), one at a
time. For every event after the first, the client records the time since the previous one
(when its `data:` line arrived). The table prints those gaps per variant and what each variant
adds to the median gap of the first one (the passthrough): the filter's added latency per event.

Figures only: the machine is shared and noisy, nothing is asserted.

Usage: sse.py EVENTS GAP_MS REQUESTS NAME=PORT [NAME=PORT ...]
"""

import json
import socket
import statistics
import sys
import time


def stream_gaps(port, events, gap_ms):
    """One streamed completion: (HTTP status, [seconds between consecutive data events])."""
    body = json.dumps(
        {
            "model": "gpt-4o-mini",
            "stream": True,
            "messages": [{"role": "user", "content": "Tell me a short story."}],
            "max_tokens": events,
        }
    ).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
        f"x-tenant-id: team-1\r\nx-mock-token-delay-ms: {gap_ms}\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode()
    times = []
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(head + body)
        while True:
            chunk = s.recv(65536)
            now = time.perf_counter()
            if not chunk:
                break
            # A `data:` line split across two reads is counted when its start arrives.
            tail = data[-5:]
            data += chunk
            times.extend([now] * (tail + chunk).count(b"data:"))
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, [b - a for a, b in zip(times, times[1:])]


def main(argv):
    if len(argv) < 5:
        print(__doc__, file=sys.stderr)
        return 2
    events, gap_ms, requests = int(argv[1]), int(argv[2]), int(argv[3])
    variants = [a.split("=", 1) for a in argv[4:]]
    gaps = {name: [] for name, _ in variants}
    bad = {name: 0 for name, _ in variants}
    for _ in range(requests):
        for name, port in variants:
            status, g = stream_gaps(int(port), events, gap_ms)
            if status != 200:
                bad[name] += 1
            gaps[name].extend(g)
    first = variants[0][0]
    base = sorted(gaps[first])[len(gaps[first]) // 2] if gaps[first] else 0.0
    print(f"{'variant':<32} {'gaps':>6} {'mean ms':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'added p50':>9} {'non-200':>7}")
    for name, _ in variants:
        g = sorted(gaps[name])
        if not g:
            print(f"{name:<32} {0:>6} (no events)")
            continue
        mean = statistics.mean(g)
        p50 = g[len(g) // 2]
        p99 = g[min(len(g) - 1, int(len(g) * 0.99))]
        print(f"{name:<32} {len(g):>6} {mean * 1e3:>8.2f} {p50 * 1e3:>8.2f} {p99 * 1e3:>8.2f} "
              f"{g[-1] * 1e3:>8.2f} {(p50 - base) * 1e3:>+9.3f} {bad[name]:>7}")
    print(f"  upstream: {events} events {gap_ms} ms apart per response, {requests} responses "
          f"per variant, interleaved; added p50 = median gap minus {first}'s (the median: the\n"
          "  filter asks for the usage chunk, which follows the last token at once and lowers the mean)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
