"""The agent panels of the Clients (proxy) dashboard and the joules-per-client rules, on a real Prometheus.

The shared live stack (tests/test_stack_live.py) serves the plain scripted model, which never calls a tool
and has no draft model; here a real gateway fronts the servers that produce every agent condition — a
scripted Qwen3.5 model writing a malformed tool call, another writing a valid one, and the scripted model
with a draft model (``-md``) behind a sidecar exporter whose GPU is the fake NVML — and a real Prometheus
scrapes the gateway and the exporter and evaluates collector/recording_rules.yml. Every query of the agent
panels must return data, and the joules per client must be the GPU's energy shared out by output tokens.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from fake_nvml import FakeGPU, FakeNVML, FakeProcess
from llamatelemetry.exporter import ExporterApp, ExporterConfig
from llamatelemetry.provision.model import (
    QWEN35_BAD_TOOL_SCRIPT, QWEN35_TOOL_SCRIPT, TOOL_CALL_TOOL, cached_thinking_models, write_draft_model,
)
from llamatelemetry.provision.sdist import sdist_asset
from llamatelemetry.provision.server import LlamaServer
from prom_helpers import RunningPrometheus, start_prometheus
from proxy_helpers import ProxyUnderTest, running_gateway
from stack_helpers import dashboard_queries

COLLECTOR = Path(__file__).resolve().parent.parent / "collector"
#: The panels dashboards/build.py's agent_panels() adds (the shared live stack cannot feed the first two).
AGENT_PANELS = {
    "Queue wait (p50 / p95)", "Context utilisation (p95)", "Context overflows in range", "Tool calls/s and malformed",
    "Prompt-cache hit ratio", "Speculative acceptance ratio", "Power per client (W)", "Energy per client in range",
}
WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


class Agents:
    """Servers, exporter, gateway and Prometheus, wired as on one box."""

    def __init__(self, prom: RunningPrometheus, gateway: ProxyUnderTest, nvml: FakeNVML, urls: dict[str, str]) -> None:
        self.prom, self.gateway, self.nvml, self.urls = prom, gateway, nvml, urls

    def chat(self, route: str, client: str, **body: object) -> httpx.Response:
        return httpx.post(self.urls[route] + "/v1/chat/completions", headers={"X-Client-Name": client}, timeout=120,
                          json={"model": "scripted" if route == "draft" else route,
                                "messages": [{"role": "user", "content": "hi"}], **body})


@pytest.fixture(scope="module")
def agents(llama_server_binary: Path, scripted_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agents]:
    draft = write_draft_model(tmp_path_factory.mktemp("draft") / "draft.gguf")
    models = cached_thinking_models([QWEN35_TOOL_SCRIPT, QWEN35_BAD_TOOL_SCRIPT])
    servers = {"draft": LlamaServer(scripted_model, binary=llama_server_binary, extra_args=[
        "--metrics", "-md", str(draft), "--spec-type", "draft-simple", "--spec-draft-n-max", "4"])}
    for script in (QWEN35_TOOL_SCRIPT, QWEN35_BAD_TOOL_SCRIPT):
        servers[script.family] = LlamaServer(models[script.family], binary=llama_server_binary, alias=script.family,
                                             extra_args=["--chat-template-file", str(sdist_asset(script.template))])
    try:
        for server in servers.values():
            server.start(wait=False)
        for server in servers.values():
            server.wait_ready()
        # The draft server is alone on the fake GPU: every joule is its own.
        nvml = FakeNVML([FakeGPU(energy_mj=1_000_000, processes=[FakeProcess(servers["draft"].pid, 1 << 30, sm_util=50)])])
        config = ExporterConfig(targets=[f"draft={servers['draft'].base_url}"], port=0, timeout=1.0)
        with ExporterApp(config, nvml=nvml) as exporter, running_gateway(*(s.base_url for s in servers.values())) as gw:
            assert gw.gateway is not None
            urls = dict(zip(servers, gw.gateway.urls))
            scrape = {"llamatelemetry-exporter": [exporter.url.removeprefix("http://").rstrip("/")],
                      "llamatelemetry-proxy": [gw.admin_url.removeprefix("http://").rstrip("/")]}
            with start_prometheus(scrape, rule_files=[COLLECTOR / "recording_rules.yml"]) as prom:
                yield Agents(prom, gw, nvml, urls)
    finally:
        for server in servers.values():
            server.stop()


def test_agent_panels_return_data_and_joules_follow_output_tokens(agents: Agents) -> None:
    prom = agents.prom
    prom.wait_for('count_over_time(llamatelemetry_target_energy_joules_total{target="draft"}[1m]) >= 2', timeout=90)
    # Each client's series exist before the measured traffic: their rates then share the same scrapes.
    for client in ("aider", "claude-code"):
        assert agents.chat("draft", client, max_tokens=8, ignore_eos=True).status_code == 200
    agents.gateway.wait_for_spans(2)
    for name in ("llamatelemetry_prompt_tokens_total", "llamatelemetry_speculative_draft_tokens_total"):
        prom.wait_for(f'count(count_over_time({name}{{gen_ai_request_model="scripted"}}[1m]) >= 2) == 2', timeout=90)
    # Two agents on the draft server: aider generates 3 x 64 tokens, claude-code 64; the same prompt (cache hits).
    # (The exporter reads the server's counter: 2 x 8 warm-up tokens + 256.)
    for client, runs in (("aider", 3), ("claude-code", 1)):
        for _ in range(runs):
            assert agents.chat("draft", client, max_tokens=64, ignore_eos=True).status_code == 200
    # A prompt over the slot's context (2048 tokens), and tool calls: valid and malformed.
    assert agents.chat("draft", "aider", messages=[{"role": "user", "content": "hi " * 1000}]).status_code == 400
    for route in ("qwen35-tools", "qwen35-badtools"):
        assert agents.chat(route, "aider", messages=WEATHER, tools=[TOOL_CALL_TOOL], max_tokens=40).status_code == 200
    agents.gateway.wait_for_spans(9)
    agents.nvml.gpus[0].energy_mj += 25_600  # 25.6 J spent by the draft server since the exporter's first reading
    prom.wait_for('llamatelemetry_target_energy_joules_total{target="draft"} == 25.6', timeout=90)
    prom.wait_for('llamacpp_tokens_predicted_total{target="draft"} == 272', timeout=90)
    prom.wait_for('sum(llamatelemetry_tool_calls_malformed_total) >= 1', timeout=90)
    prom.wait_for('client:llamatelemetry_joules:rate5m{llamatelemetry_client_name="claude-code"}', timeout=90)
    time.sleep(2.5)  # a couple of rule evaluations after the last change

    missing = [(title, expr) for board, title, expr in dashboard_queries()
               if board == "proxy.json" and title in AGENT_PANELS and not prom.query(expr)]
    assert not missing, missing

    # Joules per client = the target's J/token x the client's output tokens/s: aider made 3/4 of the tokens.
    at = time.time() - 1.5  # one evaluation of the rule group for every value (a rule group is evaluated each second)
    aider = prom.value('client:llamatelemetry_joules:rate5m{llamatelemetry_client_name="aider"}', at=at)
    claude = prom.value('client:llamatelemetry_joules:rate5m{llamatelemetry_client_name="claude-code"}', at=at)
    per_token = prom.value('target:llamatelemetry_joules_per_token:rate5m{target="draft"}', at=at)
    assert aider is not None and claude is not None and per_token is not None
    assert per_token == pytest.approx(25.6 / 272, rel=0.05)
    assert aider / claude == pytest.approx(3.0, rel=0.15)  # rates of series seen from different first scrapes
    model = prom.value('model:llamatelemetry_joules:rate5m{gen_ai_response_model="scripted"}', at=at)
    assert model == pytest.approx(aider + claude, rel=1e-9)
