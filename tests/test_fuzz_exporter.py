"""The exporter against a target that answers every endpoint — ``/metrics``, ``/slots``, ``/props`` — with a
body that never ends: its memory stays bounded (each body is cut at its byte cap) and the other target is
scraped in time. The misbehaving target is a local HTTP server (a real llama-server cannot do this)."""

from __future__ import annotations

import time
import tracemalloc

from prom_helpers import one, pick, scrape
from test_exporter_badinput import endless, exporter, fakes  # noqa: F401 - fixtures and a route

from llamatelemetry.exporter.fetch import DEFAULT_MAX_BYTES


def _endless_text(h) -> None:  # noqa: ANN001 - an endless /metrics of valid-looking lines
    h.send_response(200)
    h.send_header("Content-Type", "text/plain; version=0.0.4")
    h.send_header("Connection", "close")
    h.end_headers()
    chunk = b"llamacpp:tokens_predicted_total 1\n" * 2000
    try:
        for _ in range(100_000):
            h.wfile.write(chunk)
    except OSError:
        pass


def test_endless_answers_on_every_endpoint_are_capped_and_do_not_stall_others(fakes, exporter) -> None:  # noqa: F811
    hostile = fakes(metrics=_endless_text, slots=endless, props=endless)
    app = exporter({"hostile": hostile.url, "good": fakes().url}, timeout=3.0)
    tracemalloc.start()
    try:
        for _ in range(3):
            started = time.perf_counter()
            s = scrape(app.url)
            took = time.perf_counter() - started
            assert took < 4.0, f"a scrape took {took:.1f} s: the endless bodies were read past their cap"
            assert one(s, "llamatelemetry_target_up", target="good") == 1
            assert one(s, "llamacpp_tokens_predicted_total", target="good") == 7
            assert not pick(s, "llamatelemetry_slot_processing", target="hostile")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # three capped bodies per scrape (plus parsing them) is the most the exporter may hold at once
    print(f"peak traced memory over 3 scrapes: {peak / 2**20:.1f} MiB (cap {DEFAULT_MAX_BYTES / 2**20:.0f} MiB per body)")
    assert peak < 3 * DEFAULT_MAX_BYTES * 2 + 16 * 2**20
