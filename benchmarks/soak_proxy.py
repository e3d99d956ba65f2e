"""Soak the gateway: many agents for minutes, an upstream restart in the middle, and nothing lost.

A real ``llamatelemetry proxy`` process in front of a real llama-server (4 slots, the scripted
model), exporting spans over OTLP/HTTP to a receiver in this script. ``--clients`` threads loop
until ``--seconds`` have passed, each request one of: a chat, a streamed chat (with usage), an
Anthropic ``/v1/messages`` stream, an empty answer (the model's thinking uses up ``max_tokens``), a
client that disconnects mid-stream. Halfway through, llama-server is killed and started again on its
port. A probe thread times the first byte of the same short request direct and through the gateway,
alternately, for the added latency.

Reported (and checked by ``tests/test_soak_proxy.py`` on a short run): requests sent = spans received
(each span that should carry usage does), gateway RSS after warm-up vs at the end, its open file
descriptors and upstream connections back to idle, every slot idle, added latency p50/p99.

Usage::

    python benchmarks/soak_proxy.py --seconds 300 --clients 32
    python benchmarks/soak_proxy.py --seconds 25 --clients 8 --json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import httpx

from llamatelemetry.provision.model import write_scripted_model
from llamatelemetry.provision.server import LlamaServer, free_port, stop_process

HI = [{"role": "user", "content": "Say hello."}]
KINDS = ("chat", "stream", "messages_stream", "empty", "disconnect")


class OtlpReceiver:
    """Counts spans posted to ``/v1/traces`` (OTLP/HTTP protobuf), keeping each span's attribute keys."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                data = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.headers.get("content-encoding") == "gzip":
                    data = gzip.decompress(data)
                if self.path == "/v1/traces":
                    request = ExportTraceServiceRequest.FromString(data)
                    found = [{a.key: _value(a.value) for a in span.attributes} | {"name": span.name}
                             for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans]
                    with receiver.lock:
                        receiver.spans.extend(found)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self) -> int:
        with self.lock:
            return len(self.spans)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


@dataclass
class Tally:
    sent: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    with_usage: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, status: int | None, usage: bool, error: str | None = None) -> None:
        with self.lock:
            self.sent[kind] += 1
            if status is not None:
                self.statuses[status] += 1
            self.with_usage += usage
            if error:
                self.errors[error] += 1


def _one(client: httpx.Client, url: str, kind: str) -> tuple[int | None, bool]:
    """Send one request of ``kind``; (status, whether the answer carried usage)."""
    if kind in ("chat", "empty"):
        body = {"model": "scripted", "messages": HI, "max_tokens": 64 if kind == "chat" else 8}
        r = client.post(url + "/v1/chat/completions", json=body)
        return r.status_code, r.status_code == 200 and "usage" in r.json()
    if kind == "stream":
        body = {"model": "scripted", "messages": HI, "max_tokens": 64, "stream": True,
                "stream_options": {"include_usage": True}}
        with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
            text = r.read()
        return r.status_code, r.status_code == 200 and b'"usage"' in text
    if kind == "messages_stream":
        body = {"model": "scripted", "messages": HI, "max_tokens": 64, "stream": True}
        with client.stream("POST", url + "/v1/messages", json=body) as r:
            text = r.read()
        return r.status_code, r.status_code == 200 and b"message_delta" in text and b'"output_tokens"' in text
    body = {"model": "scripted", "messages": HI, "max_tokens": 2000, "ignore_eos": True, "stream": True}
    with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        chunks = r.iter_raw()
        for _ in range(3):
            next(chunks, None)
    return r.status_code, False  # left mid-stream: no usage to expect


def _client_loop(url: str, deadline: float, index: int, tally: Tally) -> None:
    with httpx.Client(timeout=60) as client:
        n = index
        while time.monotonic() < deadline:
            kind = KINDS[n % len(KINDS)]
            n += 1
            try:
                status, usage = _one(client, url, kind)
                tally.add(kind, status, usage)
            except httpx.HTTPError as exc:
                status = None
                tally.add(kind, None, False, f"{kind}:{type(exc).__name__}")
            if status is None or status >= 500:  # as agents do: back off while the upstream is away
                time.sleep(0.25)


def _probe_loop(direct: str, gateway: str, deadline: float, out: dict[str, list[float]], pause: float,
                tally: Tally) -> None:
    body = {"model": "scripted", "messages": HI, "max_tokens": 8, "stream": True,
            "chat_template_kwargs": {"enable_thinking": False}}
    with httpx.Client(timeout=30) as client:
        while time.monotonic() < deadline:
            for name, url in (("direct", direct), ("gateway", gateway)):
                try:
                    started = time.perf_counter()
                    with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
                        chunks = r.iter_raw()
                        next(chunks)
                        ttfb = time.perf_counter() - started
                        for _ in chunks:
                            pass
                    if r.status_code == 200:
                        out[name].append(ttfb)
                    if name == "gateway":
                        tally.add("probe", r.status_code, False)
                except (httpx.HTTPError, StopIteration) as exc:
                    if name == "gateway":
                        tally.add("probe", None, False, type(exc).__name__)
            time.sleep(pause)


def _proc(pid: int) -> dict[str, int]:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {"rss_kib": int(status["VmRSS"].split()[0]), "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def upstream_connections(pid: int, port: int) -> int:
    """ESTABLISHED TCP connections of process ``pid`` to ``port`` (its sockets' inodes in /proc/net/tcp)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            remote_port = int(parts[2].split(":")[1], 16)
            if parts[3] == "01" and remote_port == port and parts[9] in inodes:
                count += 1
    return count


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def soak(seconds: float, clients: int, *, probe_pause: float = 0.05, work_dir: Path | None = None) -> dict[str, Any]:
    """Run the soak; return the report (see module docs)."""
    import tempfile

    work = work_dir or Path(tempfile.mkdtemp(prefix="soak-"))
    model = write_scripted_model(work / "scripted.gguf")
    server = LlamaServer(model, parallel=4, extra_args=["--metrics"]).start()
    receiver = OtlpReceiver()
    port, admin = free_port(), free_port()
    # The gateway's log goes to a file: an unread pipe would fill and block it (it warns once per empty answer).
    log = open(work / "gateway.log", "w")
    env = {**os.environ, "OTEL_BSP_SCHEDULE_DELAY": "200", "OTEL_BSP_MAX_QUEUE_SIZE": "65536",
           "OTEL_METRIC_EXPORT_INTERVAL": "60000"}
    gateway = subprocess.Popen([sys.executable, "-m", "llamatelemetry.cli", "proxy", "--upstream", server.base_url,
                                "--port", str(port), "--admin-port", str(admin), "--otlp-endpoint", receiver.url],
                               env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
    url = f"http://127.0.0.1:{port}"
    report: dict[str, Any] = {"seconds": seconds, "clients": clients}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{admin}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if gateway.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start: {(work / 'gateway.log').read_text()}")
            time.sleep(0.1)
        tally = Tally()
        latency: dict[str, list[float]] = {"direct": [], "gateway": []}
        started = time.monotonic()
        end = started + seconds
        threads = [threading.Thread(target=_client_loop, args=(url, end, i, tally), daemon=True) for i in range(clients)]
        threads.append(threading.Thread(target=_probe_loop, args=(server.base_url, url, end, latency, probe_pause, tally),
                                        daemon=True))
        for t in threads:
            t.start()
        time.sleep(seconds * 0.2)
        report["after_warmup"] = _proc(gateway.pid)
        time.sleep(max(0.0, started + seconds / 2 - time.monotonic()))
        restart_at = time.monotonic()
        assert server.process is not None
        server.process.kill()  # the upstream crashes mid-soak ...
        server.process.wait()
        server.start()  # ... and comes back on its port
        report["restart_seconds"] = round(time.monotonic() - restart_at, 2)
        for t in threads:
            t.join(seconds + 120)
        requests = sum(tally.sent.values())
        # Spans end after answers and are exported in batches: wait until the count settles.
        settle = time.monotonic() + 30
        while receiver.count() < requests and time.monotonic() < settle:
            time.sleep(0.2)
        time.sleep(6)  # idle: past llama-server's 5 s keep-alive, which closes the pooled connections
        slots = httpx.get(server.base_url + "/slots", timeout=10).json()
        spans = list(receiver.spans)
        usage_spans = sum(1 for s in spans if "gen_ai.usage.output_tokens" in s)
        report.update({
            "requests": requests, "by_kind": dict(tally.sent), "statuses": {str(k): v for k, v in tally.statuses.items()},
            "client_errors": dict(tally.errors), "answers_with_usage": tally.with_usage,
            "spans": len(spans), "spans_with_usage": usage_spans,
            "span_errors": dict(Counter(str(s.get("error.type")) for s in spans if s.get("error.type"))),
            "end": _proc(gateway.pid), "upstream_connections_end": upstream_connections(gateway.pid, server.port),
            "slots_busy_end": sum(1 for s in slots if s.get("is_processing")),
            "added_ttfb_ms": {
                "probes": min(len(latency["direct"]), len(latency["gateway"])),
                "p50": round((statistics.median(latency["gateway"]) - statistics.median(latency["direct"])) * 1000, 2),
                "p99": round((_percentile(latency["gateway"], 0.99) - _percentile(latency["direct"], 0.99)) * 1000, 2),
                "direct_p50": round(statistics.median(latency["direct"]) * 1000, 2),
                "gateway_p50": round(statistics.median(latency["gateway"]) * 1000, 2),
            },
        })
        before, after = report["after_warmup"]["rss_kib"], report["end"]["rss_kib"]
        report["rss_change"] = round(after / before - 1, 3)
        return report
    finally:
        stop_process(gateway)
        log.close()
        server.stop()
        receiver.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("Usage::")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--json", action="store_true", help="print the report as JSON only")
    args = parser.parse_args(argv)
    report = soak(args.seconds, args.clients)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for key, value in report.items():
        print(f"{key:>28}: {value}")


if __name__ == "__main__":
    main()
