"""Security defaults, checked against the running code: every server llamatelemetry starts listens on
127.0.0.1 unless told otherwise (read back from the kernel's socket table, not from our config), and an
API key sent through the gateway never reaches its logs, spans, metrics or ``/api/recent`` — with
content capture on, the most it ever records. (The exporter's key handling is in
``test_exporter_badinput.py``/``test_exporter_probe.py``, the client's in ``test_telemetry.py``; the
containers' users in ``test_stack_config.py``/``test_kubernetes.py``.)
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import socket
from urllib.parse import urlsplit

import httpx
import openai
import pytest
from proxy_helpers import running_gateway

import llamatelemetry
from llamatelemetry.cli import SUBCOMMANDS
from llamatelemetry.exporter import ExporterApp, ExporterConfig
from llamatelemetry.provision.server import free_port
from llamatelemetry.proxy import Gateway, GatewayConfig, Route

SECRET = "sk-review-secret-4d1f"


def _listening_addresses(port: int) -> set[str]:
    """The local addresses the kernel has a TCP listener on for ``port`` (IPv4 and IPv6 tables)."""
    found: set[str] = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = open(table).read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                # /proc prints each 32-bit word in host (little-endian) order
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(socket.inet_ntop(socket.AF_INET if width == 8 else socket.AF_INET6, words))
    return found


def _port(url: str) -> int:
    return int(urlsplit(url).port or 0)


def test_listening_address_reader_sees_a_wildcard_listener() -> None:
    """The helper tells 0.0.0.0 from 127.0.0.1, so the tests below could fail."""
    with socket.socket() as everywhere, socket.socket() as local:
        everywhere.bind(("0.0.0.0", 0)); everywhere.listen()
        local.bind(("127.0.0.1", 0)); local.listen()
        assert _listening_addresses(everywhere.getsockname()[1]) == {"0.0.0.0"}
        assert _listening_addresses(local.getsockname()[1]) == {"127.0.0.1"}


def test_gateway_and_its_admin_port_listen_on_loopback_by_default() -> None:
    with Gateway(GatewayConfig(routes=[Route(0, f"http://127.0.0.1:{free_port()}")], admin_port=0)) as gateway:
        for url in (*gateway.urls, gateway.admin_url):
            assert _listening_addresses(_port(url)) == {"127.0.0.1"}, url


def test_exporter_listens_on_loopback_by_default() -> None:
    with ExporterApp(ExporterConfig(targets=[f"http://127.0.0.1:{free_port()}"], port=0, gpu=False)) as exporter:
        assert _listening_addresses(_port(exporter.url)) == {"127.0.0.1"}


def test_client_prometheus_endpoint_listens_on_loopback_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_PROMETHEUS_HOST", raising=False)
    port = free_port()
    providers = llamatelemetry.configure(prometheus=True, prometheus_port=port, otlp=False, set_global=False)
    try:
        assert providers.prometheus_url == f"http://127.0.0.1:{port}/metrics"
        assert _listening_addresses(port) == {"127.0.0.1"}
    finally:
        providers.shutdown()


@pytest.mark.parametrize("command", ["exporter", "proxy"])
def test_command_line_default_is_loopback(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("LLAMATELEMETRY_EXPORTER_LISTEN", "LLAMATELEMETRY_PROXY_LISTEN"):
        monkeypatch.delenv(variable, raising=False)
    parser = argparse.ArgumentParser()
    importlib.import_module(SUBCOMMANDS[command]).add_arguments(parser)
    assert parser.parse_args([]).listen == "127.0.0.1"


def test_api_key_never_leaves_the_gateway(full_server, caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    caplog.set_level(logging.DEBUG)
    dead = f"http://127.0.0.1:{free_port()}"  # an unreachable upstream: the error path logs too
    with running_gateway(full_server.base_url, dead, capture_content=True) as gw:
        live, broken = gw.gateway.urls  # type: ignore[union-attr]
        client = openai.OpenAI(base_url=live + "/v1", api_key=SECRET, max_retries=0,
                               default_headers={"x-api-key": SECRET})
        hi = [{"role": "user", "content": "hi"}]
        client.chat.completions.create(model="scripted", messages=hi, max_tokens=64)  # type: ignore[arg-type]
        list(client.chat.completions.create(model="scripted", messages=hi, max_tokens=64, stream=True))  # type: ignore[arg-type]
        failed = httpx.post(broken + "/v1/chat/completions", headers={"Authorization": f"Bearer {SECRET}"},
                            json={"messages": hi, "max_tokens": 8}, timeout=10)
        assert failed.status_code == 502
        spans = gw.wait_for_spans(3)
        recent = httpx.get(gw.admin_url + "/api/recent", timeout=5).text
        metrics = httpx.get(gw.admin_url + "/metrics", timeout=5).text
    recorded = [json.dumps(dict(span.attributes), default=str) for span in spans]
    recorded += [json.dumps(dict(event.attributes or {}), default=str) for span in spans for event in span.events]
    assert any("gen_ai.output.messages" in text for text in recorded)  # content capture was really on
    for where, text in [("spans", "\n".join(recorded)), ("/api/recent", recent), ("/metrics", metrics),
                        ("logs", caplog.text), ("502 body", failed.text)]:
        assert SECRET not in text, f"the API key leaked into {where}"
