"""GPU collector tests: a fake at the pynvml boundary (several GPUs, NotSupported fields, errors
mid-run, processes incl. real llama-server PIDs), /proc port attribution, and real NVML on GPU hosts."""

from __future__ import annotations

import logging
import os
import socket

import pytest

from llamatelemetry.exporter import procnet
from fake_nvml import FakeGPU, FakeNVML, FakeProcess
from llamatelemetry.exporter.gpu import THROTTLE_REASONS, GpuCollector, GpuResult
from llamatelemetry.exporter.targets import parse_target


def values(result: GpuResult) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a GPU collection."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for fam in result.families for s in fam.samples}


def series(result: GpuResult, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in values(result).items() if n == name}


def lbl(**kw: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(kw.items()))


def test_all_fields_in_base_units() -> None:
    nvml = FakeNVML()
    result = GpuCollector(nvml=nvml).collect()
    assert result.up and result.error is None
    for index, gpu in enumerate(nvml.gpus):
        key = lbl(gpu=str(index), uuid=gpu.uuid)
        v = values(result)
        assert v[("llamatelemetry_gpu_info", lbl(gpu=str(index), uuid=gpu.uuid, name=gpu.name, driver_version=nvml.driver_version, cuda_version="12.4"))] == 1
        assert v[("llamatelemetry_gpu_utilization_ratio", key)] == pytest.approx(gpu.util_gpu / 100)
        assert v[("llamatelemetry_gpu_memory_utilization_ratio", key)] == pytest.approx(gpu.util_memory / 100)
        assert v[("llamatelemetry_gpu_memory_used_bytes", key)] == gpu.memory_used
        assert v[("llamatelemetry_gpu_memory_free_bytes", key)] == gpu.memory_total - gpu.memory_used
        assert v[("llamatelemetry_gpu_memory_total_bytes", key)] == gpu.memory_total
        assert v[("llamatelemetry_gpu_temperature_celsius", key)] == gpu.temperature
        assert v[("llamatelemetry_gpu_power_watts", key)] == pytest.approx(gpu.power_mw / 1000)
        assert v[("llamatelemetry_gpu_power_limit_watts", key)] == pytest.approx(gpu.power_limit_mw / 1000)
        assert v[("llamatelemetry_gpu_sm_clock_hertz", key)] == gpu.sm_clock_mhz * 1e6
        assert v[("llamatelemetry_gpu_memory_clock_hertz", key)] == gpu.mem_clock_mhz * 1e6
        for bit, reason in THROTTLE_REASONS.items():
            assert v[("llamatelemetry_gpu_throttle_reason", lbl(gpu=str(index), uuid=gpu.uuid, reason=reason))] == (1.0 if gpu.clock_event_reasons & bit else 0.0)
    gpu0 = nvml.gpus[0]
    key0 = lbl(gpu="0", uuid=gpu0.uuid)
    v = values(result)
    assert v[("llamatelemetry_gpu_energy_joules_total", key0)] == pytest.approx(gpu0.energy_mj / 1000)
    assert v[("llamatelemetry_gpu_fan_speed_ratio", key0)] == pytest.approx(gpu0.fan_percent / 100)
    assert v[("llamatelemetry_gpu_ecc_errors_total", lbl(gpu="0", uuid=gpu0.uuid, type="corrected"))] == gpu0.ecc_corrected
    # PCIe is opt-in: it blocks ~20 ms per reading on real hardware.
    assert not series(result, "llamatelemetry_gpu_pcie_throughput_bytes_per_second")
    pcie = series(GpuCollector(nvml=nvml, pcie=True).collect(), "llamatelemetry_gpu_pcie_throughput_bytes_per_second")
    assert pcie[lbl(gpu="0", uuid=gpu0.uuid, direction="tx")] == gpu0.pcie_tx_kbps * 1024


def test_not_supported_fields_are_omitted_per_gpu() -> None:
    nvml = FakeNVML()
    result = GpuCollector(nvml=nvml).collect()
    assert result.up
    gpu1 = lbl(gpu="1", uuid=nvml.gpus[1].uuid)
    for name in ("llamatelemetry_gpu_fan_speed_ratio", "llamatelemetry_gpu_energy_joules_total"):
        got = series(result, name)
        assert gpu1 not in got and lbl(gpu="0", uuid=nvml.gpus[0].uuid) in got
    assert all(dict(k)["gpu"] == "0" for k in series(result, "llamatelemetry_gpu_ecc_errors_total"))
    # A GPU where even memory info is unsupported still gets its other series.
    nvml.gpus[0].unsupported |= {"nvmlDeviceGetMemoryInfo", "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetCurrentClocksEventReasons"}
    result = GpuCollector(nvml=nvml).collect()
    assert result.up
    assert list(series(result, "llamatelemetry_gpu_memory_used_bytes")) == [gpu1]
    assert lbl(gpu="0", uuid=nvml.gpus[0].uuid) in series(result, "llamatelemetry_gpu_temperature_celsius")


def test_no_driver_reports_down_once_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    nvml = FakeNVML()
    nvml.init_error = nvml.NVML_ERROR_DRIVER_NOT_LOADED
    collector = GpuCollector(nvml=nvml, retry_interval=0.0)
    with caplog.at_level(logging.INFO, logger="llamatelemetry.exporter.gpu"):
        results = [collector.collect() for _ in range(3)]
    assert all(not r.up and not r.families for r in results)
    assert "Driver Not Loaded" in (results[0].error or "")
    down_lines = [r for r in caplog.records if "GPU collection is down" in r.getMessage()]
    assert len(down_lines) == 1 and "--no-gpu" in down_lines[0].getMessage()
    assert nvml.init_calls == 3  # retried (retry_interval=0) but logged once
    nvml.init_error = None
    assert collector.collect().up


def test_init_retry_is_rate_limited() -> None:
    nvml = FakeNVML()
    nvml.init_error = nvml.NVML_ERROR_LIBRARY_NOT_FOUND
    collector = GpuCollector(nvml=nvml, retry_interval=3600)
    for _ in range(5):
        assert not collector.collect().up
    assert nvml.init_calls == 1


def test_error_mid_run_reinitialises() -> None:
    nvml = FakeNVML()
    collector = GpuCollector(nvml=nvml)
    assert collector.collect().up and nvml.init_calls == 1
    nvml.fail_next(1, nvml.NVML_ERROR_GPU_IS_LOST)
    failed = collector.collect()
    assert not failed.up and "GPU is lost" in (failed.error or "")
    assert nvml.shutdown_calls == 1
    again = collector.collect()
    assert again.up and nvml.init_calls == 2
    assert len(series(again, "llamatelemetry_gpu_memory_used_bytes")) == 2


def test_process_memory_names_and_target_attribution(llama_server_factory) -> None:  # noqa: ANN001 - fixture
    a = llama_server_factory("--no-slots")
    b = llama_server_factory("--no-slots")
    nvml = FakeNVML()
    nvml.gpus[0].processes += [FakeProcess(a.pid, 3 << 30), FakeProcess(os.getpid(), 1 << 20)]
    nvml.gpus[1].processes += [FakeProcess(b.pid, 5 << 30), FakeProcess(a.pid, 7 << 20),
                               FakeProcess(999_999_999, 1 << 10, name="/opt/app/ghost-worker"),
                               FakeProcess(os.getpid() + 10_000_000, None)]
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        free_port = unused.getsockname()[1]
    targets = [parse_target(f"a={a.base_url}"), parse_target(f"b=http://localhost:{b.port}"), parse_target(f"down=http://127.0.0.1:{free_port}")]
    result = GpuCollector(nvml=nvml, targets=targets).collect()
    assert result.up
    uuid0, uuid1 = nvml.gpus[0].uuid, nvml.gpus[1].uuid
    assert series(result, "llamatelemetry_gpu_target_memory_used_bytes") == {
        lbl(gpu="0", uuid=uuid0, target="a"): 3 << 30,
        lbl(gpu="1", uuid=uuid1, target="a"): 7 << 20,
        lbl(gpu="1", uuid=uuid1, target="b"): 5 << 30,
    }
    procs = series(result, "llamatelemetry_gpu_process_memory_used_bytes")
    assert procs[lbl(gpu="0", uuid=uuid0, pid=str(a.pid), process="llama-server")] == 3 << 30
    assert procs[lbl(gpu="1", uuid=uuid1, pid=str(b.pid), process="llama-server")] == 5 << 30
    # Not in our /proc (another PID namespace): the name comes from NVML, basename only.
    assert procs[lbl(gpu="1", uuid=uuid1, pid="999999999", process="ghost-worker")] == 1 << 10
    assert not any(dict(k)["pid"] == str(os.getpid() + 10_000_000) for k in procs)  # memory not available
    # --no-gpu-processes: per-process series gone, per-target attribution stays.
    quiet = GpuCollector(nvml=nvml, targets=targets, processes=False).collect()
    assert not series(quiet, "llamatelemetry_gpu_process_memory_used_bytes")
    assert len(series(quiet, "llamatelemetry_gpu_target_memory_used_bytes")) == 3


def test_remote_targets_are_not_attributed() -> None:
    target = parse_target("far=http://192.0.2.10:8080")  # TEST-NET-1: never a local address
    assert target.local_addresses is None
    nvml = FakeNVML([FakeGPU(processes=[FakeProcess(os.getpid(), 1)])])
    assert not series(GpuCollector(nvml=nvml, targets=[target]).collect(), "llamatelemetry_gpu_target_memory_used_bytes")


def test_procnet_finds_the_listening_pid() -> None:
    with socket.socket() as listener, socket.socket() as other:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        other.bind(("127.0.0.1", 0))  # bound, not listening: must not match
        assert procnet.listening_inodes(port)
        assert procnet.find_listener_pid(port, [1, os.getpid()]) == os.getpid()
        assert procnet.find_listener_pid(port, [os.getpid()], addresses={"10.255.255.1"}) is None
        assert procnet.find_listener_pid(other.getsockname()[1], [os.getpid()]) is None
    assert procnet.find_listener_pid(port, [os.getpid()]) is None  # closed


@pytest.mark.gpu
def test_real_nvml_on_a_gpu_machine() -> None:
    import pynvml  # nvidia-ml-py is a test dependency: only a failing nvmlInit() may skip this test

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        pytest.skip(f"no usable NVIDIA driver/GPU here: {exc}")
    try:
        count = pynvml.nvmlDeviceGetCount()
    finally:
        pynvml.nvmlShutdown()
    result = GpuCollector().collect()
    assert result.up, result.error
    assert len(series(result, "llamatelemetry_gpu_info")) == count
    for value in series(result, "llamatelemetry_gpu_memory_total_bytes").values():
        assert value > 1 << 20
    for value in series(result, "llamatelemetry_gpu_utilization_ratio").values():
        assert 0.0 <= value <= 1.0


def test_a_hanging_nvml_call_does_not_hang_the_scrape(full_server) -> None:  # noqa: ANN001
    import threading
    import time

    from prom_helpers import one, scrape

    from llamatelemetry.exporter import ExporterApp, ExporterConfig

    nvml = FakeNVML()
    release = threading.Event()
    original = nvml.nvmlDeviceGetTemperature
    nvml.nvmlDeviceGetTemperature = lambda h, s: (release.wait(10), original(h, s))[1]  # type: ignore[method-assign]
    with ExporterApp(ExporterConfig(targets=[f"full={full_server.base_url}"], port=0, timeout=0.5), nvml=nvml) as app:
        start = time.perf_counter()
        s = scrape(app.url)
        assert time.perf_counter() - start < 2.0
        assert one(s, "llamatelemetry_collector_up", collector="gpu") == 0
        assert one(s, "llamatelemetry_target_up", target="full") == 1
        release.set()
