"""What does scraping a llama-server *router* cost, and does it slow the router's models?

Starts one real llama-server in router mode (``--models-dir`` with 8 copies of the scripted test model,
``--models-max 8``, children with ``--metrics``), loads 4 of them, and runs the exporter as a process
(``llamatelemetry exporter --no-gpu --target box=<router>``). In one run it measures:

1. **One scrape of the router (8 models, 4 running)**: wall time (median and worst of back-to-back scrapes)
   and the exporter process's CPU per scrape (``/proc/<pid>/stat``; the router's and children's work is
   not counted). Each scrape is checked: 8 models with a state, 4 models up with ``llamacpp_*`` series.
2. **Generation throughput scraped every second vs not**: one loaded model generates back-to-back
   2000-token requests through the router while the exporter is scraped every second, and while nobody
   scrapes it; requests alternate between the variants (not scraped, scraped, not scraped again) so drift
   hits all alike, and the two unscraped variants show the noise floor. Throughput is the child's own
   ``timings.predicted_per_second`` (median per variant); also the child's CPU time per generated token.

Every variant is checked to have done its work (scrapes happened while scraped, none otherwise) and, at the
end, that the 4 models never asked for are still unloaded. Run: ``python benchmarks/bench_router.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_exporter import Scraper, cpu_seconds, start_exporter  # noqa: E402

from llamatelemetry.exporter import procnet  # noqa: E402
from llamatelemetry.provision.build import ensure_llama_server  # noqa: E402
from llamatelemetry.provision.model import write_scripted_model  # noqa: E402
from llamatelemetry.provision.router import RouterServer, write_models_dir  # noqa: E402
from llamatelemetry.router import fetch_models  # noqa: E402

MODELS = [f"m{i}" for i in range(8)]
RUNNING = MODELS[:4]
GENERATE = {"model": RUNNING[0], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2000, "ignore_eos": True}


def check_scrape(text: str) -> None:
    """Every model has a state, the 4 running ones are up with llamacpp_* series, the target is up."""
    lines = text.splitlines()
    states = {line.split('model="', 1)[1].split('"', 1)[0] for line in lines
              if line.startswith("llamatelemetry_model_state{") and line.endswith(" 1.0")}
    up = {line.split('model="', 1)[1].split('"', 1)[0] for line in lines
          if line.startswith("llamatelemetry_model_up{") and line.endswith(" 1.0")}
    counted = {line.split('model="', 1)[1].split('"', 1)[0] for line in lines if line.startswith("llamacpp_tokens_predicted_total{")}
    assert states == set(MODELS), states
    assert up == counted == set(RUNNING), (up, counted)
    assert 'llamatelemetry_target_up{target="box"} 1.0' in lines


def scrape(client: httpx.Client, url: str) -> float:
    start = time.perf_counter()
    text = client.get(url + "/metrics", timeout=15).text
    took = time.perf_counter() - start
    check_scrape(text)
    return took


class RouterScraper(Scraper):
    """bench_exporter's every-second scraper, checking each scrape as a router scrape."""

    def _run(self) -> None:
        with httpx.Client() as client:
            while not self.stop.is_set():
                if not self.enabled.wait(0.01):
                    continue
                with self._busy:
                    if not self.enabled.is_set():
                        continue
                    scrape(client, self.url)
                    self.count += 1
                self.stop.wait(self.interval)


def child_pid(router: RouterServer, model: str) -> int:
    info = next(m for m in fetch_models(router.base_url) if m.id == model)
    port = int(info.args[list(info.args).index("--port") + 1])
    children = [int(p) for f in Path(f"/proc/{router.pid}/task").glob("*/children") for p in f.read_text().split()]
    pid = procnet.find_listener_pid(port, children)
    assert pid is not None, f"no child of the router listens on {port}"
    return pid


def generate_once(client: httpx.Client, router: RouterServer, pid: int) -> tuple[float, int, float]:
    """One 2000-token request through the router: child tokens/s, tokens, child CPU seconds."""
    cpu_start = cpu_seconds(pid)
    try:
        resp = client.post(router.base_url + "/v1/chat/completions", json=GENERATE)
    except httpx.RemoteProtocolError:
        # llama-server sometimes closes a kept-alive connection: no response byte came, so resend once
        resp = client.post(router.base_url + "/v1/chat/completions", json=GENERATE)
    body = resp.json()
    assert body["usage"]["completion_tokens"] > 1000, body["usage"]
    return body["timings"]["predicted_per_second"], body["usage"]["completion_tokens"], cpu_seconds(pid) - cpu_start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10, help="2000-token requests per throughput variant (default 10)")
    parser.add_argument("--scrapes", type=int, default=30, help="back-to-back router scrapes for the cost figures (default 30)")
    args = parser.parse_args()

    binary = ensure_llama_server()
    work = Path(tempfile.mkdtemp(prefix="bench-router-"))
    model = write_scripted_model(work / "scripted.gguf")
    models_dir = write_models_dir(work / "models", MODELS, source=model)
    router = RouterServer(models_dir, models_max=8, extra_args=["--metrics"], binary=binary, ctx_size=2048)
    exporter = None
    try:
        router.start()
        with httpx.Client(timeout=120) as client:
            for name in RUNNING:
                assert client.post(router.base_url + "/models/load", json={"model": name}).json() == {"success": True}
        deadline = time.monotonic() + 120
        while {m.id for m in fetch_models(router.base_url) if m.state == "loaded"} != set(RUNNING):
            assert time.monotonic() < deadline, "models did not load"
            time.sleep(0.1)
        exporter, url = start_exporter([f"box={router.base_url}"])

        # 1. one scrape of the router: wall time and exporter CPU
        with httpx.Client() as client:
            for _ in range(3):  # the first scrape finds out it is a router and opens the event stream
                scrape(client, url)
            cpu_before = cpu_seconds(exporter.pid)
            times = [scrape(client, url) for _ in range(args.scrapes)]
            cpu_per_scrape = (cpu_seconds(exporter.pid) - cpu_before) / args.scrapes

        # 2. throughput of one model, scraped every second vs not
        pid = child_pid(router, RUNNING[0])
        scraper = RouterScraper(url)
        variants = ("not scraped", "scraped every 1 s", "not scraped (again)")
        rates: dict[str, list[float]] = {v: [] for v in variants}
        tokens = {v: 0 for v in variants}
        cpu = {v: 0.0 for v in variants}
        scrapes_while = {v: 0 for v in variants}
        with httpx.Client(timeout=120) as gen:
            generate_once(gen, router, pid)  # warm-up
            for _ in range(args.requests):
                for variant in variants:
                    before = scraper.count
                    if variant.startswith("scraped"):
                        scraper.enabled.set()
                    rate, n, c = generate_once(gen, router, pid)
                    scraper.pause()
                    scrapes_while[variant] += scraper.count - before
                    rates[variant].append(rate)
                    tokens[variant] += n
                    cpu[variant] += c
        scraper.stop.set()
        assert scrapes_while["not scraped"] == 0 and scrapes_while["not scraped (again)"] == 0, scrapes_while
        assert scrapes_while["scraped every 1 s"] >= args.requests, scrapes_while
        never_asked = {m.id: m.state for m in fetch_models(router.base_url) if m.id not in RUNNING}
        assert set(never_asked.values()) == {"unloaded"}, f"a scrape loaded a model: {never_asked}"

        median = {v: statistics.median(r) for v, r in rates.items()}
        base = variants[0]
        print(f"{os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}; router with {len(MODELS)} scripted models, "
              f"{len(RUNNING)} loaded\n")
        print(f"one router scrape (8 models, 4 running): median {statistics.median(times) * 1000:.1f} ms, "
              f"worst {max(times) * 1000:.1f} ms over {args.scrapes} scrapes")
        print(f"exporter CPU per router scrape       : {cpu_per_scrape * 1000:.2f} ms (exporter process only)\n")
        print(f"{'variant':22} {'requests':>8} {'scrapes':>8} {'child tok/s (median)':>21} {'child CPU us/token':>19}")
        for v in variants:
            print(f"{v:22} {len(rates[v]):8d} {scrapes_while[v]:8d} {median[v]:12.0f} ({median[v] / median[base]:.3f}x)"
                  f" {cpu[v] / tokens[v] * 1e6:10.1f} ({(cpu[v] / tokens[v]) / (cpu[base] / tokens[base]):.3f}x)")
        unscraped = (median[base] + median["not scraped (again)"]) / 2
        diff = (median["scraped every 1 s"] / unscraped - 1) * 100
        noise = abs(median["not scraped (again)"] / median[base] - 1) * 100
        print(f"\nscraped vs not: {diff:+.2f} % tokens/s (unscraped vs unscraped: {noise:.2f} %); "
              f"the {len(MODELS) - len(RUNNING)} models never asked for stayed unloaded")
    finally:
        if exporter is not None:
            exporter.terminate()
            exporter.wait(timeout=10)
        router.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
