"""The router-mode part of ``llamatelemetry demo``: two models behind one port, a swap, a cold start.

llama-server in router mode (``--models-dir``, no ``-m``) serves many models from one port, each a
child process started on demand; with ``--models-max 1`` asking for the other model swaps them.
This part starts such a router over two copies of the scripted model (``coder`` and ``agent``),
the exporter and the gateway in front of it, sends requests through the gateway with the official
openai SDK — coder (cold: it waits for the load), coder again (warm), agent (a swap), coder (cold
again) — and prints each span's routed model and cold-start mark, then what the exporter reports
per model.

Example::

    from llamatelemetry.demo_router import run_router_demo
    run_router_demo(tracer_provider=tp, meter_provider=mp, spans=in_memory_exporter)
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

#: The two models of the demo's router (file names in its --models-dir).
MODELS = ("coder", "agent")
#: coder cold, coder warm, agent (swap: coder is evicted), coder cold again.
SEQUENCE = ("coder", "coder", "agent", "coder")
#: What the demo prints from the exporter (series the exporter writes for a router target).
ROUTER_SERIES = ("llamatelemetry_router_info", "llamatelemetry_model_state", "llamatelemetry_model_loads_total",
                 "llamatelemetry_model_unloads_total", "llamatelemetry_model_load_duration_seconds_count",
                 "llamatelemetry_model_load_duration_seconds_sum")

HI = [{"role": "user", "content": "Say hello."}]


def span_line(span: "ReadableSpan") -> str:
    """One span of a routed request: the model asked for and answered, and the cold-start mark with its wait.

    Example::

        "chat coder  request.model=coder response.model=coder  COLD START: waited 0.31s for the model (was unloaded)"
    """
    from .telemetry import semconv as sc

    a = span.attributes or {}
    line = f"    {span.name:<12} request.model={a.get(sc.REQUEST_MODEL)!s} response.model={a.get(sc.RESPONSE_MODEL, '-')!s}"
    if a.get(sc.MODEL_COLD_START):
        wait = a.get(sc.MODEL_LOAD_WAIT)
        waited = f"waited {wait:.2f}s" if isinstance(wait, float) else "waited"
        line += f"  COLD START: {waited} for the model (was {str(a.get(sc.MODEL_STATE_BEFORE))})"
    else:
        line += "  warm (model already loaded)"
    error_type = a.get(sc.ERROR_TYPE)
    if isinstance(error_type, str) and error_type:
        line += f"  error.type={error_type}"
    return line


def exporter_lines(text: str, series: Sequence[str] = ROUTER_SERIES) -> list[str]:
    """The router series of an exporter page, one line each (state series only for the current state)."""
    from .promtext import parse_prometheus_text

    lines = []
    for family in parse_prometheus_text(text):
        for sample in family.samples:
            if sample.name not in series:
                continue
            if sample.name == "llamatelemetry_model_state" and not sample.value:
                continue
            labels = ",".join(f'{k}="{v}"' for k, v in sample.labels.items())
            lines.append(f"    {sample.name}{{{labels}}} {sample.value:g}")
    return lines


def _until_exporter_follows(exporter_url: str, timeout: float = 10.0) -> None:
    """Scrape until the exporter follows the router's event stream (it starts on the first scrape), so the
    loads about to happen are counted as they happen rather than inferred later."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            page = httpx.get(exporter_url + "/metrics", timeout=10).text
            if any(line.startswith("llamatelemetry_router_events_up{") and line.endswith(" 1.0") for line in page.splitlines()):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)


def run_router_demo(*, tracer_provider: "TracerProvider", meter_provider: "MeterProvider", spans: "InMemorySpanExporter",
                    out: Callable[[str], None] = print, binary: Path | None = None, model: Path | None = None) -> bool:
    """Run the router part (see module docs); False when something it needs is missing (it says what)."""
    try:
        import httpx
        import openai

        from .exporter.server import ExporterApp, ExporterConfig
        from .provision.build import cache_dir, ensure_llama_server
        from .provision.model import write_scripted_model
        from .provision.router import RouterServer, write_models_dir
        from .proxy import Gateway, GatewayConfig, Route
    except ImportError as exc:
        out(f"\n  (router part skipped: {exc}; pip install 'llamatelemetry[demo]')")
        return False
    source = model or cache_dir() / "models" / "scripted-reasoner.gguf"
    if not source.exists():
        write_scripted_model(source)
    workdir = Path(tempfile.mkdtemp(prefix="llamatelemetry-demo-router-"))
    try:
        models_dir = write_models_dir(workdir / "models", MODELS, source=source)
        out(f"\nRouter mode: one llama-server, models {', '.join(MODELS)} (--models-dir), --models-max 1 "
            "(asking for the other model swaps them):")
        with RouterServer(models_dir, models_max=1, extra_args=["--metrics"], binary=binary or ensure_llama_server()) as router, \
                ExporterApp(ExporterConfig(targets=[f"router={router.base_url}"], port=0, gpu=False)) as exporter, \
                Gateway(GatewayConfig(routes=[Route(0, router.base_url)], admin_port=0),
                        tracer_provider=tracer_provider, meter_provider=meter_provider) as gateway:
            out(f"  router {router.base_url}, gateway {gateway.urls[0]}, exporter {exporter.url}/metrics\n")
            _until_exporter_follows(exporter.url)
            client = openai.OpenAI(base_url=gateway.urls[0] + "/v1", api_key="none", max_retries=0, timeout=120)
            hi: list[dict[str, str]] = HI
            for name in SEQUENCE:
                before = len(spans.get_finished_spans())
                out(f"  chat with model={name!r}")
                try:
                    client.chat.completions.create(model=name, messages=hi, max_tokens=16)  # type: ignore[arg-type]
                except openai.APIError as exc:
                    out(f"    failed: {exc}")
                gateway.drain()
                deadline = time.monotonic() + 5
                while len(spans.get_finished_spans()) == before and time.monotonic() < deadline:
                    time.sleep(0.01)
                for span in spans.get_finished_spans()[before:]:
                    if span.kind.name == "SERVER":
                        out(span_line(span))
            client.close()
            page = httpx.get(exporter.url + "/metrics", timeout=30).text
            out(f"\n  Exporter {exporter.url}/metrics (router series; nothing here loaded or woke a model):")
            for line in exporter_lines(page) or ["    (no router series: this exporter build does not read routers)"]:
                out(line)
        return True
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
