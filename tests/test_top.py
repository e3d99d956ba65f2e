"""``llamatelemetry top`` against real components: real llama-servers (scripted model), the real exporter
(fake NVML at the pynvml boundary, as no GPU is here), traffic from the official openai SDK, driven
through Textual's own test harness (``App.run_test`` + pilot key presses).

Refreshes are triggered with the ``r`` key (interval set to an hour), so each test knows exactly which
two snapshots a rate was computed from and can assert the exact number in the exact row.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any, Awaitable, Callable, Iterator

import httpx
import openai
import pytest
from fake_nvml import FakeNVML, FakeProcess
from gateway_process import GatewayProcess
from textual.pilot import Pilot
from top_helpers import refresh

from llamatelemetry.exporter import ExporterApp, ExporterConfig
from llamatelemetry.provision.server import LlamaServer, free_port
from llamatelemetry.top.app import PANELS, TopApp
from llamatelemetry.top.model import Model
from llamatelemetry.top.render import fmt_rate, fmt_seconds
from llamatelemetry.top.sources import Sources


GPU_BYTES = 3 * 1024**3
HI = [{"role": "user", "content": "hi"}]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def servers(llama_server_factory) -> dict[str, LlamaServer]:  # noqa: ANN001
    """Two llama-servers of our own: 'main' (2 slots) and 'victim' (killed by a test)."""
    # main's slots hold 64k tokens: an ignore_eos stream then runs for many seconds before the context is full.
    return {"main": llama_server_factory("--metrics", parallel=2, ctx_size=65536), "victim": llama_server_factory("--metrics")}


@pytest.fixture(scope="module")
def nvml(servers: dict[str, LlamaServer]) -> FakeNVML:
    fake = FakeNVML()
    fake.gpus[0].processes.append(FakeProcess(servers["main"].pid, GPU_BYTES))
    return fake


@pytest.fixture
def exporter(servers: dict[str, LlamaServer], nvml: FakeNVML) -> Iterator[ExporterApp]:
    config = ExporterConfig(targets=[f"{name}={s.base_url}" for name, s in servers.items()], port=0, timeout=1.0)
    with ExporterApp(config, nvml=nvml) as running:
        yield running


@pytest.fixture(scope="module")
def gateway(servers: dict[str, LlamaServer]) -> Iterator[GatewayProcess]:
    running = GatewayProcess(servers["main"].base_url)
    yield running
    running.stop()


def no_gateway() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there: the gateway is "down"


def chat(server: LlamaServer, **kw: Any) -> Any:
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=2)
    try:
        return client.chat.completions.create(model="scripted", messages=HI, **kw)  # type: ignore[arg-type]
    finally:
        client.close()


def row(app: TopApp, panel: str, key: str) -> list[str]:
    cells = [str(cell).strip() for cell in app.panels[panel].rows[key]]
    drawn = [line.split() for line in app.panels[panel].text.splitlines()]
    assert " ".join(cells).split() in drawn, f"row {key} is not drawn as {cells}"  # the panel shows exactly these cells
    return cells


def keys(app: TopApp, panel: str) -> list[str]:
    return app.panels[panel].keys()


def run_app(app: TopApp, scenario: Callable[[Pilot[None]], Awaitable[None]], size: tuple[int, int] = (80, 24)) -> None:
    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            await scenario(pilot)

    asyncio.run(main())


def test_servers_slots_and_gpu_rows_show_the_exact_numbers(exporter: ExporterApp, servers: dict[str, LlamaServer], nvml: FakeNVML) -> None:
    app = TopApp(Sources(exporter.url, no_gateway()), interval=3600)

    async def scenario(pilot: Pilot[None]) -> None:
        await refresh(pilot, app)
        first = app.last_snapshot
        assert first is not None
        usages = [(await asyncio.to_thread(chat, servers["main"], max_tokens=40)).usage for _ in range(3)]
        nvml.gpus[0].energy_mj += 6_000  # 6 J spent by GPU 0 while those requests ran
        await refresh(pilot, app)
        second = app.last_snapshot
        assert second is not None
        seconds = second.time - first.time
        generated = sum(u.completion_tokens for u in usages)

        props = httpx.get(servers["main"].base_url + "/props").json()
        cells = row(app, "servers", "main")
        assert cells[0] == "main" and cells[1] == "ok" and cells[2] == props["model_alias"][:16]
        assert cells[3].split()[0] == fmt_rate(generated / seconds)  # gen tok/s from the counter, this interval
        assert cells[5] == "0" and cells[6] == "0"  # nothing running or waiting now
        view = app.last_view
        assert view is not None
        main = next(s for s in view.servers if s.target == "main")
        assert main.generated_tokens_per_second == pytest.approx(generated / seconds)
        assert main.generated_history[-1] == pytest.approx(generated / seconds)

        # One bar per slot, with the slot's real context numbers; tokens generated by the current request are
        # 0 between requests (llama-server resets the slot's n_decoded when a request ends), "–" before the first.
        slots = httpx.get(servers["main"].base_url + "/slots").json()
        assert keys(app, "slots")[:2] == ["main#0", "main#1"]
        used = 0
        for slot in slots:
            cells = row(app, "slots", f"main#{slot['id']}")
            assert cells[1] == "· idle"
            assert cells[3].startswith(f"{slot.get('n_prompt_tokens', 0)}/{slot['n_ctx']}")
            if slot.get("id_task", -1) >= 0:
                used += 1
                assert cells[4] == "0"
            else:
                assert cells[4] == "–"
        assert used >= 1

        # GPU: the fake's values, the llama-server's own memory, joules per generated token in the window.
        gpu0 = row(app, "gpu", "gpu0")
        assert gpu0[:5] == ["0 NVIDIA Fake A100", "37%", "10.0G/80.0G", "123W", "54°C"]
        assert gpu0[5] == f"{6.0 / generated:.2f}"
        assert row(app, "gpu", "target:main")[2] == "3.0G"
        # Per server: the energy the exporter attributed to it, over the tokens it generated, in the window.
        def energy(snapshot: Any) -> float:
            return snapshot.exporter.metrics.total("llamatelemetry_target_energy_joules_total", target="main") or 0.0
        attributed = energy(second) - energy(first)
        assert attributed > 0
        assert row(app, "gpu", "target:main")[5] == f"{attributed / generated:.2f}"
        assert row(app, "gpu", "gpu1")[5] == "–"  # that GPU has no energy counter: unknown, not 0

    run_app(app, scenario)


def test_busy_slot_and_running_request_while_a_stream_is_generating(exporter: ExporterApp, servers: dict[str, LlamaServer]) -> None:
    app = TopApp(Sources(exporter.url, no_gateway()), interval=3600)

    async def scenario(pilot: Pilot[None]) -> None:
        client = openai.AsyncOpenAI(base_url=servers["main"].base_url + "/v1", api_key="unused")
        stream = await client.chat.completions.create(model="scripted", messages=HI, max_tokens=100_000, stream=True,  # type: ignore[arg-type]
                                                      extra_body={"ignore_eos": True})
        try:
            chunks = 0
            async for _ in stream:  # make sure generation is under way
                chunks += 1
                if chunks >= 5:
                    break
            await refresh(pilot, app)
            busy = [k for k in keys(app, "slots") if k.startswith("main#") and row(app, "slots", k)[1] == "▶ busy"]
            assert len(busy) == 1
            assert row(app, "servers", "main")[5] == "1"  # requests processing
            # Tokens generated in the current task grow while it runs (llama-server's counters only move at its end).
            generated = int(row(app, "slots", busy[0])[4])
            async for _ in stream:
                chunks += 1
                if chunks >= 40:
                    break
            await refresh(pilot, app)
            assert int(row(app, "slots", busy[0])[4]) > generated >= 4
        finally:
            await stream.close()
            await client.close()
        for _ in range(50):
            await refresh(pilot, app)
            if row(app, "servers", "main")[5] == "0":
                break
        assert all(row(app, "slots", k)[1] == "· idle" for k in keys(app, "slots"))

    run_app(app, scenario)


def test_a_server_killed_mid_run_shows_down_and_the_view_goes_on(exporter: ExporterApp, servers: dict[str, LlamaServer]) -> None:
    app = TopApp(Sources(exporter.url, no_gateway()), interval=3600)

    async def scenario(pilot: Pilot[None]) -> None:
        await refresh(pilot, app)
        assert row(app, "servers", "victim")[1] == "ok"
        assert "victim#0" in keys(app, "slots")
        servers["victim"].stop()
        await refresh(pilot, app)
        assert row(app, "servers", "victim")[1] == "DOWN"
        assert row(app, "servers", "victim")[3].split()[0] == "–"  # no rate for a server that is gone
        assert "victim#0" not in keys(app, "slots")
        assert row(app, "servers", "main")[1] == "ok"  # the other server is unaffected
        await asyncio.to_thread(chat, servers["main"], max_tokens=8)
        await refresh(pilot, app)
        assert float(row(app, "servers", "main")[3].split()[0]) > 0
        assert app.is_running

    run_app(app, scenario)


def test_exporter_down_then_back(servers: dict[str, LlamaServer], nvml: FakeNVML) -> None:
    port = free_port()
    config = ExporterConfig(targets=[f"main={servers['main'].base_url}"], port=port, timeout=1.0)
    exporter = ExporterApp(config, nvml=nvml).start()
    app = TopApp(Sources(exporter.url, no_gateway()), interval=3600)

    async def scenario(pilot: Pilot[None]) -> None:
        nonlocal exporter
        await refresh(pilot, app)
        assert row(app, "servers", "main")[1] == "ok"
        exporter.stop()
        await refresh(pilot, app)
        status = str(app.query_one("#status").render())
        assert "exporter DOWN (connection refused)" in status and "gateway DOWN" in status
        assert keys(app, "servers") == [] and keys(app, "gpu") == []
        assert "is down" in str(app.panels["servers"].message.render())
        exporter = ExporterApp(config, nvml=nvml).start()
        await refresh(pilot, app)
        assert row(app, "servers", "main")[1] == "ok"
        assert not app.panels["servers"].message.display

    try:
        run_app(app, scenario)
    finally:
        exporter.stop()


def test_keys_quit_tab_pause_zoom_and_80x24_layout(exporter: ExporterApp, servers: dict[str, LlamaServer]) -> None:
    app = TopApp(Sources(exporter.url, no_gateway()), interval=3600)

    async def scenario(pilot: Pilot[None]) -> None:
        await refresh(pilot, app)
        # Every panel is on screen at 80x24, in order, without overlapping.
        bottoms = 1
        for panel_id in PANELS:
            region = app.panels[panel_id].region
            assert region.height >= 1 and region.y >= bottoms and region.bottom <= 23, (panel_id, region)
            bottoms = region.bottom
        # tab cycles the panels.
        assert app.focused is app.panels["servers"]
        for panel_id in PANELS[1:] + PANELS[:1]:
            await pilot.press("tab")
            assert app.focused is app.panels[panel_id]
        # p pauses the display (reading goes on), p again resumes.
        await pilot.press("p")
        assert "PAUSED" in str(app.query_one("#status").render())
        frozen = row(app, "slots", "main#0")
        await asyncio.to_thread(chat, servers["main"], max_tokens=30, extra_body={"id_slot": 0, "cache_prompt": False})
        await refresh(pilot, app)
        assert row(app, "slots", "main#0") == frozen
        await pilot.press("p")
        await pilot.pause()
        assert "PAUSED" not in str(app.query_one("#status").render())
        assert row(app, "slots", "main#0") != frozen
        # z zooms the focused panel and back.
        await pilot.press("tab")
        await pilot.press("z")
        assert app.screen.maximized is app.panels["slots"]
        await pilot.press("z")
        assert app.screen.maximized is None
        # A resize re-lays out without losing rows.
        await pilot.resize_terminal(120, 40)
        await pilot.pause()
        assert app.panels["recent"].region.bottom <= 39 and app.panels["recent"].region.height > 10
        await pilot.resize_terminal(60, 15)
        await refresh(pilot, app)
        assert row(app, "servers", "main")[1] == "ok"
        await pilot.press("q")
        await pilot.pause()
        assert not app.is_running

    run_app(app, scenario)


def test_no_color_keeps_alerts_readable(exporter: ExporterApp, servers: dict[str, LlamaServer], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    servers_down = ExporterConfig(targets=[f"gone=http://127.0.0.1:{free_port()}"], port=0, timeout=0.5)
    with ExporterApp(servers_down, nvml=FakeNVML()) as exp:
        app = TopApp(Sources(exp.url, no_gateway()), interval=3600)
        assert app.no_color  # Textual turns NO_COLOR into its monochrome filter

        async def scenario(pilot: Pilot[None]) -> None:
            await refresh(pilot, app)
            cell = app.panels["servers"].rows["gone"][1]
            styles = [str(cell.style)] + [str(span.style) for span in cell.spans]
            assert str(cell).strip() == "DOWN" and any("reverse" in style for style in styles)  # a word and reverse video, not only red

        run_app(app, scenario)


def _top(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llamatelemetry.cli", "top", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_json_and_once_print_one_snapshot(exporter: ExporterApp, servers: dict[str, LlamaServer]) -> None:
    proc = _top("--exporter", exporter.url, "--gateway", no_gateway(), "--json", "--interval", "0.3")
    assert proc.returncode == 0, proc.stderr
    view = json.loads(proc.stdout)
    assert view["exporter"]["up"] is True and view["gateway"]["up"] is False
    main = next(s for s in view["servers"] if s["target"] == "main")
    assert main["state"] == "ok" and main["total_slots"] == 2 and main["generated_tokens_per_second"] is not None
    assert {(s["target"], s["slot"]) for s in view["slots"]} >= {("main", "0"), ("main", "1")}
    assert [g["name"] for g in view["gpus"]] == ["NVIDIA Fake A100", "NVIDIA Fake T4"]

    proc = _top("--exporter", exporter.url, "--gateway", no_gateway(), "--once", "--interval", "0.3")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.split()[:2] == ["main", "ok"] for line in lines)
    assert any(line.split()[:3] == ["0", "NVIDIA", "Fake"] for line in lines)
    assert "gateway" in proc.stdout and "is down" in proc.stdout

    nothing = _top("--exporter", no_gateway(), "--gateway", no_gateway(), "--once", "--interval", "0.1")
    assert nothing.returncode == 1 and "exporter DOWN (connection refused)" in nothing.stdout


def test_model_window_and_counter_reset() -> None:
    """Pure model: a counter that goes down (process restarted) counts from 0, like PromQL's increase()."""
    from llamatelemetry.top.sources import Metrics, Reading, Snapshot

    def snap(t: float, text: str) -> Snapshot:
        return Snapshot(t, t, Reading("e", metrics=Metrics.parse(text)), Reading("g", error="down"))

    model = Model(window_seconds=60)
    page = 'llamatelemetry_server_state{{target="a",state="ok"}} 1\nllamacpp_tokens_predicted_total{{target="a"}} {}\n'
    model.update(snap(0, page.format(100)))
    assert model.update(snap(2, page.format(140))).servers[0].generated_tokens_per_second == 20
    assert model.update(snap(4, page.format(10))).servers[0].generated_tokens_per_second == 5  # restarted: 10 new tokens
    assert model.update(snap(6, page.format(10))).servers[0].generated_history == (20, 5, 0)


def _styles(cell: Any) -> list[str]:
    return [str(cell.style)] + [str(span.style) for span in cell.spans]


def test_clients_and_recent_requests_from_the_gateway_under_sdk_traffic(exporter: ExporterApp, gateway: GatewayProcess) -> None:
    """openai + anthropic SDKs through the real gateway, including an empty answer and a 400."""
    import anthropic

    app = TopApp(Sources(exporter.url, gateway.admin_url), interval=3600)
    oa = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    an = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)

    def traffic() -> dict[str, Any]:
        already = len(gateway.recent())
        usages = [oa.chat.completions.create(model="scripted", messages=HI, max_tokens=64).usage for _ in range(3)]  # type: ignore[arg-type]
        stream = oa.chat.completions.create(model="scripted", messages=HI, max_tokens=64, stream=True,  # type: ignore[arg-type]
                                            stream_options={"include_usage": True})
        usages.append([chunk for chunk in stream][-1].usage)
        # max_tokens inside the reasoning: finish_reason "length" and an empty answer.
        empty = oa.chat.completions.create(model="scripted", messages=HI, max_tokens=5)  # type: ignore[arg-type]
        assert empty.choices[0].finish_reason == "length" and not empty.choices[0].message.content
        usages.append(empty.usage)
        with pytest.raises(openai.BadRequestError):
            oa.chat.completions.create(model="scripted", messages="not a list", max_tokens=5)  # type: ignore[arg-type]
        messages = [an.messages.create(model="scripted", max_tokens=64, messages=HI) for _ in range(2)]  # type: ignore[arg-type]
        gateway.wait_recorded(already + 8)
        return {"openai": usages, "anthropic": [m.usage for m in messages]}

    async def scenario(pilot: Pilot[None]) -> None:
        await refresh(pilot, app)
        first = app.last_snapshot
        sent = await asyncio.to_thread(traffic)
        await refresh(pilot, app)
        second, view = app.last_snapshot, app.last_view
        assert first is not None and second is not None and view is not None and view.window_seconds is not None
        minutes = view.window_seconds / 60  # the window opened with the first read at start-up (no traffic before)

        oa_row = row(app, "clients", "openai-python")
        assert oa_row[0] == "openai-python"
        assert oa_row[1] == fmt_rate(6 / minutes)  # 4 answered + 1 empty + 1 rejected, per minute
        assert oa_row[2] == str(sum(u.prompt_tokens for u in sent["openai"]))
        assert oa_row[3] == str(sum(u.completion_tokens for u in sent["openai"]))
        assert oa_row[6] == "1" and oa_row[7] == "1"  # one empty answer, one error ...
        cached = sum(u.prompt_tokens_details.cached_tokens or 0 for u in sent["openai"] if u.prompt_tokens_details)
        assert oa_row[8] == f"{cached / sum(u.prompt_tokens for u in sent['openai']) * 100:.0f}%"  # prompt-cache hit ratio
        cells = app.panels["clients"].rows["openai-python"]
        assert any("reverse" in s for s in _styles(cells[6])) and any("reverse" in s for s in _styles(cells[7]))  # ... highlighted
        an_row = row(app, "clients", "anthropic-python")
        assert an_row[1] == fmt_rate(2 / minutes)
        assert an_row[2] == str(sum(u.input_tokens + (u.cache_read_input_tokens or 0) for u in sent["anthropic"]))
        assert an_row[3] == str(sum(u.output_tokens for u in sent["anthropic"]))
        assert an_row[6] == "0" and an_row[7] == "0"
        assert not any("reverse" in s for s in _styles(app.panels["clients"].rows["anthropic-python"][6]))
        # TTFT: only the stream has one, so the window's histogram holds exactly one observation.
        ttft = next(r["ttft_s"] for r in gateway.recent() if r["stream"])
        client = next(c for c in view.clients if c.client == "openai-python")
        assert client.ttft_p50_s is not None and client.ttft_p95_s is not None
        bounds = sorted({float(s.labels["le"]) for s in second.gateway.metrics.series("gen_ai_server_time_to_first_token_seconds_bucket")})  # type: ignore[union-attr]
        upper = next(b for b in bounds if ttft <= b)
        lower = max([b for b in bounds if b < upper], default=0.0)
        # One observation in (lower, upper]: PromQL's interpolation puts p50 half-way and p95 at 95 % of the bucket.
        assert client.ttft_p50_s == pytest.approx(lower + (upper - lower) * 0.5)
        assert client.ttft_p95_s == pytest.approx(lower + (upper - lower) * 0.95)
        assert oa_row[4] == fmt_seconds(client.ttft_p50_s) and oa_row[5] == fmt_seconds(client.ttft_p95_s)

        # Recent requests, newest first: the two anthropic ones, the 400, the empty answer with its mark ...
        recent = [row(app, "recent", k) for k in keys(app, "recent")[:8]]
        assert [r[2] for r in recent] == ["anthropic-python"] * 2 + ["openai-python"] * 6
        assert [r[3] for r in recent] == ["messages"] * 2 + ["chat/completions"] * 6
        assert recent[2][0] == "ERR" and recent[2][9] == "400"
        assert recent[3][0] == "EMPTY" and recent[3][5] == str(sent["openai"][4].completion_tokens)
        assert [r[0] for r in recent[4:]] == [""] * 4
        mark = app.panels["recent"].rows[keys(app, "recent")[3]][0]
        assert any("red" in s for s in _styles(mark))
        assert recent[4][7].endswith("ms") and recent[5][7] == "–"  # the stream has a TTFT, plain answers do not

    run_app(app, scenario)
    oa.close()
    an.close()


def test_upstream_killed_behind_the_gateway(exporter: ExporterApp, llama_server_factory) -> None:  # noqa: ANN001
    """A llama-server dies mid-run: its row says DOWN, requests through the gateway fail and show as errors."""
    doomed = llama_server_factory("--metrics")
    config = ExporterConfig(targets=[f"doomed={doomed.base_url}"], port=0, timeout=1.0)
    proxy = GatewayProcess(doomed.base_url)
    try:
        with ExporterApp(config, nvml=FakeNVML()) as exp:
            app = TopApp(Sources(exp.url, proxy.admin_url), interval=3600)
            oa = openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0)

            async def scenario(pilot: Pilot[None]) -> None:
                await asyncio.to_thread(oa.chat.completions.create, model="scripted", messages=HI, max_tokens=8)
                await asyncio.to_thread(proxy.wait_recorded, 1)
                await refresh(pilot, app)
                assert row(app, "servers", "doomed")[1] == "ok"
                assert row(app, "clients", "openai-python")[7] == "0"
                doomed.stop()
                with pytest.raises(openai.APIStatusError) as failed:
                    await asyncio.to_thread(oa.chat.completions.create, model="scripted", messages=HI, max_tokens=8)
                await asyncio.to_thread(proxy.wait_recorded, 2)
                await refresh(pilot, app)
                assert row(app, "servers", "doomed")[1] == "DOWN"
                assert row(app, "clients", "openai-python")[7] == "1"
                top = row(app, "recent", keys(app, "recent")[0])
                assert failed.value.status_code == 502
                # No upstream answer: the gateway recorded the 502 its client received and the error type.
                item = proxy.recent()[0]
                assert item["status"] == 502 and item["error_type"]
                assert top[0] == "ERR" and top[9] == "502"
                assert app.is_running

            run_app(app, scenario)
            oa.close()
    finally:
        proxy.stop()


def test_sources_that_answer_nonsense_show_as_down(exporter: ExporterApp) -> None:
    """Faults a real exporter or gateway cannot produce (a fake peer): a truncated metrics page, a recent list that
    is not JSON, a 500. Each is a state in the header, the rest of the view keeps working."""
    from http.server import BaseHTTPRequestHandler

    from loopback import LoopbackHTTPServer

    class Broken(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            body, status = {"/metrics": (b'llamatelemetry_proxy_requests_total{a="b', 200)}.get(self.path.split("?")[0], (b"oops", 500))
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with LoopbackHTTPServer(Broken) as broken:
        app = TopApp(Sources(exporter.url, broken.url), interval=3600)

        async def scenario(pilot: Pilot[None]) -> None:
            await refresh(pilot, app)
            status = str(app.query_one("#status").render())
            assert "exporter up" in status and "gateway DOWN (not Prometheus text" in status
            assert row(app, "servers", "main")[1] == "ok"
            assert "is down" in str(app.panels["clients"].message.render())
            assert app.is_running

        run_app(app, scenario)

    with LoopbackHTTPServer(Broken) as broken:
        app = TopApp(Sources(broken.url + "/nothing", no_gateway()), interval=3600)

        async def scenario_500(pilot: Pilot[None]) -> None:
            await refresh(pilot, app)
            assert "exporter DOWN (HTTP 500)" in str(app.query_one("#status").render())

        run_app(app, scenario_500)


def test_gpu_panel_says_when_nvml_is_down(servers: dict[str, LlamaServer]) -> None:
    """The exporter with the real NVML on a machine without an NVIDIA driver: GPU collection down, said in the panel."""
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        pytest.skip("this machine has a working NVIDIA driver")
    except pynvml.NVMLError:
        pass
    with ExporterApp(ExporterConfig(targets=[f"main={servers['main'].base_url}"], port=0, timeout=1.0)) as exp:
        app = TopApp(Sources(exp.url, no_gateway()), interval=3600)

        async def scenario(pilot: Pilot[None]) -> None:
            await refresh(pilot, app)
            assert keys(app, "gpu") == []
            assert "GPU collection down" in str(app.panels["gpu"].message.render())
            assert row(app, "servers", "main")[1] == "ok"

        run_app(app, scenario)
