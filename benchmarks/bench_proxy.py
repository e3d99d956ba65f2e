"""Gateway overhead: through ``llamatelemetry proxy`` vs straight to llama-server, side by side.

Measures, for streamed chat requests (interleaved direct/proxy rounds so drift hits both alike):
- median time to first byte (TTFB) of a short stream — target: proxy ≤ direct + 1 ms;
- median total time of a 1000-token stream (``ignore_eos`` + ``max_tokens``) — target: ≤ 1.05× direct;
- the gateway process's CPU time per request (from /proc: user + system), with telemetry on
  (SDK tracer and meter providers, Prometheus reader, no OTLP export).

The gateway runs as users run it: ``llamatelemetry proxy`` in its own process (uvicorn with
httptools and uvloop when installed). The llama-server is started here with the scripted model
unless ``--base-url`` is given.

Usage::

    python benchmarks/bench_proxy.py
    python benchmarks/bench_proxy.py --short 200 --long 20
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import httpx

MESSAGES = [{"role": "user", "content": "hi"}]
# Thinking off: a plain answer (no reasoning to count), like bench_client.py.
EXTRA = {"chat_template_kwargs": {"enable_thinking": False}}
LONG_TOKENS = 1000


def _free_port() -> int:
    from llamatelemetry.provision.server import free_port

    return free_port()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@contextlib.contextmanager
def _llama_server(base_url: str | None) -> Iterator[str]:
    if base_url:
        yield base_url.rstrip("/")
        return
    from llamatelemetry.provision.model import write_scripted_model
    from llamatelemetry.provision.server import LlamaServer

    model = write_scripted_model(Path(tempfile.mkdtemp()) / "scripted.gguf")
    with LlamaServer(model) as server:
        yield server.base_url


@contextlib.contextmanager
def _proxy(upstream: str) -> Iterator[tuple[str, str, int]]:
    port, admin = _free_port(), _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llamatelemetry.cli", "proxy", "--upstream", upstream,
                             "--port", str(port), "--admin-port", str(admin)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={k: v for k, v in os.environ.items() if not k.startswith("OTEL_EXPORTER")})
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{admin}/health", timeout=1)
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the proxy did not start")
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}", proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def _stream(client: httpx.Client, url: str, max_tokens: int, ignore_eos: bool) -> tuple[float, float, int]:
    """(seconds to first byte, seconds to the end, completion tokens) of one streamed chat."""
    body = {"messages": MESSAGES, "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}, **EXTRA}
    if ignore_eos:
        body["ignore_eos"] = True
    started = time.perf_counter()
    first = None
    data = bytearray()
    with client.stream("POST", url + "/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        for chunk in resp.iter_raw():
            if first is None:
                first = time.perf_counter() - started
            data.extend(chunk)
    total = time.perf_counter() - started
    usage_line = [line for line in data.decode().splitlines() if '"usage"' in line][-1]
    import json

    tokens = json.loads(usage_line[len("data: "):])["usage"]["completion_tokens"]
    assert first is not None
    return first, total, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("Usage::")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", help="use this llama-server instead of starting one")
    parser.add_argument("--short", type=int, default=100, help="short streams per variant (TTFB)")
    parser.add_argument("--long", type=int, default=10, help=f"{LONG_TOKENS}-token streams per variant")
    args = parser.parse_args()

    with _llama_server(args.base_url) as upstream, _proxy(upstream) as (proxy, admin, pid):
        targets = {"direct": upstream, "proxy": proxy}
        ttfb: dict[str, list[float]] = {name: [] for name in targets}
        long_total: dict[str, list[float]] = {name: [] for name in targets}
        cpu: dict[str, float] = {}
        with httpx.Client(timeout=120) as client:
            for name, url in targets.items():  # warm up connections and the prompt cache
                for _ in range(3):
                    _stream(client, url, 8, False)
            cpu_before = _cpu_seconds(pid)
            for _ in range(args.short):
                for name, url in targets.items():
                    first, _total, _tokens = _stream(client, url, 8, False)
                    ttfb[name].append(first)
            cpu["short"] = (_cpu_seconds(pid) - cpu_before) / args.short
            cpu_before = _cpu_seconds(pid)
            for _ in range(args.long):
                for name, url in targets.items():
                    _first, total, tokens = _stream(client, url, LONG_TOKENS, True)
                    assert tokens == LONG_TOKENS, f"{name}: {tokens} tokens instead of {LONG_TOKENS}"
                    long_total[name].append(total)
            cpu["long"] = (_cpu_seconds(pid) - cpu_before) / args.long
        time.sleep(0.5)
        seen = httpx.get(admin + "/api/recent", params={"limit": 100000}).json()["requests"]
        streams = [r for r in seen if r["endpoint"] == "/v1/chat/completions"]
        assert len(streams) == 3 + args.short + args.long, f"the proxy recorded {len(streams)} streams"
        assert all(r["output_tokens"] for r in streams), "every proxied stream should have its token count"

    d_ttfb, p_ttfb = statistics.median(ttfb["direct"]), statistics.median(ttfb["proxy"])
    d_long, p_long = statistics.median(long_total["direct"]), statistics.median(long_total["proxy"])
    print(f"llama-server {upstream}, gateway {proxy}; {args.short} short and {args.long} x {LONG_TOKENS}-token streams per variant\n")
    print("| variant | median TTFB | vs direct | median 1000-token stream | ratio | gateway CPU/request (short / 1000-token) |")
    print("|---|---|---|---|---|---|")
    print(f"| direct | {d_ttfb * 1000:.2f} ms | | {d_long * 1000:.1f} ms | 1.00x | |")
    print(f"| through proxy | {p_ttfb * 1000:.2f} ms | +{(p_ttfb - d_ttfb) * 1000:.2f} ms | {p_long * 1000:.1f} ms | "
          f"{p_long / d_long:.3f}x | {cpu['short'] * 1000:.2f} ms / {cpu['long'] * 1000:.1f} ms |")
    per_chunk = cpu["long"] / LONG_TOKENS
    print(f"\nllama-server streamed {LONG_TOKENS / d_long:.0f} tokens/s here (one SSE event per token); the gateway spends "
          f"{per_chunk * 1e6:.0f} us of CPU per relayed event, so it keeps pace with streams up to ~{1 / per_chunk:.0f} tokens/s "
          "per core and falls behind faster ones.")
    print(f"targets: TTFB <= direct + 1 ms: {'met' if p_ttfb - d_ttfb <= 0.001 else 'NOT met'}; "
          f"1000-token stream <= 1.05x: {'met' if p_long / d_long <= 1.05 else 'NOT met'}")


if __name__ == "__main__":
    main()
