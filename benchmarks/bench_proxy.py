"""Gateway overhead: through ``llamatelemetry proxy`` vs straight to llama-server, side by side.

Measures, for streamed chat requests (interleaved direct/proxy rounds so drift hits both alike):
- median time to first byte (TTFB) of a short stream — target: proxy ≤ direct + 1 ms;
- median total time of a 1000-token stream (``ignore_eos`` + ``max_tokens``) — target: ≤ 1.05× direct;
- the gateway process's CPU time per request (from /proc: user + system), with telemetry on
  (SDK tracer and meter providers, Prometheus reader, no OTLP export).

The gateway runs as users run it: ``llamatelemetry proxy`` in its own process (uvicorn with
httptools and uvloop when installed). The llama-server is started here with the scripted model
unless ``--base-url`` is given.

LiteLLM's proxy (the peer) runs on the same requests with ``--litellm``; install it apart so its
pins do not touch this environment: ``pip install --target /tmp/litellm 'litellm[proxy]'`` and
``--litellm-path /tmp/litellm``.

Usage::

    python benchmarks/bench_proxy.py
    python benchmarks/bench_proxy.py --short 200 --long 20 --litellm --litellm-path /tmp/litellm
    python benchmarks/bench_proxy.py --aiohttp    # httpx vs aiohttp as the upstream client
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
LITELLM_KEY = "sk-bench-local"
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


def _wait_http(url: str, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{what} did not start")
            time.sleep(0.2)


@contextlib.contextmanager
def _litellm(upstream: str, path: str | None) -> Iterator[tuple[str, int] | None]:
    """LiteLLM's proxy (the peer) on the same llama-server, if ``litellm[proxy]`` is importable."""
    env = {**os.environ, "LITELLM_MASTER_KEY": LITELLM_KEY, "OPENAI_API_KEY": "none", "LITELLM_LOG": "ERROR"}
    if path:  # installed apart (pip install --target DIR 'litellm[proxy]'): its pins stay out of our process
        env["PYTHONPATH"] = os.pathsep.join([path, env.get("PYTHONPATH", "")])
    check = subprocess.run([sys.executable, "-c", "import litellm.proxy.proxy_cli"], env=env, capture_output=True, text=True)
    if check.returncode != 0:
        print(f"LiteLLM proxy not benchmarked: {check.stderr.strip().splitlines()[-1:]} (pip install 'litellm[proxy]')")
        yield None
        return
    port = _free_port()
    code = "import sys; from litellm.proxy.proxy_cli import run_server; sys.exit(run_server())"
    proc = subprocess.Popen([sys.executable, "-c", code, "--model", "openai/scripted", "--api_base", upstream + "/v1",
                             "--port", str(port), "--num_workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        _wait_http(f"http://127.0.0.1:{port}/health/liveliness", proc, 120, "LiteLLM's proxy")
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def _proxy(upstream: str, tree: str | None = None, upstream_client: str | None = None) -> Iterator[tuple[str, str, int]]:
    """``llamatelemetry proxy`` in its own process; from the checkout ``tree`` instead of this one if given;
    ``upstream_client="aiohttp"``: with the aiohttp upstream transport instead of httpx's."""
    port, admin = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_EXPORTER")}
    env.pop("LLAMATELEMETRY_PROXY_UPSTREAM_CLIENT", None)
    if upstream_client:
        env["LLAMATELEMETRY_PROXY_UPSTREAM_CLIENT"] = upstream_client
    if tree:
        env["PYTHONPATH"] = os.pathsep.join([tree, env.get("PYTHONPATH", "")])
    # `python -m` puts the working directory first on sys.path: run in `tree`, or this checkout would win.
    proc = subprocess.Popen([sys.executable, "-m", "llamatelemetry.cli", "proxy", "--upstream", upstream,
                             "--port", str(port), "--admin-port", str(admin)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tree)
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
    """(seconds to first byte, seconds to the end, completion tokens) of one streamed chat.

    llama-server sometimes drops a fresh connection before answering ("Server disconnected without
    sending a response", see reference notes): nothing was processed, so that attempt is sent again.
    """
    for attempt in range(3):
        try:
            return _stream_once(client, url, max_tokens, ignore_eos)
        except httpx.RemoteProtocolError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _stream_once(client: httpx.Client, url: str, max_tokens: int, ignore_eos: bool) -> tuple[float, float, int]:
    body = {"messages": MESSAGES, "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}, **EXTRA}
    if ignore_eos:
        body["ignore_eos"] = True
    started = time.perf_counter()
    first = None
    data = bytearray()
    headers = {"authorization": f"Bearer {LITELLM_KEY}"}  # only LiteLLM checks it
    with client.stream("POST", url + "/v1/chat/completions", json=body, headers=headers) as resp:
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
    parser.add_argument("--litellm", action="store_true", help="also run LiteLLM's proxy on the same requests (needs litellm[proxy])")
    parser.add_argument("--litellm-path", metavar="DIR", help="where litellm[proxy] was installed with pip --target")
    parser.add_argument("--baseline", metavar="DIR", help="also run the proxy of another checkout (before/after in "
                        "one run), e.g. `git archive main | tar -x -C /tmp/base`")
    parser.add_argument("--aiohttp", action="store_true", help="run the gateway with each upstream client on the "
                        "same requests: httpx (h11, pure Python) and aiohttp (C HTTP parser)")
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(_llama_server(args.base_url))
        # With --aiohttp both upstream clients run, each pinned; else the gateway's default.
        proxy, admin, pid = stack.enter_context(_proxy(upstream, upstream_client="httpx" if args.aiohttp else None))
        peer = stack.enter_context(_litellm(upstream, args.litellm_path)) if args.litellm else None
        targets = {"direct": upstream, "proxy": proxy}
        pids = {"proxy": pid}
        admins = {"proxy": admin}
        if args.baseline:
            targets["baseline"], admins["baseline"], pids["baseline"] = stack.enter_context(_proxy(upstream, args.baseline))
        if args.aiohttp:
            targets["aiohttp"], admins["aiohttp"], pids["aiohttp"] = stack.enter_context(
                _proxy(upstream, upstream_client="aiohttp"))
        if peer is not None:
            targets["litellm"], pids["litellm"] = peer
        ttfb: dict[str, list[float]] = {name: [] for name in targets}
        long_total: dict[str, list[float]] = {name: [] for name in targets}
        cpu_short: dict[str, float] = {name: 0.0 for name in pids}
        cpu_long: dict[str, float] = {name: 0.0 for name in pids}
        # Idle connections dropped after 2 s: llama-server closes them after 5 s (see _base.DEFAULT_LIMITS).
        with httpx.Client(timeout=120, limits=httpx.Limits(keepalive_expiry=2.0)) as client:
            for name, url in targets.items():  # warm up connections and the prompt cache
                for _ in range(3):
                    try:
                        _stream(client, url, 8, False)
                    except httpx.HTTPError as exc:
                        raise SystemExit(f"{name} ({url}) failed: {exc!r}") from exc
            for _ in range(args.short):
                for name, url in targets.items():
                    before = _cpu_seconds(pids[name]) if name in pids else 0.0
                    first, _total, _tokens = _stream(client, url, 8, False)
                    ttfb[name].append(first)
                    if name in pids:
                        cpu_short[name] += _cpu_seconds(pids[name]) - before
            for _ in range(args.long):
                for name, url in targets.items():
                    before = _cpu_seconds(pids[name]) if name in pids else 0.0
                    _first, total, tokens = _stream(client, url, LONG_TOKENS, True)
                    assert tokens == LONG_TOKENS, f"{name}: {tokens} tokens instead of {LONG_TOKENS}"
                    long_total[name].append(total)
                    if name in pids:
                        cpu_long[name] += _cpu_seconds(pids[name]) - before
        time.sleep(0.5)
        for name, admin_url in admins.items():
            seen = httpx.get(admin_url + "/api/recent", params={"limit": 100000}).json()["requests"]
            streams = [r for r in seen if r["endpoint"] == "/v1/chat/completions"]
            assert len(streams) == 3 + args.short + args.long, f"{name} recorded {len(streams)} streams"
            assert all(r["output_tokens"] for r in streams), f"every stream through {name} should have its token count"

    d_ttfb, d_long = statistics.median(ttfb["direct"]), statistics.median(long_total["direct"])
    print(f"llama-server {upstream}; {args.short} short and {args.long} x {LONG_TOKENS}-token streams per variant, interleaved\n")
    print(f"| variant | median TTFB | vs direct | median {LONG_TOKENS}-token stream | ratio | proxy CPU per request (short / {LONG_TOKENS}-token) |")
    print("|---|---|---|---|---|---|")
    for name in targets:
        t, total = statistics.median(ttfb[name]), statistics.median(long_total[name])
        diff = "" if name == "direct" else f"+{(t - d_ttfb) * 1000:.2f} ms"
        cpu = "" if name not in pids else f"{cpu_short[name] / args.short * 1000:.2f} ms / {cpu_long[name] / args.long * 1000:.1f} ms"
        label = {"direct": "direct", "proxy": "llamatelemetry proxy" + (", httpx upstream client" if args.aiohttp else ""),
                 "litellm": "LiteLLM proxy",
                 "aiohttp": "llamatelemetry proxy, aiohttp upstream client",
                 "baseline": f"llamatelemetry proxy from {args.baseline}"}[name]
        print(f"| {label} | {t * 1000:.2f} ms | {diff} | {total * 1000:.1f} ms | {total / d_long:.3f}x | {cpu} |")
    p_ttfb, p_long = statistics.median(ttfb["proxy"]), statistics.median(long_total["proxy"])
    per_chunk = cpu_long["proxy"] / args.long / LONG_TOKENS
    print(f"\nllama-server streamed {LONG_TOKENS / d_long:.0f} tokens/s here (one SSE event per token); the gateway spent "
          f"{per_chunk * 1e6:.0f} us of CPU per relayed event, on the same cores as llama-server and this client.")
    print(f"targets: TTFB <= direct + 1 ms: {'met' if p_ttfb - d_ttfb <= 0.001 else 'NOT met'}; "
          f"{LONG_TOKENS}-token stream <= 1.05x: {'met' if p_long / d_long <= 1.05 else 'NOT met'}")
    if "aiohttp" in targets:
        a_ttfb, a_long = statistics.median(ttfb["aiohttp"]), statistics.median(long_total["aiohttp"])
        print(f"aiohttp upstream client: TTFB {(a_ttfb - p_ttfb) * 1000:+.2f} ms vs httpx, {LONG_TOKENS}-token stream "
              f"{a_long / p_long:.3f}x httpx's; CPU per {LONG_TOKENS}-token stream {cpu_long['aiohttp'] / args.long * 1000:.1f} ms "
              f"vs {cpu_long['proxy'] / args.long * 1000:.1f} ms")


if __name__ == "__main__":
    main()
