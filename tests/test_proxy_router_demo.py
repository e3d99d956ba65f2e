"""The router part of ``llamatelemetry demo`` (llamatelemetry/demo_router.py), run in-process against the real build."""

from __future__ import annotations

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from llamatelemetry.demo_router import run_router_demo


def test_router_demo_shows_swap_cold_starts_and_exporter_series(llama_server_binary, scripted_model) -> None:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    lines: list[str] = []
    assert run_router_demo(tracer_provider=tracer_provider, meter_provider=MeterProvider(), spans=spans, out=lines.append,
                           binary=llama_server_binary, model=scripted_model)
    text = "\n".join(lines)
    routed = [line for line in lines if "request.model=" in line]
    # coder cold, coder warm, agent cold (the swap), coder cold again (it was evicted)
    assert [("coder" if "request.model=coder" in line else "agent", "COLD START" in line) for line in routed] == [
        ("coder", True), ("coder", False), ("agent", True), ("coder", True)], text
    assert "(was unloaded)" in routed[0] and "response.model=coder" in routed[0]
    # what the exporter reports for the router: one state per model, the loads counted from the event stream
    assert 'llamatelemetry_model_state{' in text and 'state="loaded"' in text, text
    # the swap, counted by the exporter from the router's event stream: coder loaded twice, agent once
    assert 'llamatelemetry_model_loads_total{model="coder",target="router"} 2' in text, text
    assert 'llamatelemetry_model_loads_total{model="agent",target="router"} 1' in text, text
    assert 'llamatelemetry_model_state{model="coder",state="loaded",target="router"} 1' in text, text
