"""A shortened soak of the gateway (``benchmarks/soak_proxy.py``; the full one runs 5 minutes with 32
clients): real llama-server with 4 slots, mixed agents, an upstream crash and restart halfway, spans
received over OTLP/HTTP. Nothing may be lost and the gateway must come back to idle."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import soak_proxy  # noqa: E402


def test_short_soak_loses_nothing_and_returns_to_idle(llama_server_binary, tmp_path):
    report = soak_proxy.soak(25, 8, work_dir=tmp_path)
    print(report)
    assert report["requests"] > 200
    assert set(report["by_kind"]) == {"chat", "stream", "messages_stream", "empty", "disconnect", "probe"}
    assert report["spans"] == report["requests"], "a request's span was lost (or one too many)"
    assert report["spans_with_usage"] >= report["answers_with_usage"], "a span lacks the usage its answer carried"
    assert not report["client_errors"], "a client got no answer (a hang or a dropped connection)"
    assert report["slots_busy_end"] == 0
    assert report["upstream_connections_end"] == 0
    assert report["end"]["fds"] <= report["after_warmup"]["fds"] + 2
    assert abs(report["rss_change"]) < 0.10, "the gateway's memory kept growing"
    # the restart is seen as such: requests in flight at the crash are UpstreamClosedError / interrupted streams
    assert set(report["span_errors"]) <= {"UpstreamClosedError", "StreamInterruptedError", "APIConnectionError", "503"}
