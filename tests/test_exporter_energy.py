"""Energy per llama-server target and the joules-per-token / per-request recording rules.

The attribution bookkeeping (llamatelemetry.exporter.energy) is tested on its own; then the fake NVML
(tests/fake_nvml.py) drives known energy and SM utilisation for GPUs that real llama-servers run on,
and a real Prometheus evaluates collector/recording_rules.yml: the series must equal the hand computation.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fake_nvml import FakeGPU, FakeNVML, FakeProcess
from prom_helpers import one, scrape, start_prometheus

from llamatelemetry.exporter import ExporterApp, ExporterConfig
from llamatelemetry.exporter.energy import EnergyLedger, split_energy
from llamatelemetry.exporter.gpu import GpuCollector
from llamatelemetry.exporter.targets import parse_target

COLLECTOR = Path(__file__).resolve().parent.parent / "collector"
ENERGY = "llamatelemetry_target_energy_joules_total"


# -- the pure bookkeeping ------------------------------------------------------------------------
def test_split_energy_one_target_takes_all_several_share_by_weight_idle_share_equally() -> None:
    assert split_energy(12.0, {"a": 0.0}) == {"a": 12.0}  # alone on the GPU: idle power is its cost too
    assert split_energy(12.0, {"a": 75.0, "b": 25.0}) == {"a": 9.0, "b": 3.0}
    assert split_energy(12.0, {"a": 0.0, "b": 0.0, "c": 0.0}) == {"a": 4.0, "b": 4.0, "c": 4.0}
    assert split_energy(12.0, {"a": -5.0, "b": 10.0}) == {"a": 0.0, "b": 12.0}  # nonsense weights never go negative
    assert split_energy(12.0, {}) == {}


def test_ledger_baseline_driver_reload_and_several_gpus() -> None:
    ledger = EnergyLedger()
    ledger.add_reading("gpu0", 50_000.0, {"a": 1.0})
    assert ledger.totals == {"a": 0.0}  # the series exists from the first reading, before any energy is charged
    ledger.add_reading("gpu0", 53_000.0, {"a": 1.0})
    ledger.add_reading("gpu1", 10_000.0, {"a": 1.0, "b": 3.0})
    ledger.add_reading("gpu1", 18_000.0, {"a": 1.0, "b": 3.0})
    assert ledger.totals == {"a": 3.0 + 2.0, "b": 6.0}  # a runs on both GPUs (tensor split): both shares add up
    ledger.add_reading("gpu0", 1_000.0, {"a": 1.0})  # counter went back: driver reloaded, new baseline only
    assert ledger.totals["a"] == 5.0
    ledger.add_reading("gpu0", 2_000.0, {})  # nobody on the GPU: nobody charged
    ledger.add_reading("gpu0", 4_000.0, {"a": 1.0})
    assert ledger.totals == {"a": 7.0, "b": 6.0}


# -- NVML (fake) + real llama-servers --------------------------------------------------------------
def _gpu_with(*servers_and_sm: tuple[Any, int], energy_mj: int = 1_000_000) -> FakeNVML:
    gpu = FakeGPU(energy_mj=energy_mj, processes=[FakeProcess(s.pid, 1 << 30, sm_util=sm) for s, sm in servers_and_sm])
    return FakeNVML([gpu])


def test_targets_sharing_a_gpu_split_its_energy_by_sm_utilisation(llama_server_factory) -> None:  # noqa: ANN001
    a, b = llama_server_factory(), llama_server_factory()
    nvml = _gpu_with((a, 60), (b, 20))
    gpu = GpuCollector(nvml, targets=[parse_target(f"a={a.base_url}"), parse_target(f"b={b.base_url}")])
    gpu.collect()
    nvml.gpus[0].energy_mj += 8_000  # 8 J since the previous reading
    fams = {f.name: f for f in gpu.collect().families}
    got = {s.labels["target"]: s.value for s in fams["llamatelemetry_target_energy_joules"].samples}
    assert got == {"a": 6.0, "b": 2.0}
    nvml.gpus[0].processes[0].sm_util = nvml.gpus[0].processes[1].sm_util = 0  # both idle: shared equally
    nvml.gpus[0].energy_mj += 1_000
    fams = {f.name: f for f in gpu.collect().families}
    assert {s.labels["target"]: s.value for s in fams["llamatelemetry_target_energy_joules"].samples} == {"a": 6.5, "b": 2.5}


def test_alone_on_a_gpu_a_target_gets_all_of_it_and_other_gpus_are_not_charged(llama_server_factory) -> None:  # noqa: ANN001
    a = llama_server_factory()
    nvml = _gpu_with((a, 1))
    nvml.gpus.append(FakeGPU(uuid="GPU-other", energy_mj=5_000))  # nothing of ours runs there
    gpu = GpuCollector(nvml, targets=[parse_target(f"a={a.base_url}")])
    gpu.collect()
    nvml.gpus[0].energy_mj += 2_500
    nvml.gpus[1].energy_mj += 99_000
    fams = {f.name: f for f in gpu.collect().families}
    assert [(s.labels, s.value) for s in fams["llamatelemetry_target_energy_joules"].samples] == [({"target": "a"}, 2.5)]


# -- recording rules ----------------------------------------------------------------------------
def test_recording_rules_pass_promtool_unit_tests() -> None:
    out = subprocess.run(["promtool", "test", "rules", "recording_rules_test.yml"], cwd=COLLECTOR, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_recording_rules_are_loaded_by_the_shipped_configs() -> None:
    import yaml

    for config in ("prometheus.yml", "prometheus-probe.yml"):
        assert "recording_rules.yml" in yaml.safe_load((COLLECTOR / config).read_text())["rule_files"], config


def _generate(base_url: str, tokens: int) -> int:
    """One request generating exactly ``tokens`` tokens (ignore_eos: the scripted model loops)."""
    resp = httpx.post(base_url + "/v1/chat/completions", timeout=60,
                      json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": tokens, "ignore_eos": True})
    resp.raise_for_status()
    assert resp.json()["usage"]["completion_tokens"] == tokens
    return tokens


def test_joules_per_token_and_per_request_from_a_real_prometheus_equal_the_hand_computation(llama_server_factory) -> None:  # noqa: ANN001
    # Fresh servers: their token counters start at 0 like the exporter's energy counters, so every series
    # starts at 0 on the same scrape and rate()'s extrapolation is the same for numerator and denominator.
    a = llama_server_factory("--metrics")
    b = llama_server_factory("--metrics")
    nvml = _gpu_with((a, 75), (b, 25))
    config = ExporterConfig(targets=[f"a={a.base_url}", f"b={b.base_url}"], port=0, timeout=0.8)
    with ExporterApp(config, nvml=nvml) as app:
        first = scrape(app.url)
        assert one(first, ENERGY, target="a") == 0 and one(first, "llamacpp_tokens_predicted_total", target="a") == 0
        with start_prometheus({"llamatelemetry-exporter": [app.url.removeprefix("http://")]},
                              rule_files=[COLLECTOR / "recording_rules.yml"]) as prom:
            prom.wait_for('count_over_time(llamacpp_tokens_predicted_total{target="b"}[1m]) >= 2')

            requests = {"a": [40, 24], "b": [30]}
            for name, server in (("a", a), ("b", b)):
                for n, tokens in enumerate(requests[name], start=1):
                    _generate(server.base_url, tokens)
                    # One request per slot per scrape is what the exporter can count: wait for the scrape.
                    prom.wait_for(f'llamatelemetry_target_requests_total{{target="{name}"}} == {n}')
            nvml.gpus[0].energy_mj += 16_000  # 16 J: a gets 75 % (12 J), b 25 % (4 J)
            tokens = {name: sum(v) for name, v in requests.items()}
            for name, joules in (("a", 12.0), ("b", 4.0)):
                prom.wait_for(f'{ENERGY}{{target="{name}"}} == {joules}')
                prom.wait_for(f'llamacpp_tokens_predicted_total{{target="{name}"}} == {tokens[name]}')
            time.sleep(2.5)  # a couple of rule evaluations after the last change

            for name, joules in (("a", 12.0), ("b", 4.0)):
                per_token = prom.value(f'target:llamatelemetry_joules_per_token:rate5m{{target="{name}"}}')
                per_request = prom.value(f'target:llamatelemetry_joules_per_request:rate5m{{target="{name}"}}')
                assert per_token == pytest.approx(joules / tokens[name], rel=1e-9), name
                assert per_request == pytest.approx(joules / len(requests[name]), rel=1e-9), name
    assert one(first, "llamatelemetry_gpu_energy_joules_total", gpu="0") == 1_000.0  # the whole GPU, for comparison
