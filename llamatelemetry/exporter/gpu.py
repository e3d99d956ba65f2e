"""GPU metrics from NVML (``nvidia-ml-py``, imported as ``pynvml``), in base units.

* Fields a GPU does not support (``NVMLError_NotSupported``, also NoPermission / NotFound /
  NoData) are omitted for that GPU; the scrape goes on.
* No driver / no library: ``nvmlInit`` fails, the collector logs that **once**, reports
  ``llamatelemetry_collector_up{collector="gpu"} 0`` and retries initialisation quietly at
  most every ``retry_interval`` seconds. A host without an NVIDIA driver (NVML's
  DriverNotLoaded / LibraryNotFound) simply has no GPU: that is not counted in
  ``llamatelemetry_scrape_errors_total`` (which would show as a permanent error rate); any other
  init failure (no permission in a container ...) is.
* Any other NVML error during a scrape (GPU lost, Uninitialized, Unknown ...) counts as a
  scrape error and makes the next scrape shut NVML down and initialise it again.

* Energy per target (``llamatelemetry_target_energy_joules_total``): each GPU's energy counter
  is split among the local targets whose process runs on it (see :mod:`.energy`); several
  targets on one GPU share it by their processes' SM utilisation.

The ``nvml`` object is the ``pynvml`` module (``nvidia-ml-py``); tests pass a stand-in with the
same functions (``tests/fake_nvml.py``). Nothing in the package fakes a GPU.

Example::

    from llamatelemetry.exporter.gpu import GpuCollector
    result = GpuCollector().collect()      # imports pynvml; result.up is False without a driver
    print(result.up, [m.name for m in result.families])
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from . import procnet
from .energy import EnergyLedger
from .targets import Target

log = logging.getLogger("llamatelemetry.exporter.gpu")

#: Clock-event ("throttle") reason bits (stable NVML ABI) and the label value used for each.
THROTTLE_REASONS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}

# Error codes meaning "this field is not available here": omit the series, nothing is broken.
_FIELD_ERRORS = {3, 4, 6, 13}  # NOT_SUPPORTED, NO_PERMISSION, NOT_FOUND, NO_DATA
#: nvmlInit errors that mean "this host has no NVIDIA GPU/driver": DRIVER_NOT_LOADED, LIBRARY_NOT_FOUND.
_NO_GPU_ERRORS = {9, 12}


#: Joins a router target's name and a model id into one energy-ledger key (never in a label value).
_MODEL_SEP = "\x1f"


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@dataclass
class GpuResult:
    """What one GPU collection produced: metric families and whether NVML worked."""

    up: bool
    families: list[Metric] = field(default_factory=list)
    error: str | None = None
    #: True when the host has no NVIDIA GPU (no driver): down, but not an error.
    no_gpu: bool = False


class GpuCollector:
    """Collect NVML metrics for every GPU; see the module docstring for the error policy.

    ``targets`` are llama-server targets whose GPU memory is attributed by finding the local
    process listening on the target's port. ``processes=False`` drops the per-process series
    (pid cardinality) but keeps the per-target attribution. ``pcie=True`` adds PCIe
    throughput, which costs ~20 ms per reading per GPU, so it is off by default.
    """

    def __init__(
        self,
        nvml: Any = None,
        *,
        targets: Iterable[Target] = (),
        processes: bool = True,
        pcie: bool = False,
        retry_interval: float = 60.0,
        process_name: Callable[[int], str | None] = procnet.process_name,
    ) -> None:
        if nvml is None:
            import pynvml  # noqa: PLC0415 - only needed when GPU collection is on

            nvml = pynvml
        self.nvml = nvml
        self.targets = [t for t in targets if t.local_addresses is not None]
        self.processes = processes
        self.pcie = pcie
        self.retry_interval = retry_interval
        self._process_name = process_name
        self._lock = threading.Lock()  # NVML init/shutdown must not interleave between scrapes
        self._initialized = False
        self._next_init = 0.0
        self._logged_down = False
        self._static: dict[str, str] = {}
        self.energy = EnergyLedger()
        self._listening: dict[str, set[int]] = {}  # per target: its port's listening socket inodes, read once per scrape
        # Router targets: each running model is its own child process on a loopback port (set every scrape).
        self._model_ports: dict[tuple[str, str], int] = {}
        self._model_listening: dict[tuple[str, str], set[int]] = {}
        self._util_seen: dict[str, int] = {}  # per GPU uuid: newest process-utilisation sample read (NVML µs)
        #: The last error of :meth:`collect` (None when NVML works), shown on the index page.
        self.last_error: str | None = "not collected yet"
        self._init_error = "NVML not initialised"
        self._no_gpu = False

    def add_target(self, target: Target) -> None:
        """Also attribute GPU memory and energy to ``target`` (one that /probe scraped), when it is local."""
        with self._lock:
            if target.local_addresses is not None and all(t.name != target.name for t in self.targets):
                self.targets.append(target)

    def set_model_ports(self, target: str, ports: dict[str, int]) -> None:
        """The running models of local router target ``target`` and their child processes' ports.

        Replaces that target's previous mapping (a model that stopped keeps its energy total).
        Remote routers are ignored, as remote targets are.

        Example::

            gpu.set_model_ports("box", {"coder": 41234, "agent": 41240})
        """
        with self._lock:
            if all(t.name != target for t in self.targets):
                return
            kept = {key: port for key, port in self._model_ports.items() if key[0] != target}
            kept.update({(target, model): port for model, port in ports.items()})
            self._model_ports = kept

    # -- lifecycle --------------------------------------------------------------------------
    def _ensure_init(self) -> str | None:
        if self._initialized:
            return None
        now = time.monotonic()
        if now < self._next_init:
            return f"{self._init_error} (retried every {self.retry_interval:g}s)"
        try:
            self.nvml.nvmlInit()
            self._static = {
                "driver_version": self._safe(self.nvml.nvmlSystemGetDriverVersion) or "",
                "cuda_version": self._cuda_version(),
            }
        except self.nvml.NVMLError as exc:
            self._next_init = now + self.retry_interval
            self._no_gpu = getattr(exc, "value", None) in _NO_GPU_ERRORS
            if not self._logged_down:
                log.warning(
                    "GPU collection is down: NVML could not initialise (%s). %s Other metrics keep working; "
                    "pass --no-gpu to turn GPU collection off.", exc,
                    "No NVIDIA driver here: reported as no GPU, not as scrape errors." if self._no_gpu else
                    "Is the NVIDIA driver installed and a GPU visible to this process?",
                )
                self._logged_down = True
            else:
                log.debug("NVML init retry failed: %s", exc)
            self._init_error = f"nvmlInit failed: {exc}"
            return self._init_error
        if self._logged_down:
            log.info("GPU collection is up again: NVML initialised")
        self._logged_down = False
        self._no_gpu = False
        self._initialized = True
        log.info("NVML initialised: driver %s, CUDA %s", self._static["driver_version"], self._static["cuda_version"])
        return None

    def _reset(self) -> None:
        self._initialized = False
        self._next_init = 0.0  # re-initialise at the next scrape
        try:
            self.nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - shutting down a broken NVML may fail too; we re-init anyway
            pass

    def close(self) -> None:
        """Shut NVML down (called when the exporter stops)."""
        with self._lock:
            if self._initialized:
                self._reset()

    def _cuda_version(self) -> str:
        raw = self._safe(self.nvml.nvmlSystemGetCudaDriverVersion)
        if raw is None:
            return ""
        raw = int(raw)
        return f"{raw // 1000}.{(raw % 1000) // 10}"

    def _safe(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call an NVML field getter; ``None`` when the field is not supported here."""
        try:
            return fn(*args)
        except self.nvml.NVMLError as exc:
            if getattr(exc, "value", None) in _FIELD_ERRORS:
                return None
            raise

    # -- collection -------------------------------------------------------------------------
    def collect(self) -> GpuResult:
        """Read every GPU once. Never raises for NVML problems: they are reported in the result."""
        with self._lock:
            error = self._ensure_init()
            if error is None:
                try:
                    families = self._collect_all()
                except self.nvml.NVMLError as exc:
                    log.warning("NVML error while reading GPUs (%s); will re-initialise NVML at the next scrape", exc)
                    self._reset()
                    error = f"NVML error: {exc}"
            self.last_error = error
            if error is not None:
                return GpuResult(up=False, error=error, no_gpu=self._no_gpu and not self._initialized)
            return GpuResult(up=True, families=families)

    def _collect_all(self) -> list[Metric]:
        n = self.nvml
        g = lambda name, doc, labels: GaugeMetricFamily(name, doc, labels=labels)  # noqa: E731
        base = ["gpu", "uuid"]
        info = g("llamatelemetry_gpu_info", "GPU identity; value is always 1.", base + ["name", "driver_version", "cuda_version"])
        util = g("llamatelemetry_gpu_utilization_ratio", "Fraction of time a kernel was running on the GPU over the last sample period (0-1).", base)
        mutil = g("llamatelemetry_gpu_memory_utilization_ratio", "Fraction of time GPU memory was being read or written (0-1).", base)
        used = g("llamatelemetry_gpu_memory_used_bytes", "GPU memory in use, in bytes.", base)
        free = g("llamatelemetry_gpu_memory_free_bytes", "GPU memory free, in bytes.", base)
        total = g("llamatelemetry_gpu_memory_total_bytes", "Total GPU memory, in bytes.", base)
        temp = g("llamatelemetry_gpu_temperature_celsius", "GPU core temperature in degrees Celsius.", base)
        power = g("llamatelemetry_gpu_power_watts", "GPU power draw in watts.", base)
        plimit = g("llamatelemetry_gpu_power_limit_watts", "Enforced GPU power limit in watts.", base)
        energy = CounterMetricFamily("llamatelemetry_gpu_energy_joules", "Energy consumed by the GPU since the driver was loaded, in joules.", labels=base)
        sm = g("llamatelemetry_gpu_sm_clock_hertz", "Current SM clock in hertz.", base)
        mclk = g("llamatelemetry_gpu_memory_clock_hertz", "Current memory clock in hertz.", base)
        fan = g("llamatelemetry_gpu_fan_speed_ratio", "Fan speed as a fraction of its maximum (0-1).", base)
        throttle = g("llamatelemetry_gpu_throttle_reason", "1 when this clock-event (throttle) reason is active, else 0.", base + ["reason"])
        ecc = CounterMetricFamily("llamatelemetry_gpu_ecc_errors", "Volatile ECC memory errors since the driver was loaded.", labels=base + ["type"])
        pcie = g("llamatelemetry_gpu_pcie_throughput_bytes_per_second", "PCIe throughput in bytes per second (opt-in: --gpu-pcie).", base + ["direction"])
        proc_mem = g("llamatelemetry_gpu_process_memory_used_bytes", "GPU memory used by one process, in bytes.", base + ["pid", "process"])
        target_mem = g("llamatelemetry_gpu_target_memory_used_bytes", "GPU memory used by the local process serving a llama-server target, in bytes.", base + ["target"])
        target_energy = CounterMetricFamily(
            "llamatelemetry_target_energy_joules",
            "Energy of the GPUs a local llama-server target runs on, attributed to it (all of a GPU it has alone; "
            "shared by SM utilisation with other targets on the same GPU), in joules since the exporter started.",
            labels=["target"])
        model_mem = g("llamatelemetry_gpu_model_memory_used_bytes", "GPU memory used by the process of one model of a local llama-server router target, in bytes.", base + ["target", "model"])
        model_energy = CounterMetricFamily(
            "llamatelemetry_model_energy_joules",
            "Energy of the GPUs a router model's process runs on, attributed to it as to a target (shared by SM "
            "utilisation with other processes of targets and models on the same GPU), in joules since the exporter started.",
            labels=["target", "model"])

        # /proc/net/tcp{,6} is read once per target and scrape, not once per target and GPU: on a busy host
        # (many connections, TIME_WAIT included) each read is a noticeable part of the GPU collection.
        self._listening = {t.name: procnet.listening_inodes(t.port or 0, t.local_addresses) for t in self.targets}
        # A router's children listen on loopback (the router renders --host 127.0.0.1 for them).
        self._model_listening = {key: procnet.listening_inodes(port, ("127.0.0.1", "::1")) for key, port in self._model_ports.items()}
        for index in range(n.nvmlDeviceGetCount()):
            h = n.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(n.nvmlDeviceGetUUID(h))
            lv = [str(index), uuid]
            info.add_metric(lv + [_text(self._safe(n.nvmlDeviceGetName, h) or ""), self._static["driver_version"], self._static["cuda_version"]], 1)
            rates = self._safe(n.nvmlDeviceGetUtilizationRates, h)
            if rates is not None:
                util.add_metric(lv, rates.gpu / 100.0)
                mutil.add_metric(lv, rates.memory / 100.0)
            mem = self._safe(n.nvmlDeviceGetMemoryInfo, h)
            if mem is not None:
                used.add_metric(lv, float(mem.used))
                free.add_metric(lv, float(mem.free))
                total.add_metric(lv, float(mem.total))
            energy_mj = self._safe(n.nvmlDeviceGetTotalEnergyConsumption, h)
            for fam, value, scale in (
                (temp, self._safe(n.nvmlDeviceGetTemperature, h, n.NVML_TEMPERATURE_GPU), 1.0),
                (power, self._safe(n.nvmlDeviceGetPowerUsage, h), 1e-3),  # mW -> W
                (plimit, self._safe(n.nvmlDeviceGetEnforcedPowerLimit, h), 1e-3),
                (energy, energy_mj, 1e-3),  # mJ -> J
                (sm, self._safe(n.nvmlDeviceGetClockInfo, h, n.NVML_CLOCK_SM), 1e6),  # MHz -> Hz
                (mclk, self._safe(n.nvmlDeviceGetClockInfo, h, n.NVML_CLOCK_MEM), 1e6),
                (fan, self._safe(n.nvmlDeviceGetFanSpeed, h), 1e-2),  # percent -> ratio
            ):
                if value is not None:
                    fam.add_metric(lv, float(value) * scale)
            reasons = self._clock_event_reasons(h)
            if reasons is not None:
                for bit, reason in THROTTLE_REASONS.items():
                    throttle.add_metric(lv + [reason], 1.0 if reasons & bit else 0.0)
            for kind, err_type in (("corrected", n.NVML_MEMORY_ERROR_TYPE_CORRECTED), ("uncorrected", n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED)):
                count = self._safe(n.nvmlDeviceGetTotalEccErrors, h, err_type, n.NVML_VOLATILE_ECC)
                if count is not None:
                    ecc.add_metric(lv + [kind], float(count))
            if self.pcie:
                for direction, counter in (("tx", n.NVML_PCIE_UTIL_TX_BYTES), ("rx", n.NVML_PCIE_UTIL_RX_BYTES)):
                    kbps = self._safe(n.nvmlDeviceGetPcieThroughput, h, counter)
                    if kbps is not None:
                        pcie.add_metric(lv + [direction], float(kbps) * 1024.0)  # NVML reports KB/s
            on_gpu = self._collect_processes(h, lv, proc_mem, target_mem, model_mem)
            if energy_mj is not None:
                self.energy.add_reading(uuid, float(energy_mj), self._sm_weights(h, uuid, on_gpu))
        for key, joules in sorted(self.energy.totals.items()):
            if _MODEL_SEP in key:  # a router model's share (see _collect_processes)
                model_energy.add_metric(key.split(_MODEL_SEP, 1), joules)
            else:
                target_energy.add_metric([key], joules)

        families: list[Metric] = [info, util, mutil, used, free, total, temp, power, plimit, energy, sm, mclk, fan, throttle, ecc, target_energy]
        if self.pcie:
            families.append(pcie)
        if self.processes:
            families.append(proc_mem)
        families.append(target_mem)
        if self._model_ports or model_energy.samples:
            families += [model_mem, model_energy]
        return families

    def _clock_event_reasons(self, h: Any) -> int | None:
        # The function was renamed in newer NVML; older bindings only have the "Throttle" name.
        fn = getattr(self.nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(self.nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None)
        return None if fn is None else self._safe(fn, h)

    def _sm_weights(self, h: Any, uuid: str, on_gpu: dict[str, int]) -> dict[str, float]:
        """Each target on this GPU and its process's SM utilisation since the previous reading.

        Only asked when several targets share the GPU (one target gets all of it anyway). NVML
        answers with samples newer than the timestamp given; none (an error) means no process
        ran kernels, and the energy is then shared equally.
        """
        if len(on_gpu) < 2:
            return {t: 1.0 for t in on_gpu}
        sm_by_pid: dict[int, float] = {}
        try:
            samples = self.nvml.nvmlDeviceGetProcessUtilization(h, self._util_seen.get(uuid, 0))
        except self.nvml.NVMLError:
            samples = []
        for sample in samples:
            sm_by_pid[sample.pid] = sm_by_pid.get(sample.pid, 0.0) + float(sample.smUtil)
            self._util_seen[uuid] = max(self._util_seen.get(uuid, 0), int(sample.timeStamp))
        return {t: sm_by_pid.get(pid, 0.0) for t, pid in on_gpu.items()}

    def _collect_processes(self, h: Any, lv: list[str], proc_mem: GaugeMetricFamily, target_mem: GaugeMetricFamily,
                           model_mem: GaugeMetricFamily | None = None) -> dict[str, int]:
        """Per-process, per-target and per-model memory series; returns the targets (and router models,
        keyed ``target<sep>model``) running on this GPU and their PIDs."""
        if not self.processes and not self.targets:
            return {}
        usage: dict[int, int | None] = {}
        for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            fn = getattr(self.nvml, getter, None)
            procs = self._safe(fn, h) if fn is not None else None
            for p in procs or ():
                mem = getattr(p, "usedGpuMemory", None)
                prev = usage.get(p.pid)
                usage[p.pid] = mem if prev is None else max(prev, mem or 0)
        if self.processes:
            for pid, mem in sorted(usage.items()):
                if mem is not None:
                    proc_mem.add_metric(lv + [str(pid), self._name_of(pid)], float(mem))
        on_gpu: dict[str, int] = {}
        for target in self.targets:
            assert target.port is not None
            listener = procnet.find_listener_pid(target.port, usage.keys(), target.local_addresses, inodes=self._listening.get(target.name))
            if listener is None:
                continue
            on_gpu[target.name] = listener
            used = usage.get(listener)
            if used is not None:
                target_mem.add_metric(lv + [target.name], float(used))
        for (target_name, model), port in self._model_ports.items():
            child = procnet.find_listener_pid(port, usage.keys(), inodes=self._model_listening.get((target_name, model)))
            if child is None:
                continue
            on_gpu[target_name + _MODEL_SEP + model] = child
            used = usage.get(child)
            if used is not None and model_mem is not None:
                model_mem.add_metric(lv + [target_name, model], float(used))
        return on_gpu

    def _name_of(self, pid: int) -> str:
        name = self._process_name(pid)
        if name:
            return name
        try:  # a PID from another PID namespace (containers) is not in our /proc; ask NVML
            return _text(self.nvml.nvmlSystemGetProcessName(pid)).rsplit("/", 1)[-1] or "unknown"
        except Exception:  # noqa: BLE001 - a name is nice to have, never worth failing the scrape
            return "unknown"
