"""Client overhead: CPU time per call, side by side in one process, against one llama-server.

Variants: raw httpx, LlamaCppClient (telemetry off), LlamaCppClient with telemetry (OTel SDK
configured), the openai SDK, and the openai SDK with the official OpenTelemetry
instrumentation (opentelemetry-instrumentation-genai-openai). Non-streaming and streaming.
Prints CPU milliseconds per call (this process only: the server's work is not counted) and
the ratio to raw httpx. Rounds interleave the variants so drift hits all of them alike.

Usage::

    pip install -e '.[bench]'
    python benchmarks/bench_client.py                      # starts its own llama-server (scripted model)
    python benchmarks/bench_client.py --base-url http://127.0.0.1:8080 --calls 200
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import httpx

MESSAGES = [{"role": "user", "content": "hi"}]
# Thinking off: the scripted model answers with 4 tokens, like a short real answer.
EXTRA = {"chat_template_kwargs": {"enable_thinking": False}}


class _DropSpans:
    """A span exporter that counts and discards: measures instrumentation cost, not network export."""

    def __init__(self) -> None:
        self.exported = 0

    def export(self, spans):  # noqa: ANN001
        from opentelemetry.sdk.trace.export import SpanExportResult

        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 0) -> bool:
        return True


EXPORTERS: list[tuple[object, _DropSpans]] = []  # (tracer provider, its exporter), to check who made spans


def sdk_providers():
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    tracer_provider = TracerProvider()
    exporter = _DropSpans()
    tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    EXPORTERS.append((tracer_provider, exporter))
    return tracer_provider, MeterProvider(metric_readers=[InMemoryMetricReader()])


def spans_exported() -> int:
    """Spans exported so far by every SDK provider of the benchmark (flushed first)."""
    for provider, _ in EXPORTERS:
        provider.force_flush()  # type: ignore[attr-defined]
    return sum(exporter.exported for _, exporter in EXPORTERS)


def make_variants(base_url: str) -> dict[str, tuple[Callable[[], None], Callable[[], None]]]:
    """name -> (non-streaming call, streaming call)."""
    import openai
    from opentelemetry.instrumentation.genai.openai import OpenAIInstrumentor

    from llamatelemetry import LlamaCppClient

    body = {"messages": MESSAGES, "max_tokens": 8, **EXTRA}
    raw = httpx.Client(timeout=60)

    def raw_post(**kw):  # noqa: ANN003
        # llama-server sometimes drops a pooled keep-alive connection; every client must retry that.
        for attempt in range(3):
            try:
                return raw.post(base_url + "/v1/chat/completions", **kw)
            except httpx.RemoteProtocolError:
                if attempt == 2:
                    raise

    def raw_call() -> None:
        data = raw_post(json=body).json()
        assert data["choices"][0]["message"]["content"]

    def raw_stream() -> None:
        for attempt in range(3):
            try:
                with raw.stream("POST", base_url + "/v1/chat/completions",
                                json={**body, "stream": True, "stream_options": {"include_usage": True}}) as response:
                    for line in response.iter_lines():
                        if line.startswith("data: ") and line != "data: [DONE]":
                            json.loads(line[6:])
                return
            except httpx.RemoteProtocolError:
                if attempt == 2:
                    raise

    ours = LlamaCppClient(base_url, telemetry=False)
    tp, mp = sdk_providers()
    ours_tel = LlamaCppClient(base_url, tracer_provider=tp, meter_provider=mp)
    from opentelemetry.metrics import NoOpMeterProvider
    from opentelemetry.trace import NoOpTracerProvider

    ours_api_only = LlamaCppClient(base_url, tracer_provider=NoOpTracerProvider(), meter_provider=NoOpMeterProvider())
    oai = openai.OpenAI(base_url=base_url + "/v1", api_key="none")
    oai_tp, oai_mp = sdk_providers()
    instrumentor = OpenAIInstrumentor()

    def ours_call(client: LlamaCppClient) -> Callable[[], None]:
        return lambda: client.chat.completions.create(messages=MESSAGES, max_tokens=8, chat_template_kwargs=EXTRA["chat_template_kwargs"])

    def ours_stream(client: LlamaCppClient) -> Callable[[], None]:
        def run() -> None:
            for _ in client.chat.completions.create(messages=MESSAGES, max_tokens=8, stream=True,
                                                    chat_template_kwargs=EXTRA["chat_template_kwargs"]):
                pass
        return run

    def oai_call() -> None:
        oai.chat.completions.create(model="x", messages=MESSAGES, max_tokens=8, extra_body=EXTRA)

    def oai_stream() -> None:
        for _ in oai.chat.completions.create(model="x", messages=MESSAGES, max_tokens=8, stream=True,
                                             stream_options={"include_usage": True}, extra_body=EXTRA):
            pass

    @contextlib.contextmanager
    def instrumented():
        instrumentor.instrument(tracer_provider=oai_tp, meter_provider=oai_mp)
        try:
            yield
        finally:
            instrumentor.uninstrument()

    def with_instrumentation(fn: Callable[[], None]) -> Callable[[], None]:
        # A new function object: marking `fn` itself would switch the instrumentation on for the
        # plain "openai" variant too (it shares `oai_call`), hiding the official stack's cost.
        def instrumented_fn() -> None:
            fn()

        instrumented_fn.instrumented = instrumented  # type: ignore[attr-defined]
        return instrumented_fn

    return {
        "raw httpx": (raw_call, raw_stream),
        "llamatelemetry": (ours_call(ours), ours_stream(ours)),
        # Telemetry on but no SDK configured (the OTel API's no-op providers): our own per-call cost.
        "llamatelemetry + telemetry, no SDK": (ours_call(ours_api_only), ours_stream(ours_api_only)),
        "llamatelemetry + telemetry": (ours_call(ours_tel), ours_stream(ours_tel)),
        "openai": (oai_call, oai_stream),
        "openai + official OTel": (with_instrumentation(oai_call), with_instrumentation(oai_stream)),
    }


#: Variants that must produce one span per call; every other variant must produce none.
TRACED = {"llamatelemetry + telemetry", "openai + official OTel"}


def cpu_per_call(name: str, fn: Callable[[], None], calls: int) -> float:
    ctx = getattr(fn, "instrumented", contextlib.nullcontext)
    before = spans_exported()
    with ctx():
        fn()  # warm up (connection, default-model lookup)
        gc.collect()
        started = time.process_time()
        for _ in range(calls):
            fn()
        cpu = (time.process_time() - started) / calls * 1000
    made = spans_exported() - before
    # Honest comparison: an instrumented variant did its work, a plain one did none.
    expected = calls + 1 if name in TRACED else 0
    assert made == expected, f"{name}: {made} spans for {calls + 1} calls (expected {expected})"
    return cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", help="a running llama-server (default: start one with the scripted model)")
    parser.add_argument("--calls", type=int, default=150, help="calls per variant per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        base_url = args.base_url
        if not base_url:
            from llamatelemetry.provision.model import write_scripted_model
            from llamatelemetry.provision.server import LlamaServer

            model = write_scripted_model(Path(stack.enter_context(tempfile.TemporaryDirectory())) / "m.gguf")
            base_url = stack.enter_context(LlamaServer(model, extra_args=["--metrics"])).base_url
        variants = make_variants(base_url)
        results: dict[str, dict[str, list[float]]] = {name: {"chat": [], "stream": []} for name in variants}
        for _ in range(args.rounds):
            for name, (call, stream) in variants.items():
                results[name]["chat"].append(cpu_per_call(name, call, args.calls))
                results[name]["stream"].append(cpu_per_call(name, stream, args.calls))

    base = {kind: statistics.median(results["raw httpx"][kind]) for kind in ("chat", "stream")}
    print(f"CPU per call (median of {args.rounds} rounds x {args.calls} calls), ratio to raw httpx")
    print(f"{'variant':<36}{'chat ms':>10}{'ratio':>8}{'stream ms':>12}{'ratio':>8}")
    for name, res in results.items():
        chat, stream = statistics.median(res["chat"]), statistics.median(res["stream"])
        print(f"{name:<36}{chat:>10.3f}{chat / base['chat']:>7.2f}x{stream:>12.3f}{stream / base['stream']:>7.2f}x")
    print("every traced variant exported one span per call, every other variant none (asserted)")


if __name__ == "__main__":
    main()
