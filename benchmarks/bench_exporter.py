"""Does the exporter slow the llama-servers it watches, what does a scrape cost it, and how does it scale?

Starts 8 real llama-servers (scripted test model, ``--metrics``) and exporter processes
(``llamatelemetry exporter --no-gpu``), then measures, in one run:

1. **Generation throughput scraped vs not.** llama-server #0 generates back-to-back requests of 2000
   tokens (the scripted model's whole context, ~1 s each) while an exporter watching it is scraped every
   second, and while nobody scrapes it; requests alternate between the variants so drift hits all alike,
   and a second unscraped variant shows the noise floor. Throughput is llama-server's own
   ``timings.predicted_per_second`` (median per variant), the wall clock tokens/s, and llama-server's
   CPU time per generated token (``/proc``; unlike the rates, not stretched when other processes load
   the machine, and it includes answering the scrapes). Target: < 2 %.
2. **Exporter CPU per target-scrape**: CPU time of the exporter process only (``/proc/<pid>/stat``; the
   llama-servers' own work is not counted) over back-to-back scrapes of 8 targets, divided by 8 x scrapes.
3. **One scrape of 64 targets** (the 8 llama-servers under 8 names each): wall time (median and
   worst) and the exporter's resident memory. It must finish well inside a 10 s scrape timeout.

Every variant is checked to have done its work (scrapes happened and saw every target up; the
unscraped variant saw no scrape). Run: ``python benchmarks/bench_exporter.py [--requests 12]`` (~1 minute).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llamatelemetry.provision.build import ensure_llama_server  # noqa: E402
from llamatelemetry.provision.model import write_scripted_model  # noqa: E402
from llamatelemetry.provision.server import LlamaServer, free_port  # noqa: E402

GENERATE = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2000, "ignore_eos": True}


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
    args = [sys.executable, "-m", "llamatelemetry.cli", "exporter", "--no-gpu", "--port", str(port), "--log-level", "warning",
            "--timeout", "8"]
    for t in targets:
        args += ["--target", t]
    proc = subprocess.Popen(args, cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("exporter did not start")


def scrape(client: httpx.Client, url: str, targets: int) -> float:
    """One scrape; checks that every target was up. Returns the wall time."""
    start = time.perf_counter()
    text = client.get(url + "/metrics", timeout=15).text
    took = time.perf_counter() - start
    ups = [line for line in text.splitlines() if line.startswith("llamatelemetry_target_up{")]
    if len(ups) != targets or not all(line.endswith(" 1.0") for line in ups):
        raise AssertionError(f"expected {targets} targets up, got {ups[:3]}...")
    return took


class Scraper:
    """Scrapes ``url`` every ``interval`` seconds in a thread while enabled (as Prometheus would)."""

    def __init__(self, url: str, interval: float = 1.0) -> None:
        self.url, self.interval = url, interval
        self.enabled = threading.Event()
        self.stop = threading.Event()
        self.count = 0
        self._busy = threading.Lock()  # held during a scrape
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def pause(self) -> None:
        """Stop scraping and wait for a scrape in flight, so it is counted for the variant it belongs to."""
        self.enabled.clear()
        with self._busy:
            pass

    def _run(self) -> None:
        with httpx.Client() as client:
            while not self.stop.is_set():
                if not self.enabled.wait(0.01):  # idle: check often, so a scraped variant starts with a scrape
                    continue
                with self._busy:
                    if not self.enabled.is_set():
                        continue
                    scrape(client, self.url, 1)
                    self.count += 1
                self.stop.wait(self.interval)


def generation_round(server: LlamaServer, seconds: float) -> tuple[list[float], int, float, float]:
    """Back-to-back generations (at least one) for about ``seconds``.

    Returns per-request server tokens/s, tokens, wall time and the llama-server's CPU seconds meanwhile.
    """
    rates: list[float] = []
    tokens = 0
    start, cpu_start = time.perf_counter(), cpu_seconds(server.pid)
    with httpx.Client(timeout=120) as client:
        while not rates or time.perf_counter() - start < seconds:
            body = client.post(server.base_url + "/v1/chat/completions", json=GENERATE).json()
            assert body["usage"]["completion_tokens"] > 1000, body["usage"]
            rates.append(body["timings"]["predicted_per_second"])
            tokens += body["usage"]["completion_tokens"]
    return rates, tokens, time.perf_counter() - start, cpu_seconds(server.pid) - cpu_start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=12, help="2000-token requests per throughput variant (default 12)")
    parser.add_argument("--scrapes", type=int, default=30, help="back-to-back 8-target scrapes for the CPU figure")
    args = parser.parse_args()

    binary = ensure_llama_server()
    model = write_scripted_model(Path(tempfile.mkdtemp(prefix="bench-model-")) / "scripted.gguf")
    servers = [LlamaServer(model, extra_args=["--metrics"], binary=binary) for _ in range(8)]
    exporters: list[subprocess.Popen[bytes]] = []
    try:
        for server in servers:
            server.start(wait=False)
        for server in servers:
            server.wait_ready()

        # 1. throughput, scraped every second vs not scraped. Requests alternate between the variants
        # (not scraped, scraped, not scraped again); the two unscraped variants show the noise floor.
        watcher, watcher_url = start_exporter([f"s0={servers[0].base_url}"])
        exporters.append(watcher)
        scraper = Scraper(watcher_url)
        generation_round(servers[0], 0.5)  # warm-up
        variants = ("not scraped", "scraped every 1 s", "not scraped (again)")
        rates: dict[str, list[float]] = {v: [] for v in variants}
        tokens: dict[str, int] = {v: 0 for v in variants}
        wall: dict[str, float] = {v: 0.0 for v in variants}
        cpu: dict[str, float] = {v: 0.0 for v in variants}
        scrapes_while: dict[str, int] = {v: 0 for v in variants}
        for _ in range(args.requests):
            for variant in variants:
                before = scraper.count
                if variant.startswith("scraped"):
                    scraper.enabled.set()
                r, n, w, c = generation_round(servers[0], 0.0)  # exactly one request
                scraper.pause()
                scrapes_while[variant] += scraper.count - before
                rates[variant] += r
                tokens[variant] += n
                wall[variant] += w
                cpu[variant] += c
        scraper.stop.set()
        assert scrapes_while["not scraped"] == 0 and scrapes_while["not scraped (again)"] == 0, scrapes_while
        assert scrapes_while["scraped every 1 s"] >= args.requests, scrapes_while  # at least one per scraped request
        server_rate = {v: statistics.median(r) for v, r in rates.items()}
        wall_rate = {v: tokens[v] / wall[v] for v in variants}

        # 2. exporter CPU per target-scrape (8 targets, back-to-back scrapes)
        exp8, url8 = start_exporter([f"s{i}={s.base_url}" for i, s in enumerate(servers)])
        exporters.append(exp8)
        with httpx.Client() as client:
            for _ in range(3):
                scrape(client, url8, 8)
            cpu_before = cpu_seconds(exp8.pid)
            servers_before = [cpu_seconds(s.pid) for s in servers]
            for _ in range(args.scrapes):
                scrape(client, url8, 8)
            cpu_per_target = (cpu_seconds(exp8.pid) - cpu_before) / (args.scrapes * 8)
            # What answering one scrape costs an idle llama-server (its /metrics and /slots), for the bound below.
            server_cpu = statistics.median(cpu_seconds(s.pid) - b for s, b in zip(servers, servers_before)) / args.scrapes

        # 3. one scrape of 64 targets: 8 llama-servers x 8 names
        exp64, url64 = start_exporter([f"s{i}n{n}={s.base_url}" for i, s in enumerate(servers) for n in range(8)])
        exporters.append(exp64)
        with httpx.Client() as client:
            times64 = [scrape(client, url64, 64) for _ in range(5)]
        rss64 = rss_mib(exp64.pid)

        print(f"{os.cpu_count()} CPU(s); llama-servers run the scripted test model (~2000-token generations)\n")
        base = "not scraped"
        print(f"{'generation throughput':28}" + "".join(f"{v:>22}" for v in variants))
        print(f"{'  llama-server tokens/s':28}" + "".join(f"{server_rate[v]:14.1f} ({server_rate[v] / server_rate[base]:.3f}x)" for v in variants))
        print(f"{'  wall clock tokens/s':28}" + "".join(f"{wall_rate[v]:14.1f} ({wall_rate[v] / wall_rate[base]:.3f}x)" for v in variants))
        print(f"{'  CPU ms per 1000 tokens':28}" + "".join(
            f"{cpu[v] / tokens[v] * 1e6:14.1f} ({(cpu[v] / tokens[v]) / (cpu[base] / tokens[base]):.3f}x)" for v in variants))
        print(f"{'  requests, scrapes':28}" + "".join(f"{len(rates[v]):>16}, {scrapes_while[v]:>4}" for v in variants))
        # Paired: each scraped request against the unscraped ones just before and after it (drift cancels).
        a, sc, a2 = (rates[v] for v in variants)
        diff = (statistics.median(sc[i] / ((a[i] + a2[i]) / 2) for i in range(len(sc))) - 1) * 100
        noise = abs(statistics.median(a2[i] / a[i] for i in range(len(a))) - 1) * 100
        verdict = "OK" if abs(diff) < 2 else ("within the noise floor" if abs(diff) <= noise else "MISSED")
        print(f"  scraped vs the unscraped requests around it (median of pairs): {diff:+.2f} % (target < 2 %): {verdict}")
        cpu_unscraped = (cpu[base] + cpu["not scraped (again)"]) / (tokens[base] + tokens["not scraped (again)"])
        cpu_diff = ((cpu["scraped every 1 s"] / tokens["scraped every 1 s"]) / cpu_unscraped - 1) * 100
        cpu_noise = abs((cpu["not scraped (again)"] / tokens["not scraped (again)"]) / (cpu[base] / tokens[base]) - 1) * 100
        cpu_verdict = "OK" if cpu_diff < 2 else ("within the noise floor" if cpu_diff <= cpu_noise else "MISSED")
        print(f"  llama-server CPU per token, scraped vs not: {cpu_diff:+.2f} % (target < 2 %: {cpu_verdict}; "
              f"unscraped vs unscraped {cpu_noise:.2f} %)")
        print(f"  noise floor (unscraped vs unscraped, median of pairs): {noise:.2f} %; load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPU(s)\n")
        print(f"exporter CPU per target-scrape     : {cpu_per_target * 1000:.2f} ms  ({args.scrapes} scrapes of 8 targets, "
              f"exporter process only); a llama-server answering one scrape: {server_cpu * 1000:.2f} ms")
        print(f"  bound at 1 scrape/s: exporter + llama-server CPU = {(cpu_per_target + server_cpu) * 100:.2f} % of one core "
              f"per target, the most a scrape can take from generation on a CPU-bound machine")
        print(f"one scrape of 64 targets (8 x 8)   : median {statistics.median(times64) * 1000:.0f} ms, worst "
              f"{max(times64) * 1000:.0f} ms (scrape timeout 10 s: {max(times64) / 10:.3f}x of it); exporter RSS {rss64:.1f} MiB")
    finally:
        for proc in exporters:
            proc.terminate()
            proc.wait(timeout=10)
        for server in servers:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
