"""``llamatelemetry demo``: see the whole product in one command.

With no arguments it brings its own backend (the cached llama-server build, built on first
use, serving a small scripted reasoning model the package writes itself); ``--target URL``
uses your llama-server instead. It starts the sidecar exporter, sends a set of traced
requests, sends one request from the official openai SDK and one from the anthropic SDK
through the tracing gateway (``llamatelemetry proxy``), and prints what the telemetry saw
per request and the exporter's key metrics.
With the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` set (or ``--otlp-endpoint``) it also
exports the telemetry there, e.g. to the compose stack's collector.

Example::

    llamatelemetry demo
    llamatelemetry demo --target http://127.0.0.1:8080
    llamatelemetry demo --serve --server-args="-np 4 -c 8192"   # the scripted model with flags of your own
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 llamatelemetry demo
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator

HELP = "run a self-contained demo: llama-server + exporter + traced requests, then a summary"

log = logging.getLogger("llamatelemetry.demo")


class DemoError(RuntimeError):
    """Something the demo needs is missing; the message says what to do."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("Example::")[0].strip() if __doc__ else HELP
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--target", metavar="URL",
                        help="use this llama-server instead of starting the embedded one (start it with --metrics)")
    parser.add_argument("--api-key", default=os.environ.get("LLAMA_API_KEY"), help="API key of --target [LLAMA_API_KEY]")
    parser.add_argument("--otlp-endpoint", default=os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"), metavar="URL",
                        help="also export traces and metrics over OTLP here (http/protobuf, or grpc per OTEL_EXPORTER_OTLP_PROTOCOL) [OTEL_EXPORTER_OTLP_ENDPOINT]")
    parser.add_argument("--exporter-port", type=int, default=0,
                        help="port for the sidecar exporter (default: a free port)")
    parser.add_argument("--serve", action="store_true",
                        help="keep llama-server, the exporter and a gateway running after the summary, until Ctrl-C "
                             "(prints `export ...` lines with their URLs and the matching 'llamatelemetry top' command)")
    parser.add_argument("--no-router", action="store_true",
                        help="skip the router-mode part (two models behind one port, a swap, a cold start)")
    parser.add_argument("--server-args", default="", metavar="ARGS",
                        help="extra llama-server flags for the embedded server, one shell-quoted string "
                             "(e.g. --server-args=\"-np 4 -c 8192\"); added after the demo's own")


# --- telemetry the demo can both print and export -------------------------------------------

class _DemoTelemetry:
    """Spans kept in memory for the summary, and exported over OTLP too when an endpoint is given."""

    def __init__(self, otlp_endpoint: str | None) -> None:
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        from .telemetry.configure import configure, local_providers

        if otlp_endpoint:
            providers = configure("llamatelemetry-demo", endpoint=otlp_endpoint, export_interval_seconds=5, set_global=False)
        else:
            providers = local_providers("llamatelemetry-demo")
        self.spans = InMemorySpanExporter()
        providers.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.providers = providers
        self.tracer_provider = providers.tracer_provider
        self.meter_provider = providers.meter_provider

    def shutdown(self) -> None:
        self.providers.shutdown()


# --- provisioning: our own llama-server and model ----------------------------------------------------------------------------

@contextlib.contextmanager
def _embedded_server(server_args: str = "") -> Iterator[str]:
    import shlex
    import tempfile

    from .provision.build import BuildError, ServerBinaryError, cache_dir, ensure_llama_server
    from .provision.model import write_scripted_model
    from .provision.server import LlamaServer, LlamaServerStartError

    try:
        binary = ensure_llama_server()
    except ServerBinaryError as exc:  # nothing was built: the path the user gave is wrong
        raise DemoError(str(exc)) from exc
    except BuildError as exc:
        raise DemoError(f"could not build llama-server: {exc}") from exc
    model = cache_dir() / "models" / "scripted-reasoner.gguf"
    if not model.exists():
        try:
            write_scripted_model(model)
        except ImportError as exc:
            raise DemoError(f"writing the demo model needs the 'gguf' package: pip install 'llamatelemetry[demo]' ({exc})") from exc
    try:
        extra = shlex.split(server_args)
    except ValueError as exc:
        raise DemoError(f"--server-args {server_args!r} is not a valid shell-quoted string: {exc}") from exc
    # --slot-save-path: so every endpoint in the README (client.slots.save/restore) works against the demo.
    with tempfile.TemporaryDirectory(prefix="llamatelemetry-demo-slots-") as slots:
        server = LlamaServer(model, binary=binary, parallel=2,
                             extra_args=["--metrics", "--embeddings", "--pooling", "mean", "--slot-save-path", slots, *extra])
        print(f"starting llama-server ({binary}) with the scripted reasoning model ({model}) ...", flush=True)
        try:
            server.start()
        except LlamaServerStartError as exc:
            raise DemoError(str(exc)) from exc
        try:
            yield server.base_url
        finally:
            server.stop()


# --- the requests ---------------------------------------------------------------------------

HI = [{"role": "user", "content": "Say hello."}]


@dataclass
class Step:
    title: str
    run: Callable[[Any], Any]
    spans: int = 1


def _steps() -> list[Step]:
    def stream(client: Any) -> Any:
        with client.chat.completions.create(messages=HI, max_tokens=256, stream=True) as s:
            for _ in s:
                pass
            return s.get_final_completion()

    def concurrent(client: Any) -> Any:
        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(lambda _: client.chat_completion(messages=HI, max_tokens=256), range(4)))

    return [
        Step("plain chat (thinking off)", lambda c: c.chat_completion(messages=HI, max_tokens=256, chat_template_kwargs={"enable_thinking": False})),
        Step("streaming chat", stream),
        Step("reasoning chat", lambda c: c.chat_completion(messages=HI, max_tokens=256)),
        Step("reasoning runs out of max_tokens", lambda c: c.chat_completion(messages=HI, max_tokens=8)),
        Step("4 concurrent chats across the slots", concurrent, spans=4),
        Step("Anthropic-style /v1/messages", lambda c: c.messages.create(messages=HI, max_tokens=256)),
        Step("embedding", lambda c: c.embed("hello world")),
        Step("tokenize (no span: not an inference call)", lambda c: c.tokenize("hello world"), spans=0),
    ]


def _fmt(value: Any, unit: str = "", scale: float = 1.0, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value * scale:.{digits}f}{unit}"
    return f"{value}{unit}"


def _print_span(span: Any) -> None:
    from .telemetry import semconv as sc

    a = span.attributes
    duration = (span.end_time - span.start_time) / 1e6
    line = (
        f"    {span.name:<22} in={_fmt(a.get(sc.USAGE_INPUT_TOKENS)):>3} (cached {_fmt(a.get(sc.USAGE_CACHE_READ_INPUT_TOKENS)):>3}) "
        f"out={_fmt(a.get(sc.USAGE_OUTPUT_TOKENS)):>3} "
        f"reasoning={_fmt(a.get(sc.USAGE_REASONING_OUTPUT_TOKENS)):>3} "
        f"ttft={_fmt(a.get(sc.RESPONSE_TIME_TO_FIRST_CHUNK), 'ms', 1000):>8} duration={duration:.1f}ms "
        f"server={_fmt(a.get('llamacpp.timings.predicted_per_second'), ' tok/s', 1, 0)} "
        f"finish={','.join(a.get(sc.RESPONSE_FINISH_REASONS, ())) or '-'}"
    )
    print(line)
    if a.get(sc.REASONING_BUDGET_EXHAUSTED):
        print("      !! reasoning used up max_tokens and the answer is empty "
              f"({sc.REASONING_BUDGET_EXHAUSTED}=true; see the warning above)")
    if a.get(sc.ERROR_TYPE):
        print(f"      !! error: {a[sc.ERROR_TYPE]}")


def _spans_after(telemetry: _DemoTelemetry, before: int, expected: int, timeout: float = 10.0) -> list[Any]:
    """The spans that ended after the first ``before``, once ``expected`` of them have (or ``timeout`` passed)."""
    deadline = time.monotonic() + timeout
    while len(telemetry.spans.get_finished_spans()) < before + expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return list(telemetry.spans.get_finished_spans()[before:])


_KEY_METRICS = (
    "llamatelemetry_target_up", "llamatelemetry_server_state", "llamacpp_prompt_tokens_total",
    "llamacpp_tokens_predicted_total", "llamacpp_requests_processing", "llamacpp_requests_deferred",
    "llamatelemetry_slot_context_utilization_ratio", "llamatelemetry_collector_up",
)


def _print_exporter_metrics(exporter_url: str) -> None:
    import httpx

    from .promtext import parse_prometheus_text

    text = httpx.get(exporter_url + "/metrics", timeout=10).text
    print(f"\nExporter {exporter_url}/metrics (key series):")
    for family in parse_prometheus_text(text):
        for sample in family.samples:
            base = sample.name.removesuffix("_total") if family.type != "counter" else sample.name
            if sample.name in _KEY_METRICS or base in _KEY_METRICS:
                if sample.name == "llamatelemetry_server_state" and not sample.value:
                    continue
                labels = ",".join(f'{k}="{v}"' for k, v in sample.labels.items())
                print(f"    {sample.name}{{{labels}}} {sample.value:g}")


def _through_proxy(base_url: str, api_key: str | None, telemetry: _DemoTelemetry) -> None:
    """One request from each official SDK through ``llamatelemetry proxy``: the same spans, no code change."""
    try:
        import anthropic
        import openai

        from .proxy import Gateway, GatewayConfig, Route
    except ImportError as exc:
        print(f"\n  (gateway part skipped: {exc}; pip install 'llamatelemetry[demo]')")
        return
    config = GatewayConfig(routes=[Route(0, base_url)], admin_port=0)
    with Gateway(config, tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider) as gateway:
        url = gateway.urls[0]
        print(f"\nllamatelemetry proxy {url} -> {base_url}; the official SDKs, pointed at the gateway:\n")
        key = api_key or "none"
        hi: Any = HI  # the SDKs' message TypedDicts; HI is the same plain dict
        calls = [
            ("openai SDK (OPENAI_BASE_URL=<proxy>/v1)", lambda: openai.OpenAI(base_url=url + "/v1", api_key=key).chat.completions.create(
                model="scripted", messages=hi, max_tokens=256)),
            ("anthropic SDK (ANTHROPIC_BASE_URL=<proxy>)", lambda: anthropic.Anthropic(base_url=url, api_key=key).messages.create(
                model="scripted", max_tokens=256, messages=hi)),
        ]
        for title, call in calls:
            before = len(telemetry.spans.get_finished_spans())
            print(f"  {title}")
            try:
                call()
            except (openai.APIError, anthropic.APIError) as exc:
                print(f"    failed: {exc}")
                continue
            gateway.drain()  # the gateway ends its span in the background, just after the answer
            for span in _spans_after(telemetry, before, 1):
                _print_span(span)
                client = (span.attributes or {}).get("llamatelemetry.client.name")
                print(f"      client={client} kind=SERVER (the gateway's span)")


@contextlib.contextmanager
def _serving_gateway(base_url: str) -> Iterator[Any]:
    """A gateway kept running with ``--serve``, with its own metrics on its admin port (what ``top`` reads);
    ``None`` when the gateway's extra is not installed."""
    try:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import CollectorRegistry

        from .proxy import Gateway, GatewayConfig, Route
        from .telemetry.configure import local_providers
    except ImportError:
        yield None
        return
    registry = CollectorRegistry()
    providers = local_providers("llamatelemetry-demo-gateway", metric_readers=[PrometheusMetricReader(registry=registry)])
    try:
        with Gateway(GatewayConfig(routes=[Route(0, base_url)], admin_port=0), tracer_provider=providers.tracer_provider,
                     meter_provider=providers.meter_provider, registry=registry) as gateway:
            yield gateway
    finally:
        providers.shutdown()


def serve_exports(server_url: str, exporter_url: str, gateway_url: str | None, admin_url: str | None) -> str:
    """The ``export`` lines ``--serve`` prints: paste them into another shell and the README's snippets and
    commands (written for the default ports) reach the demo's services instead.

    Example::

        >>> print(serve_exports("http://127.0.0.1:4000", "http://127.0.0.1:4001", None, None))
        # In another shell, to use the README's examples against this demo:
        export LLAMA_SERVER_URL=http://127.0.0.1:4000
        export LLAMATELEMETRY_TOP_EXPORTER=http://127.0.0.1:4001
    """
    lines = ["# In another shell, to use the README's examples against this demo:",
             f"export LLAMA_SERVER_URL={server_url}"]
    if gateway_url is not None:
        lines += [f"export OPENAI_BASE_URL={gateway_url}/v1 OPENAI_API_KEY=local",
                  f"export ANTHROPIC_BASE_URL={gateway_url} ANTHROPIC_AUTH_TOKEN=local"]
    lines.append(f"export LLAMATELEMETRY_TOP_EXPORTER={exporter_url}")
    if admin_url is not None:
        lines.append(f"export LLAMATELEMETRY_TOP_GATEWAY={admin_url}")
    return "\n".join(lines)


def _run_demo(args: argparse.Namespace, base_url: str, stop: threading.Event) -> None:
    from . import LlamaCppClient, errors
    from .exporter.server import ExporterApp, ExporterConfig

    telemetry = _DemoTelemetry(args.otlp_endpoint)
    # GPU series only when NVML finds a real GPU; the demo never makes one up.
    exporter = ExporterApp(ExporterConfig(targets=[f"demo={base_url}"], port=args.exporter_port, api_key=args.api_key))
    exporter.start()
    try:
        with LlamaCppClient(base_url, api_key=args.api_key, tracer_provider=telemetry.tracer_provider,
                            meter_provider=telemetry.meter_provider) as client:
            health = client.health.check()
            if health.status == "unreachable":  # fail at once; only a loading model is worth waiting for
                raise DemoError(f"llama-server at {base_url} is not reachable: {health.message}")
            try:
                client.health.wait_until_ready(timeout=120)
            except errors.LlamaCppError as exc:
                raise DemoError(str(exc)) from exc
            print(f"\nllama-server {base_url} is ready; sending traced requests:\n")
            for step in _steps():
                if stop.is_set():
                    return
                before = len(telemetry.spans.get_finished_spans())
                print(f"  {step.title}")
                try:
                    step.run(client)
                except errors.LlamaCppError as exc:
                    print(f"    failed: {exc}")
                # Spans may end in the background (a reasoning count's /tokenize): wait for this step's
                # own, so each prints under its heading and none spills into the next section.
                client.flush_telemetry()
                for span in _spans_after(telemetry, before, step.spans):
                    _print_span(span)
            if not stop.is_set():
                _through_proxy(base_url, args.api_key, telemetry)
        _print_exporter_metrics(exporter.url)
        if not (args.target or args.no_router or stop.is_set()):  # router mode needs our own build (see demo_router)
            from .demo_router import run_router_demo

            run_router_demo(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider,
                            spans=telemetry.spans)
        if args.otlp_endpoint:
            telemetry.tracer_provider.force_flush(5000)
            telemetry.meter_provider.force_flush(5000)
            print(f"\nTelemetry exported over OTLP to {args.otlp_endpoint}.")
        if args.serve:
            with _serving_gateway(base_url) as gateway:
                if gateway is None:
                    print(f"\nServing: llama-server {base_url}, exporter {exporter.url}/metrics. Ctrl-C to stop.")
                    top = f"llamatelemetry top --exporter {exporter.url}"
                else:
                    print(f"\nServing: llama-server {base_url}, exporter {exporter.url}/metrics, gateway {gateway.urls[0]} "
                          f"(point your agents here; admin {gateway.admin_url}). Ctrl-C to stop.")
                    top = f"llamatelemetry top --exporter {exporter.url} --gateway {gateway.admin_url}"
                print(f"Live view: run `{top}` in another terminal.")
                print(serve_exports(base_url, exporter.url, gateway.urls[0] if gateway else None,
                                    gateway.admin_url if gateway else None), flush=True)
                stop.wait()
    finally:
        exporter.stop()
        telemetry.shutdown()


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    started = time.monotonic()
    try:
        with (contextlib.nullcontext(args.target.rstrip("/")) if args.target else _embedded_server(args.server_args)) as base_url:
            _run_demo(args, base_url, stop)
    except DemoError as exc:
        print(f"llamatelemetry demo: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"llamatelemetry demo: missing a dependency ({exc}); install with: pip install 'llamatelemetry[demo]'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; everything the demo started is stopped.", file=sys.stderr)
        return 130
    finally:
        stop.set()
        signal.signal(signal.SIGTERM, previous)
    print(f"\ndone in {time.monotonic() - started:.1f}s; everything the demo started is stopped.")
    return 0
