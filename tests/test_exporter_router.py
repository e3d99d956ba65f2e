"""The exporter against a real llama-server in router mode (--models-dir of scripted models, --models-max 1,
--sleep-idle-seconds): a router is a set of models, scraping never loads or wakes one, swaps between scrapes are
counted, failures and restarts give clear errors, per-model GPU attribution through the fake NVML."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
from fake_nvml import FakeNVML, FakeProcess
from prom_helpers import one, parse_exposition, pick, run_prometheus, scrape
from stack_helpers import alert_query_parts, alert_rules
from waiting import wait_for

from llamatelemetry.exporter import ExporterApp, ExporterConfig
from llamatelemetry.exporter import procnet
from llamatelemetry.exporter.collector import ExporterCollector
from llamatelemetry.exporter.fetch import AsyncRunner, Fetcher
from llamatelemetry.exporter.targets import parse_target
from llamatelemetry.provision.router import RouterServer
from llamatelemetry.router import fetch_models

Router = Callable[..., RouterServer]
MODELS = ("alpha", "beta", "gamma")



def chat(router: RouterServer, model: str) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    resp = httpx.post(router.base_url + "/v1/chat/completions", json=body, timeout=60)
    assert resp.status_code == 200, resp.text


def states(router: RouterServer) -> dict[str, str]:
    return {m.id: m.state for m in fetch_models(router.base_url)}


def model_state(series: dict[Any, float], model: str) -> str:
    on = [dict(k)["state"] for k, v in pick(series, "llamatelemetry_model_state", model=model).items() if v == 1]
    assert len(on) == 1, on
    return on[0]


@pytest.fixture(scope="module")
def swap_router(router_factory: Router) -> RouterServer:
    """Three scripted models and a corrupt one, --models-max 1, children with --metrics."""
    return router_factory(MODELS, broken=["bad"], models_max=1, extra_args=["--metrics"])


@pytest.fixture(scope="module")
def swap_app(swap_router: RouterServer) -> Iterator[ExporterApp]:
    with ExporterApp(ExporterConfig(targets=[f"box={swap_router.base_url}"], port=0, gpu=False, timeout=5.0)) as app:
        yield app


def test_a_router_is_a_set_of_models_and_scraping_loads_none(router_factory: Router) -> None:
    # A router of its own: it starts with every model unloaded whatever the (shuffled) tests before it did.
    router = router_factory(MODELS, broken=["bad"], models_max=1, extra_args=["--metrics"])
    with ExporterApp(ExporterConfig(targets=[f"box={router.base_url}"], port=0, gpu=False, timeout=5.0)) as app:
        _scraping_loads_none(router, app)


def _scraping_loads_none(swap_router: RouterServer, swap_app: ExporterApp) -> None:
    for _ in range(3):
        series = scrape(swap_app.url)
    assert one(series, "llamatelemetry_target_up", target="box") == 1
    assert one(series, "llamatelemetry_router_info", target="box", max_instances="1") == 1
    for model in MODELS + ("bad",):
        assert model_state(series, model) in ("unloaded", "loaded")  # one per model the router knows, loaded or not
        assert set(dict(k)["state"] for k in pick(series, "llamatelemetry_model_state", model=model)) >= {
            "loaded", "loading", "unloaded", "sleeping", "failed"}
    assert states(swap_router) == {m: "unloaded" for m in MODELS + ("bad",)}, "a scrape loaded a model"

    chat(swap_router, "alpha")
    series = scrape(swap_app.url)
    assert model_state(series, "alpha") == "loaded"
    assert one(series, "llamatelemetry_model_up", target="box", model="alpha") == 1
    # every llama-server series of the running model carries its model label
    assert one(series, "llamacpp_tokens_predicted_total", target="box", model="alpha") >= 4
    assert one(series, "llamatelemetry_server_info", target="box", model="alpha") == 1
    assert pick(series, "llamatelemetry_slot_processing", target="box", model="alpha")
    assert not [k for (n, k) in series if n.startswith("llamacpp_") and "model" not in dict(k)]
    assert not pick(series, "llamacpp_tokens_predicted_total", model="beta")
    for _ in range(5):
        scrape(swap_app.url)
    assert states(swap_router) == {"alpha": "loaded", "beta": "unloaded", "gamma": "unloaded", "bad": "unloaded"}


def test_a_swap_between_two_scrapes_is_counted(swap_router: RouterServer, swap_app: ExporterApp) -> None:
    chat(swap_router, "alpha")
    before = scrape(swap_app.url)
    wait_for(lambda: swap_app.collector.views["box"].router is not None
             and swap_app.collector.views["box"].router.watcher.connected, 20, "the event stream")
    chat(swap_router, "beta")   # alpha evicted, beta loaded
    chat(swap_router, "alpha")  # beta evicted, alpha loaded again
    wait_for(lambda: states(swap_router)["beta"] == "unloaded", 30, "beta evicted")
    time.sleep(0.5)  # the last events travel the stream
    after = scrape(swap_app.url)
    assert model_state(before, "alpha") == model_state(after, "alpha") == "loaded"  # sampled state: no change

    def delta(name: str, model: str) -> float:
        return one(after, name, target="box", model=model) - one(before, name, target="box", model=model)

    assert delta("llamatelemetry_model_loads_total", "alpha") == 1
    assert delta("llamatelemetry_model_loads_total", "beta") == 1
    assert delta("llamatelemetry_model_unloads_total", "alpha") == 1
    assert delta("llamatelemetry_model_unloads_total", "beta") == 1
    assert delta("llamatelemetry_model_load_duration_seconds_count", "beta") == 1
    assert one(after, "llamatelemetry_model_load_duration_seconds_bucket", model="beta", le="+Inf") >= 1
    assert one(after, "llamatelemetry_model_load_duration_seconds_sum", model="beta") > 0
    assert one(after, "llamatelemetry_router_events_up", target="box") == 1
    assert one(after, "llamatelemetry_model_last_exit_code", model="beta") == 0


def test_a_model_that_fails_to_load_is_reported_with_its_exit_code(swap_router: RouterServer, swap_app: ExporterApp) -> None:
    scrape(swap_app.url)
    resp = httpx.post(swap_router.base_url + "/models/load", json={"model": "bad"}, timeout=10)
    assert resp.json() == {"success": True}
    wait_for(lambda: states(swap_router)["bad"] == "failed", 30, "the corrupt model to fail")
    time.sleep(0.3)
    series = scrape(swap_app.url)
    assert model_state(series, "bad") == "failed"
    failures = pick(series, "llamatelemetry_model_load_failures_total", target="box", model="bad")
    assert list(failures.values()) == [1]
    code = dict(next(iter(failures)))["exit_code"]
    assert code not in ("0", "None") and one(series, "llamatelemetry_model_last_exit_code", model="bad") == int(code)
    assert one(series, "llamatelemetry_target_up", target="box") == 1  # a failed model is state, not a scrape error


def test_unknown_model_target_is_a_clear_error_and_the_rest_is_intact(swap_router: RouterServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="llamatelemetry")
    config = ExporterConfig(targets=[f"nope={swap_router.base_url}?model=nope", f"box={swap_router.base_url}",
                                     f"beta={swap_router.base_url}?model=beta"], port=0, gpu=False, timeout=5.0)
    before = states(swap_router)
    with ExporterApp(config) as app:
        series = scrape(app.url)
    assert one(series, "llamatelemetry_target_up", target="nope") == 0
    assert "model 'nope' not found" in caplog.text
    assert one(series, "llamatelemetry_target_up", target="box") == 1 and pick(series, "llamatelemetry_model_state", target="box")
    # ?model= of an unloaded model: autoload=false is added, so the scrape did not load it
    assert states(swap_router) == before


def test_sleeping_model_stays_asleep_and_its_idle_timer_is_not_reset(router_factory: Router) -> None:
    router = router_factory(["alpha", "beta"], models_max=2, sleep_idle_seconds=3, extra_args=["--metrics"])
    with ExporterApp(ExporterConfig(targets=[f"r={router.base_url}"], port=0, gpu=False, timeout=5.0)) as app:
        scrape(app.url)
        chat(router, "alpha")
        loaded_at = time.monotonic()
        stop = threading.Event()
        scrapes = [0]

        def scrape_every_200ms() -> None:
            while not stop.is_set():
                scrape(app.url)
                scrapes[0] += 1
                time.sleep(0.2)

        worker = threading.Thread(target=scrape_every_200ms, daemon=True)
        worker.start()
        try:
            # if scrapes reset the idle timer, alpha would never sleep
            wait_for(lambda: states(router)["alpha"] == "sleeping", 3 + 20, "alpha to fall asleep while scraped")
            asleep_after = time.monotonic() - loaded_at
            slept_scrapes = scrapes[0]
            # keep scraping the sleeping model: at least 5 more scrapes (and 2 s), however loaded the machine is
            time.sleep(2.0)
            wait_for(lambda: scrapes[0] >= slept_scrapes + 5, 60, "5 scrapes of the sleeping model")
            assert states(router)["alpha"] == "sleeping", "a scrape woke the model"
        finally:
            stop.set()
            worker.join(30)
        assert asleep_after < 3 + 15
        series = scrape(app.url)
    assert model_state(series, "alpha") == "sleeping" and model_state(series, "beta") == "unloaded"
    assert one(series, "llamatelemetry_model_up", target="r", model="alpha") == 1
    assert one(series, "llamacpp_tokens_predicted_total", target="r", model="alpha") >= 4  # cached by the sleeping child
    assert not pick(series, "llamatelemetry_slot_processing", model="alpha")  # /slots would wake it: not read
    assert states(router) == {"alpha": "sleeping", "beta": "unloaded"}


class _StopRouterOnModelRead(httpx.AsyncBaseTransport):
    """Forwards to the real transport; before the first per-model /metrics read it stops the router
    (a real restart in the middle of a scrape: the model list was read, the model's answer is not)."""

    def __init__(self, router: RouterServer) -> None:
        self.router = router
        self.inner = httpx.AsyncHTTPTransport()
        self.armed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.armed and request.url.path == "/metrics" and "model=" in str(request.url):
            self.armed = False
            self.router.stop()
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_router_restarted_mid_scrape_gives_a_clear_error_and_loses_nothing(router_factory: Router) -> None:
    router = router_factory(["alpha", "beta"], models_max=1, extra_args=["--metrics"])
    transport = _StopRouterOnModelRead(router)
    runner = AsyncRunner().start()
    fetcher = Fetcher(timeout=5.0, transport=transport)
    target = parse_target(f"r={router.base_url}")
    collector = ExporterCollector([target], fetcher, runner)
    try:
        first = parse_exposition(_render(collector))
        assert one(first, "llamatelemetry_target_up", target="r") == 1
        watcher = collector.views["r"].router.watcher  # type: ignore[union-attr]
        wait_for(lambda: watcher.connected, 30, "the event stream")  # loads before it would not be counted
        chat(router, "alpha")
        chat(router, "beta")
        chat(router, "alpha")
        time.sleep(0.5)
        before = parse_exposition(_render(collector))
        assert one(before, "llamatelemetry_model_loads_total", model="alpha") == 2

        transport.armed = True
        mid = parse_exposition(_render(collector))
        assert one(mid, "llamatelemetry_target_up", target="r") == 0
        assert one(mid, "llamatelemetry_model_up", target="r", model="alpha") == 0
        assert model_state(mid, "alpha") == "loaded" and model_state(mid, "beta") == "unloaded"  # the list read before
        assert one(mid, "llamatelemetry_model_loads_total", model="alpha") == 2

        down = parse_exposition(_render(collector))
        assert one(down, "llamatelemetry_server_state", target="r", state="unreachable") == 1
        assert one(down, "llamatelemetry_model_loads_total", model="alpha") == 2  # counters are kept

        router.start()
        wait_for(lambda: watcher.connected, 30, "the event stream to reconnect")
        back = parse_exposition(_render(collector))
        assert one(back, "llamatelemetry_target_up", target="r") == 1
        assert model_state(back, "alpha") == "unloaded"
        assert one(back, "llamatelemetry_model_loads_total", model="alpha") == 2
        assert one(back, "llamatelemetry_model_unloads_total", model="alpha") == 2  # evicted once, then the restart
        assert one(back, "llamatelemetry_scrape_errors_total", target="r") >= 2
    finally:
        collector.close_views()
        runner.run(fetcher.aclose(), timeout=5)
        runner.stop()


def _render(collector: ExporterCollector) -> str:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry).decode()


def test_per_model_gpu_memory_and_energy_through_fake_nvml(router_factory: Router) -> None:
    router = router_factory(["alpha", "beta"], broken=["bad"], models_max=3, extra_args=["--metrics"])
    chat(router, "alpha")
    chat(router, "beta")
    ports = {}
    for m in fetch_models(router.base_url):
        if not m.running:
            continue
        args = list(m.args)
        ports[m.id] = int(args[args.index("--port") + 1])
    # the router spawns children from its HTTP threads: /proc lists them under the spawning thread
    children = [int(p) for f in Path(f"/proc/{router.pid}/task").glob("*/children") for p in f.read_text().split()]
    pids = {model: procnet.find_listener_pid(port, children) for model, port in ports.items()}
    assert all(pids.values()) and len(set(pids.values())) == 2
    nvml = FakeNVML()
    nvml.gpus[0].processes += [FakeProcess(pids["alpha"], 3 << 30, sm_util=75), FakeProcess(pids["beta"], 1 << 30, sm_util=25)]
    with ExporterApp(ExporterConfig(targets=[f"r={router.base_url}"], port=0, timeout=5.0), nvml=nvml) as app:
        scrape(app.url)  # finds the router, the baseline energy reading
        httpx.post(router.base_url + "/models/load", json={"model": "bad"}, timeout=10)
        wait_for(lambda: states(router)["bad"] == "failed", 30, "bad to fail")
        time.sleep(0.3)
        scrape(app.url)
        nvml.gpus[0].energy_mj += 8_000
        text = httpx.get(app.url + "/metrics", timeout=30).text
        series = parse_exposition(text)
    _metrics_md_router_section_matches(text)
    assert one(series, "llamatelemetry_gpu_model_memory_used_bytes", gpu="0", target="r", model="alpha") == 3 << 30
    assert one(series, "llamatelemetry_gpu_model_memory_used_bytes", gpu="0", target="r", model="beta") == 1 << 30
    alpha = one(series, "llamatelemetry_model_energy_joules_total", target="r", model="alpha")
    beta = one(series, "llamatelemetry_model_energy_joules_total", target="r", model="beta")
    assert alpha + beta == pytest.approx(8.0) and alpha == pytest.approx(6.0)


def _metrics_md_router_section_matches(text: str) -> None:
    """METRICS.md's router table lists exactly the router-only series a router scrape emits, with their types."""
    from prometheus_client.parser import text_string_to_metric_families

    doc = (Path(__file__).resolve().parent.parent / "llamatelemetry" / "exporter" / "METRICS.md").read_text()
    section = doc.split("## Router (multi-model) llama-server", 1)[1].split("\n## ", 1)[0]
    documented = {m.group(1): m.group(2).strip("*") for m in re.finditer(r"^\| `([a-z0-9_]+)` \| ([a-z*]+) \|", section, flags=re.M)}
    emitted = {}
    for fam in text_string_to_metric_families(text):
        name = fam.name + ("_total" if fam.type == "counter" else "")
        if re.match(r"llamatelemetry_(router_|model_|gpu_model_)", name):
            emitted[name] = fam.type
    assert emitted == documented
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_router_through_probe_and_file_sd(swap_router: RouterServer, tmp_path) -> None:  # noqa: ANN001
    with ExporterApp(ExporterConfig(targets=[], port=0, gpu=False, timeout=5.0)) as app:
        addr = swap_router.base_url.removeprefix("http://")
        resp = httpx.get(app.url + "/probe", params={"target": addr}, timeout=30)
        series = parse_exposition(resp.text)
        assert one(series, "llamatelemetry_target_up", target=addr) == 1
        assert set(dict(k)["model"] for k in pick(series, "llamatelemetry_model_state", target=addr)) == set(MODELS) | {"bad"}
        sd_file = tmp_path / "routers.json"
        sd_file.write_text(json.dumps([{"targets": [addr]}]))
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{
                "job_name": "routers", "metrics_path": "/probe", "honor_labels": True,
                "file_sd_configs": [{"files": [str(sd_file)], "refresh_interval": "1s"}],
                "relabel_configs": [
                    {"source_labels": ["__address__"], "target_label": "__param_target"},
                    {"source_labels": ["__param_target"], "target_label": "instance"},
                    {"target_label": "__address__", "replacement": app.url.removeprefix("http://")},
                ],
            }],
        }
        with run_prometheus(config) as prom:
            prom.wait_for(f'llamatelemetry_model_state{{target="{addr}",model="gamma",state="unloaded"}} == 1', timeout=30)
            assert prom.query(f'llamatelemetry_model_loads_total{{instance="{addr}"}}')
            # the router alerts (offline-only in the live stack test) query series that exist
            rules = [r for r in alert_rules() if r["alert"].startswith("Router")]
            assert len(rules) == 2
            for rule in rules:
                for query in alert_query_parts(rule["expr"]):
                    prom.wait_for(query, timeout=30)


def test_a_router_with_an_api_key(router_factory: Router, caplog: pytest.LogCaptureFixture) -> None:
    secret = "sk-router-secret-42"
    router = router_factory(["alpha"], extra_args=["--metrics", "--api-key", secret])
    body = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    assert httpx.post(router.base_url + "/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    caplog.set_level(logging.DEBUG, logger="llamatelemetry")
    with ExporterApp(ExporterConfig(targets=[f"k={router.base_url}"], port=0, gpu=False, timeout=5.0, api_key=secret)) as app:
        scrape(app.url)
        view = app.collector.views["k"].router
        assert view is not None
        wait_for(lambda: view.watcher.connected, 20, "the event stream with the key")
        text = httpx.get(app.url + "/metrics", timeout=30).text
    series = parse_exposition(text)
    assert one(series, "llamatelemetry_target_up", target="k") == 1
    assert one(series, "llamacpp_tokens_predicted_total", target="k", model="alpha") >= 4
    assert secret not in text and secret not in caplog.text
