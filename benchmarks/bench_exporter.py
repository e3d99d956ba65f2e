"""Scrape latency of the exporter (1 and 8 llama-server targets) vs a direct GET of llama-server /metrics.

Starts 8 real llama-servers (scripted test model, ``--metrics``) and two exporter processes
(``llamatelemetry exporter``, GPU collection off): one with 1 target, one with all 8. Then, in
interleaved rounds (so drift hits all three alike), times:

* a direct ``GET /metrics`` of llama-server #0,
* a scrape of the 1-target exporter,
* a scrape of the 8-target exporter,
* (context) direct ``GET /metrics`` then ``GET /slots``: the upstream work the exporter needs,

each over its own keep-alive ``http.client.HTTPConnection`` (a lean client, like Prometheus'
Go client; ``httpx`` would add ~1 ms of its own parsing to the 8 kB exporter answer and blur
the comparison). Prints median / p90 per case,
the ratios against the issue's targets (1 target <= 1.5x direct, 8 targets <= 2x 1 target), the
CPU time per scrape of the exporters and of the llama-servers answering them (read from
/proc/<pid>/stat; it bounds how fast 8 targets can be on this machine) and each exporter's
resident memory after the run.

Run: ``python benchmarks/bench_exporter.py [--rounds 300]``
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llamatelemetry.provision.build import ensure_llama_server  # noqa: E402
from llamatelemetry.provision.model import write_scripted_model  # noqa: E402
from llamatelemetry.provision.server import LlamaServer, free_port  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def start_exporter(targets: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    args = [sys.executable, "-m", "llamatelemetry.cli", "exporter", "--no-gpu", "--port", str(port), "--log-level", "warning"]
    for t in targets:
        args += ["--target", t]
    proc = subprocess.Popen(args, cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("exporter did not start")


def timed_get(conn: http.client.HTTPConnection, path: str) -> float:
    start = time.perf_counter()
    conn.request("GET", path, headers={"Accept": "text/plain"})
    resp = conn.getresponse()
    body = resp.read()
    elapsed = time.perf_counter() - start
    if resp.status != 200 or not body:
        raise RuntimeError(f"GET {path} answered {resp.status}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    args = parser.parse_args()

    binary = ensure_llama_server()
    model = write_scripted_model(Path(tempfile.mkdtemp(prefix="bench-model-")) / "scripted.gguf")
    servers = [LlamaServer(model, extra_args=["--metrics"], binary=binary).start() for _ in range(8)]
    exporters: list[subprocess.Popen[bytes]] = []
    try:
        for i, server in enumerate(servers):  # some traffic, so counters and slots are non-trivial
            httpx.post(server.base_url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}, timeout=30)
        exp1, url1 = start_exporter([f"s0={servers[0].base_url}"])
        exp8, url8 = start_exporter([f"s{i}={s.base_url}" for i, s in enumerate(servers)])
        exporters += [exp1, exp8]
        cases = {
            "direct GET llama-server /metrics": servers[0].base_url + "/metrics",
            "exporter, 1 target": url1 + "/metrics",
            "exporter, 8 targets": url8 + "/metrics",
            # Context only: what the exporter itself must fetch per healthy target and scrape.
            "direct GET /metrics then /slots": servers[0].base_url + "/metrics+/slots",
        }
        clients = {name: http.client.HTTPConnection(urlsplit(url).hostname, urlsplit(url).port, timeout=10) for name, url in cases.items()}
        samples: dict[str, list[float]] = {name: [] for name in cases}
        cpu_start: dict[int, float] = {}
        for round_no in range(args.warmup + args.rounds):
            if round_no == args.warmup:
                cpu_start = {p: cpu_seconds(p) for p in [exp1.pid, exp8.pid] + [s.pid for s in servers]}
            for name, url in cases.items():
                took = sum(timed_get(clients[name], path) for path in urlsplit(url).path.split("+"))
                if round_no >= args.warmup:
                    samples[name].append(took)

        print(f"{args.rounds} interleaved rounds on {os.cpu_count()} CPU(s); each llama-server uses the scripted test model\n")
        print(f"{'case':36} {'median ms':>10} {'p90 ms':>10}")
        med = {}
        for name, values in samples.items():
            values.sort()
            med[name] = statistics.median(values)
            print(f"{name:36} {med[name] * 1000:10.3f} {values[int(len(values) * 0.9)] * 1000:10.3f}")
        direct, one, eight, upstream = med.values()
        print()
        print(f"1 target / direct GET : {one / direct:5.2f}x   (target <= 1.5x)  {'OK' if one / direct <= 1.5 else 'MISSED'}")
        print(f"8 targets / 1 target  : {eight / one:5.2f}x   (target <= 2.0x)  {'OK' if eight / one <= 2.0 else 'MISSED'}")
        print(f"exporter overhead     : 1 target {(one - upstream) * 1000:.2f} ms over its own upstream GETs, "
              f"{(eight - one) / 7 * 1000:.2f} ms per additional target")
        # llama-servers #1-#7 answer only the 8-target exporter: their CPU is what one target costs upstream.
        used = {p: (cpu_seconds(p) - start) / args.rounds * 1000 for p, start in cpu_start.items()}
        upstream_cpu = sum(used[s.pid] for s in servers[1:]) / 7
        need = used[exp8.pid] + 8 * upstream_cpu
        print(f"CPU per scrape        : exporter 1 target {used[exp1.pid]:.2f} ms, 8 targets {used[exp8.pid]:.2f} ms; "
              f"each llama-server answering it {upstream_cpu:.2f} ms")
        print(f"8-target floor        : {need:.2f} ms of CPU per scrape on {os.cpu_count()} CPU(s) -> at least "
              f"{need / (os.cpu_count() or 1):.2f} ms even if all of it ran in parallel")
        print(f"exporter RSS          : 1 target {rss_mib(exp1.pid):.1f} MiB, 8 targets {rss_mib(exp8.pid):.1f} MiB")
    finally:
        for proc in exporters:
            proc.terminate()
            proc.wait(timeout=10)
        for server in servers:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
