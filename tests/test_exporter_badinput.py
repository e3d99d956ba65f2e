"""The exporter against misbehaving servers: garbage or truncated /metrics, non-JSON /slots, huge
answers, slow answers, auth failures, router mode. A tiny local HTTP server plays llama-server."""

from __future__ import annotations

import json
import logging
import socket
import time
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable, Iterator

import httpx
import pytest
from loopback import LoopbackHTTPServer
from prom_helpers import one, pick, scrape

from llamatelemetry.exporter import ExporterApp, ExporterConfig

GOOD_METRICS = (
    "# HELP llamacpp:tokens_predicted_total Number of generation tokens processed.\n"
    "# TYPE llamacpp:tokens_predicted_total counter\n"
    "llamacpp:tokens_predicted_total 7\n"
    "# HELP llamacpp:n_tokens_max Largest observed n_tokens.\n"
    "# TYPE llamacpp:n_tokens_max counter\n"
    "llamacpp:n_tokens_max 99\n"
    "# HELP llamacpp:requests_processing Number of requests processing.\n"
    "# TYPE llamacpp:requests_processing gauge\n"
    "llamacpp:requests_processing 1\n"
)
GOOD_SLOTS = json.dumps([{"id": 0, "n_ctx": 1000, "is_processing": True, "n_prompt_tokens": 250}, {"id": 1, "n_ctx": 1000, "is_processing": False}])
GOOD_PROPS = json.dumps({"model_alias": "m", "total_slots": 2, "default_generation_settings": {"n_ctx": 1000}, "build_info": "b1-abc"})

Route = Callable[[BaseHTTPRequestHandler], None]


def reply(status: int, body: str | bytes, content_type: str = "application/json") -> Route:
    data = body.encode() if isinstance(body, str) else body

    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        try:
            h.wfile.write(data)
        except OSError:
            pass  # the exporter hung up (e.g. over its byte cap): expected

    return route


def endless(h: BaseHTTPRequestHandler) -> None:
    """A body without Content-Length that never ends (until the client hangs up)."""
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Connection", "close")
    h.end_headers()
    chunk = b"[" + b'{"id": 0},' * 6000
    try:
        for _ in range(100_000):
            h.wfile.write(chunk)
    except OSError:
        pass


def sleepy(seconds: float, then: Route) -> Route:
    def route(h: BaseHTTPRequestHandler) -> None:
        time.sleep(seconds)
        then(h)

    return route


class FakeLlama:
    """A local HTTP server whose routes (path → handler) the test sets; records request headers."""

    def __init__(self, **routes: Route) -> None:
        self.routes: dict[str, Route] = {
            "/health": reply(200, '{"status":"ok"}'), "/metrics": reply(200, GOOD_METRICS, "text/plain; version=0.0.4"),
            "/props": reply(200, GOOD_PROPS), "/slots": reply(200, GOOD_SLOTS),
        }
        self.routes.update({f"/{k}": v for k, v in routes.items()})
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                fake.headers.append(dict(self.headers))
                fake.paths.append(self.path)
                fake.routes.get(self.path.split("?")[0], reply(404, "{}"))(self)

        self.server = LoopbackHTTPServer(Handler)
        self.url = self.server.url

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def fakes() -> Iterator[Callable[..., FakeLlama]]:
    made: list[FakeLlama] = []

    def make(**routes: Route) -> FakeLlama:
        made.append(FakeLlama(**routes))
        return made[-1]

    yield make
    for f in made:
        f.close()


@pytest.fixture
def exporter() -> Iterator[Callable[..., ExporterApp]]:
    apps: list[ExporterApp] = []

    def make(targets: dict[str, str], **cfg: Any) -> ExporterApp:
        cfg.setdefault("gpu", False)
        cfg.setdefault("timeout", 1.0)
        app = ExporterApp(ExporterConfig(targets=[f"{n}={u}" for n, u in targets.items()], port=0, **cfg)).start()
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.stop()


def test_good_fake_is_fully_exported(fakes, exporter) -> None:  # noqa: ANN001
    app = exporter({"good": fakes().url})
    s = scrape(app.url)
    assert one(s, "llamacpp_tokens_predicted_total", target="good") == 7
    assert one(s, "llamacpp_n_tokens_max", target="good") == 99  # high-water mark: re-exported as a gauge
    assert one(s, "llamatelemetry_target_up", target="good") == 1
    assert one(s, "llamatelemetry_slot_context_utilization_ratio", target="good", slot="0") == 0.25
    assert one(s, "llamatelemetry_slot_context_tokens", target="good", slot="1") == 0
    assert one(s, "llamatelemetry_server_info", target="good", model="m", n_ctx="1000", total_slots="2", build="b1-abc") == 1


@pytest.mark.parametrize("body", [
    "\x00\xff garbage {{{ not prometheus",
    GOOD_METRICS[:-25],                 # truncated in the middle of a sample line
    GOOD_METRICS + "llamacpp:tokens_predicted_total{",
    "<html><body>502 Bad Gateway</body></html>",
], ids=["garbage", "truncated-line", "truncated-labels", "html"])
def test_broken_metrics_text(fakes, exporter, caplog, body: str) -> None:  # noqa: ANN001
    broken, good = fakes(metrics=reply(200, body, "text/plain")), fakes()
    app = exporter({"broken": broken.url, "good": good.url})
    with caplog.at_level(logging.WARNING, logger="llamatelemetry.exporter"):
        first, second = scrape(app.url), scrape(app.url)
    for s in (first, second):
        assert not pick(s, "llamacpp_tokens_predicted_total", target="broken")
        assert one(s, "llamacpp_tokens_predicted_total", target="good") == 7
        assert one(s, "llamatelemetry_target_up", target="broken") == 0
        assert one(s, "llamatelemetry_server_state", target="broken", state="ok") == 1
        assert one(s, "llamatelemetry_slot_processing", target="broken", slot="0") == 1  # other endpoints still used
    assert one(second, "llamatelemetry_scrape_errors_total", collector="llama_server", target="broken") == 2
    assert one(second, "llamatelemetry_scrape_errors_total", collector="llama_server", target="good") == 0
    lines = [r.getMessage() for r in caplog.records if "not valid Prometheus text" in r.getMessage()]
    assert len(lines) == 1 and "broken" in lines[0]  # logged once, not per scrape


@pytest.mark.parametrize("body", ["not json at all", '{"id": 0}', "[1, 2]", '[{"id": 0, "n_ctx": 100'], ids=["text", "object", "numbers", "truncated"])
def test_non_json_slots(fakes, exporter, body: str) -> None:  # noqa: ANN001
    app = exporter({"t": fakes(slots=reply(200, body)).url})
    s = scrape(app.url)
    assert not pick(s, "llamatelemetry_slot_processing", target="t")
    assert one(s, "llamacpp_tokens_predicted_total", target="t") == 7
    assert one(s, "llamatelemetry_target_up", target="t") == 0
    assert one(s, "llamatelemetry_scrape_errors_total", target="t") == 1


def test_non_json_props(fakes, exporter) -> None:  # noqa: ANN001
    app = exporter({"t": fakes(props=reply(200, "<html>")).url})
    s = scrape(app.url)
    assert not pick(s, "llamatelemetry_server_info", target="t")
    assert one(s, "llamatelemetry_slot_processing", target="t", slot="0") == 1


def test_huge_answers_are_capped(fakes, exporter, caplog) -> None:  # noqa: ANN001
    cap = 64 * 1024
    declared = reply(200, "x" * (cap + 1))             # Content-Length over the cap
    huge = fakes(slots=endless, metrics=declared)
    app = exporter({"huge": huge.url, "good": fakes().url}, max_response_bytes=cap, timeout=5.0)
    with caplog.at_level(logging.WARNING, logger="llamatelemetry.exporter"):
        start = time.perf_counter()
        s = scrape(app.url)
        elapsed = time.perf_counter() - start
    assert elapsed < 3.0, "the exporter kept reading an endless body"
    assert not pick(s, "llamatelemetry_slot_processing", target="huge")
    assert not pick(s, "llamacpp_tokens_predicted_total", target="huge")
    assert one(s, "llamatelemetry_server_info", target="huge", model="m") == 1
    assert one(s, "llamatelemetry_target_up", target="huge") == 0
    assert one(s, "llamatelemetry_target_up", target="good") == 1
    assert any("byte cap" in r.getMessage() for r in caplog.records)


def test_slow_target_does_not_delay_others_beyond_its_timeout(fakes, exporter) -> None:  # noqa: ANN001
    slow = fakes(**{ep: sleepy(3.0, reply(200, "{}")) for ep in ("health", "metrics", "props", "slots")})
    app = exporter({"slow": slow.url, "good": fakes().url}, timeout=0.5)
    start = time.perf_counter()
    s = scrape(app.url)
    assert time.perf_counter() - start < 1.5
    assert one(s, "llamatelemetry_server_state", target="slow", state="unreachable") == 1
    assert one(s, "llamatelemetry_target_up", target="good") == 1
    assert one(s, "llamatelemetry_scrape_duration_seconds", collector="llama_server", target="slow") == pytest.approx(0.5, abs=0.3)


@pytest.mark.parametrize("status,state", [(503, "loading"), (500, "error")])
def test_health_states(fakes, exporter, status: int, state: str) -> None:  # noqa: ANN001
    body = '{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}'
    routes = {ep: reply(status, body) for ep in ("health", "metrics", "props", "slots")}
    app = exporter({"t": fakes(**routes).url})
    s = scrape(app.url)
    assert pick(s, "llamatelemetry_server_state", target="t") == {
        (("state", st), ("target", "t")): (1.0 if st == state else 0.0) for st in ("ok", "loading", "unreachable", "error")}
    assert one(s, "llamatelemetry_target_up", target="t") == 0
    assert one(s, "llamatelemetry_scrape_errors_total", target="t") == (0 if state == "loading" else 1)


def test_api_key_is_sent_but_never_logged_or_exported(fakes, exporter, caplog) -> None:  # noqa: ANN001
    secret = "sk-very-secret-123"
    denied = {ep: reply(401, '{"error":{"code":401,"message":"Invalid API Key"}}') for ep in ("metrics", "props", "slots")}
    fake = fakes(**denied)
    app = exporter({"t": fake.url}, api_key=secret)
    with caplog.at_level(logging.DEBUG):
        text = httpx.get(app.url + "/metrics").text
        text += httpx.get(app.url + "/").text
    assert {h.get("Authorization") for h in fake.headers} == {f"Bearer {secret}"}
    assert secret not in text and secret not in caplog.text and secret not in repr(app.config)
    assert "API key" in caplog.text and "LLAMA_API_KEY" in caplog.text


def test_a_400_is_explained_with_the_servers_message(fakes, exporter, caplog) -> None:  # noqa: ANN001
    # A 400 from a server whose /props is not a router's: the server's own message is logged.
    # (Real routers are read as a set of models: tests/test_exporter_router.py.)
    fake = fakes(metrics=reply(400, '{"error":{"message":"model is required"}}'))
    with caplog.at_level(logging.WARNING):
        app = exporter({"r": fake.url})
        scrape(app.url)
    assert "400" in caplog.text and "model is required" in caplog.text
    # A query string on the target is sent on every request (how a router is told the model), and
    # autoload=false is added to a ?model= target so a scrape never loads that model.
    app2 = exporter({"q": fake.url + "/?model=qwen"})
    fake.paths.clear()
    scrape(app2.url)
    assert sorted(fake.paths) == ["/metrics?model=qwen&autoload=false", "/props?model=qwen&autoload=false",
                                  "/slots?model=qwen&autoload=false"]
    with caplog.at_level(logging.WARNING):
        scrape(app2.url)
    assert "?model=" in caplog.text  # the hint for a model the router may not know


def test_duplicate_or_bad_targets_are_rejected() -> None:
    from llamatelemetry.exporter.targets import TargetSpecError

    with pytest.raises(TargetSpecError, match="used twice"):
        ExporterApp(ExporterConfig(targets=["a=http://127.0.0.1:1", "a=http://127.0.0.1:2"], gpu=False))
    with pytest.raises(TargetSpecError, match="expected http"):
        ExporterApp(ExporterConfig(targets=["ftp://x"], gpu=False))


def test_exporter_http_server_edge_cases(fakes, exporter) -> None:  # noqa: ANN001
    app = exporter({"t": fakes().url})
    host, port = app.url.removeprefix("http://").split(":")

    def raw(request: bytes) -> bytes:
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(request)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            return data

    assert b"Error code: 400" in raw(b"GET /metrics NOT-HTTP\r\n\r\n")
    assert raw(b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc").split(b" ")[1] == b"405"
    assert raw(b"HEAD /health HTTP/1.1\r\nConnection: close\r\n\r\n").split(b" ")[1] == b"405"
    with httpx.Client() as client:
        for _ in range(3):
            assert client.get(app.url + "/metrics").status_code == 200
    assert raw(b"GET /health HTTP/1.0\r\n\r\n").endswith(b"ok\n")  # HTTP/1.0 closes after one answer


def test_cli_flags_and_env_vars_build_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from llamatelemetry._defaults import EXPORTER_DEFAULT_HOST, EXPORTER_DEFAULT_PORT
    from llamatelemetry.exporter import cli

    def config(*argv: str):  # noqa: ANN202
        parser = argparse.ArgumentParser()
        cli.add_arguments(parser)
        return cli.build_config(parser.parse_args(list(argv)))

    for name in ("LLAMATELEMETRY_EXPORTER_TARGETS", "LLAMA_SERVER_URL", "LLAMA_API_KEY", "LLAMATELEMETRY_EXPORTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    default = config()
    assert (default.host, default.port, default.gpu, default.gpu_processes) == (EXPORTER_DEFAULT_HOST, EXPORTER_DEFAULT_PORT, True, True)
    assert default.targets == ["http://127.0.0.1:8080"] and default.api_key is None
    monkeypatch.setenv("LLAMATELEMETRY_EXPORTER_TARGETS", "a=http://127.0.0.1:1, b=http://127.0.0.1:2")
    monkeypatch.setenv("LLAMA_API_KEY", "k")
    monkeypatch.setenv("LLAMATELEMETRY_EXPORTER_NO_GPU_PROCESSES", "1")
    monkeypatch.setenv("LLAMATELEMETRY_EXPORTER_TIMEOUT", "0.25")
    from_env = config()
    assert from_env.targets == ["a=http://127.0.0.1:1", "b=http://127.0.0.1:2"]
    assert (from_env.api_key, from_env.gpu_processes, from_env.timeout) == ("k", False, 0.25)
    flags = config("--target", "x=http://h:3", "--port", "9999", "--listen", "0.0.0.0", "--no-gpu", "--timeout", "3")
    assert (flags.targets, flags.port, flags.host, flags.gpu, flags.timeout) == (["x=http://h:3"], 9999, "0.0.0.0", False, 3.0)


def test_foreign_families_are_dropped_and_an_upstream_target_label_is_kept(caplog: pytest.LogCaptureFixture) -> None:
    """Only llamacpp:* families are re-exported: another exporter's llamatelemetry_* would duplicate ours."""
    from llamatelemetry.exporter.llama import TargetView
    from llamatelemetry.exporter.targets import parse_target

    page = ("# TYPE llamacpp:prompt_tokens_total counter\nllamacpp:prompt_tokens_total 5\n"
            "# TYPE llamatelemetry_target_up gauge\nllamatelemetry_target_up{target=\"x\"} 1\n"
            '# TYPE llamacpp:busy gauge\nllamacpp:busy{target="inner"} 2\nprocess_cpu_seconds_total 3\n')
    view = TargetView(parse_target("t=http://127.0.0.1:1"))
    with caplog.at_level(logging.WARNING, logger="llamatelemetry.exporter.llama"):
        for _ in range(2):
            fams, problem = view._metrics(page.encode())
    assert problem is None
    assert [f.name for f in fams] == ["llamacpp_prompt_tokens", "llamacpp_busy"]
    assert fams[1].samples[0].labels == {"exported_target": "inner", "target": "t"}
    dropped = [r.getMessage() for r in caplog.records if "not llama-server's" in r.getMessage()]
    assert len(dropped) == 1 and "2 families" in dropped[0]  # logged once, not every scrape


def test_busy_slots_per_decode_is_a_gauge_whatever_type_the_build_gives() -> None:
    from llamatelemetry.exporter.llama import TargetView
    from llamatelemetry.exporter.targets import parse_target

    for upstream in ("counter", "gauge"):
        page = f"# TYPE llamacpp:n_busy_slots_per_decode {upstream}\nllamacpp:n_busy_slots_per_decode 1.5\n"
        fams, _ = TargetView(parse_target("t=http://127.0.0.1:1"))._metrics(page.encode())
        assert [(f.name, f.type, f.samples[0].name) for f in fams] == [("llamacpp_n_busy_slots_per_decode", "gauge", "llamacpp_n_busy_slots_per_decode")]


@pytest.mark.parametrize("spec, base", [
    ("http://127.0.0.1:8080/v1", "http://127.0.0.1:8080"),
    ("http://127.0.0.1:8080/v1/", "http://127.0.0.1:8080"),
    ("127.0.0.1:8080/v1", "http://127.0.0.1:8080"),
    ("https://llm.example:443/api/v1", "https://llm.example:443/api"),  # a llama-server behind a path prefix
    ("http://127.0.0.1:8080/v10", "http://127.0.0.1:8080/v10"),  # only a whole /v1 segment is the OpenAI suffix
])
def test_openai_style_v1_urls_are_accepted_as_the_client_accepts_them(spec: str, base: str) -> None:
    from llamatelemetry.exporter.targets import parse_target

    assert parse_target(spec).base_url == base


def test_a_v1_target_is_scraped_like_the_plain_url(fakes, exporter) -> None:  # noqa: ANN001
    fake = fakes()  # a well-behaved llama-server at the root
    app = exporter({"t": fake.url + "/v1"})
    assert one(scrape(app.url), "llamatelemetry_target_up", target="t") == 1
    assert sorted(p.split("?")[0] for p in fake.paths) == ["/metrics", "/props", "/slots"]
