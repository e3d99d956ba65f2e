"""``llamatelemetry top --router``: the models panel against a real router (three scripted models, --models-max 1)
behind the real gateway, driven through Textual's pilot and through ``--json``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Iterator

import httpx
import openai
import pytest
from textual.pilot import Pilot

from llamatelemetry.provision.server import free_port
from llamatelemetry.top.app import TopApp
from llamatelemetry.top.sources import Sources
from proxy_helpers import ProxyUnderTest, running_gateway
from top_helpers import refresh

HI = [{"role": "user", "content": "hi"}]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def router(router_factory):
    return router_factory(["alpha", "beta", "gamma"], broken=["bad"], models_max=1, sleep_idle_seconds=30)


@pytest.fixture(scope="module")
def gateway(router) -> Iterator[ProxyUnderTest]:
    with running_gateway(router.base_url) as gw:
        yield gw


def chat(gw: ProxyUnderTest, model: str) -> None:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=120,
                           default_headers={"X-Client-Name": "top-test"})
    try:
        client.chat.completions.create(model=model, messages=HI, max_tokens=4)
    except openai.APIStatusError:
        pass  # "bad" fails to load: that is the point
    finally:
        client.close()


def no_exporter() -> str:
    return f"http://127.0.0.1:{free_port()}"


def row(app: TopApp, key: str) -> list[str]:
    cells = [str(cell).strip() for cell in app.panels["models"].rows[key]]
    drawn = [line.split() for line in app.panels["models"].text.splitlines()]
    assert " ".join(cells).split() in drawn, f"row {key} is not drawn as {cells}"
    return cells


def test_models_panel_states_loads_failures_and_requests(router, gateway: ProxyUnderTest) -> None:
    app = TopApp(Sources(no_exporter(), gateway.admin_url, router_url=router.base_url), interval=3600)

    async def scenario(pilot: Pilot[None]) -> None:
        await refresh(pilot, app)
        assert app.panels["models"].keys() == ["alpha", "bad", "beta", "gamma"]
        assert row(app, "beta")[1] in ("unloaded", "loaded", "sleeping")
        # a swap (alpha, then beta evicts it) and a failed load, all between two refreshes
        for model in ("alpha", "alpha", "beta", "bad"):
            await asyncio.to_thread(chat, gateway, model)
        assert gateway.gateway is not None
        await asyncio.to_thread(gateway.gateway.drain)
        deadline = time.monotonic() + 30
        while True:
            await refresh(pilot, app)
            rows = {m: row(app, m) for m in ("alpha", "beta", "bad")}
            if rows["bad"][1].startswith("FAILED") and rows["alpha"][5] == "2":
                break
            assert time.monotonic() < deadline, rows
            await asyncio.sleep(0.2)
        alpha, beta, bad = rows["alpha"], rows["beta"], rows["bad"]
        assert alpha[1] == "unloaded" and alpha[3] == "1" and alpha[6] == "1"  # one load, one cold start, 2 requests
        assert beta[3] == "1" and beta[4] != "–" and beta[5] == "1" and beta[6] == "1"
        assert bad[1].startswith("FAILED (exit ") and "failed" in bad[3] and bad[5] == "1"
        # the panel is the first one, and tab reaches it after the last
        assert list(app.panels)[0] == "models"

    async def main() -> None:
        async with app.run_test(size=(100, 40)) as pilot:
            await scenario(pilot)

    asyncio.run(main())


def test_json_and_once_show_the_models(router, gateway: ProxyUnderTest) -> None:
    env = {**os.environ, "NO_COLOR": "1"}
    cmd = [sys.executable, "-m", "llamatelemetry.cli", "top", "--exporter", no_exporter(), "--gateway", gateway.admin_url,
           "--router", router.base_url, "--interval", "3"]
    chat(gateway, "gamma")  # gamma loaded (a cold start through the gateway) before top starts
    assert gateway.gateway is not None
    gateway.gateway.drain()
    out = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    view = json.loads(out.stdout)
    assert view["router"]["up"] is True
    models = {m["model"]: m for m in view["models"]}
    assert set(models) == {"alpha", "beta", "gamma", "bad"}
    gamma = models["gamma"]
    assert gamma["state"] == "loaded" and gamma["requests"] == 1 and gamma["cold_starts"] == 1
    assert 0 < view["wall_time"] - gamma["since"] < 3600  # a state seen since top started reading
    # loads are counted from the event stream while top runs: none happened during these 3 s
    assert all(m["loads"] == 0 for m in models.values())

    text = subprocess.run([*cmd, "--once", "--interval", "0.5"], capture_output=True, text=True, timeout=120, env=env)
    assert text.returncode == 0, text.stderr
    assert "MODELS" in text.stdout and "gamma" in text.stdout and "loaded" in text.stdout


def test_router_down_is_a_state_not_a_crash() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "llamatelemetry.cli", "top", "--exporter", no_exporter(), "--gateway", no_exporter(),
           "--router", url, "--interval", "0.5", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    view = json.loads(out.stdout)
    assert view["router"]["up"] is False and view["models"] == [] and out.returncode == 1


def test_models_panel_from_the_exporter_without_router_flag(router_factory) -> None:
    """No --router: the exporter watching a router (its llamatelemetry_model_* series) is enough for the panel."""
    from llamatelemetry.exporter import ExporterApp, ExporterConfig

    quiet = router_factory(["one", "two"], models_max=1)
    with ExporterApp(ExporterConfig(targets=[f"box={quiet.base_url}"], port=0, gpu=False)) as exporter, \
            running_gateway(quiet.base_url) as gw:
        app = TopApp(Sources(exporter.url, gw.admin_url), interval=3600)

        async def scenario(pilot: Pilot[None]) -> None:
            await refresh(pilot, app)  # the exporter starts following the router on its first scrape
            assert app.panels["models"].display and app.panels["models"].keys() == ["box/one", "box/two"]
            deadline = time.monotonic() + 30
            while 'llamatelemetry_router_events_up{target="box"} 1.0' not in await asyncio.to_thread(
                    lambda: httpx.get(exporter.url + "/metrics", timeout=10).text):
                assert time.monotonic() < deadline, "the exporter never followed the router"
                await asyncio.sleep(0.1)
            for model in ("one", "two", "one"):  # two swaps
                await asyncio.to_thread(chat, gw, model)
            assert gw.gateway is not None
            await asyncio.to_thread(gw.gateway.drain)
            while True:
                await refresh(pilot, app)
                one, two = row(app, "box/one"), row(app, "box/two")
                if one[3] == "2" and two[3] == "1":
                    break
                assert time.monotonic() < deadline, (one, two)
                await asyncio.sleep(0.2)
            assert one[0] == "one" and one[1] == "loaded" and two[1] == "unloaded"
            assert one[4] != "–" and one[5] == "2" and one[6] == "2" and two[5] == "1" and two[6] == "1"
            # SERVERS and SLOTS: a row per running model of the router (not one "box" row summing them)
            assert app.panels["servers"].keys() == ["box/one"] and app.panels["slots"].keys() == ["box/one#0"]
            server = [str(c).strip() for c in app.panels["servers"].rows["box/one"]]
            assert server[1] == "ok" and server[2] == "one"

        async def main() -> None:
            async with app.run_test(size=(100, 40)) as pilot:
                await scenario(pilot)

        asyncio.run(main())


def test_models_panel_in_a_real_terminal(router_factory) -> None:
    """``llamatelemetry top`` in tmux at 80x24 against the exporter watching a router: models and per-model rows fit."""
    from llamatelemetry.exporter import ExporterApp, ExporterConfig
    from test_top_terminal import top_command
    from tmux_helpers import TmuxSession

    shown = router_factory(["coder", "agent"], broken=["bad"], models_max=1)
    with ExporterApp(ExporterConfig(targets=[f"box={shown.base_url}"], port=0, gpu=False)) as exporter, \
            running_gateway(shown.base_url) as gw:
        command = top_command("--exporter", exporter.url, "--gateway", gw.admin_url, "--interval", "0.5")
        env = {"PYTHONPATH": os.environ.get("PYTHONPATH", ""), "PATH": os.environ.get("PATH", "")}
        with TmuxSession(command, env=env) as term:
            term.wait_for(lambda s: "MODELS" in s and "no model is running" in s, timeout=90, what="the models panel")
            deadline = time.monotonic() + 30
            while 'llamatelemetry_router_events_up{target="box"} 1.0' not in httpx.get(exporter.url + "/metrics", timeout=10).text:
                assert time.monotonic() < deadline, "the exporter never followed the router"
                time.sleep(0.1)
            for model in ("coder", "agent", "bad"):
                chat(gw, model)

            def ready(s: str) -> bool:
                rows = {line.split()[0]: line.split() for line in s.splitlines() if line.split()[:1]}
                return (rows.get("bad", [""] * 3)[1:3] == ["FAILED", "(exit"] and rows.get("coder", ["", ""])[1] == "unloaded"
                        and rows.get("agent", ["", "", "", ""])[3] == "1" and "box/agent" not in rows)

            screen = term.wait_for(ready, timeout=90, what="a swap and a failed load on screen")
            lines = screen.splitlines()
            assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
            assert lines[1].split()[:2] == ["MODELS", "state"]  # the first panel, right under the status line
            term.send_keys("q")
            term.wait_for(lambda s: term.exited(), timeout=10, what="top to quit on q")


def test_router_with_an_api_key_reads_it_from_the_environment(router_factory) -> None:
    locked = router_factory(["one"], extra_args=["--api-key", "sk-top-secret"], wait=False)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(locked.base_url + "/models", headers={"Authorization": "Bearer sk-top-secret"}, timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "router with --api-key not ready"
        time.sleep(0.1)
    cmd = [sys.executable, "-m", "llamatelemetry.cli", "top", "--exporter", no_exporter(), "--gateway", no_exporter(),
           "--router", locked.base_url, "--interval", "0.5", "--json"]
    env = {k: v for k, v in os.environ.items() if k != "LLAMA_API_KEY"}
    keyed = json.loads(subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**env, "LLAMA_API_KEY": "sk-top-secret"}).stdout)
    assert keyed["router"]["up"] is True and [m["model"] for m in keyed["models"]] == ["one"]
    keyless = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    view = json.loads(keyless.stdout)
    assert view["router"]["up"] is False and "401" in view["router"]["error"] and keyless.returncode == 1
    assert "sk-top-secret" not in keyless.stdout + json.dumps(keyed)
