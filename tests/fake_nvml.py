"""A fake ``pynvml`` module for tests on machines without an NVIDIA GPU (test code only: the
package never fakes a GPU; tests inject this at the ``nvml=`` boundary of the exporter).

It implements the subset of the ``nvidia-ml-py`` API the GPU collector calls, with the same
function names, constants and (when ``nvidia-ml-py`` is installed) the *real* exception
classes (``pynvml.NVMLError_NotSupported`` ...), so the collector's error handling is the one
that runs against real NVML.

Default setup (``FakeNVML()``): two GPUs, index 0 a fully featured "NVIDIA Fake A100" and
index 1 a "NVIDIA Fake T4" without fan, ECC or energy support (those calls raise
NotSupported, so their series must be omitted).

Examples::

    from fake_nvml import FakeNVML, FakeProcess        # tests/ is on sys.path under pytest
    nvml = FakeNVML()
    nvml.gpus[0].processes.append(FakeProcess(pid=server.pid, used_bytes=3 << 30, sm_util=75))
    nvml.fail_next(2)                 # the next 2 device calls raise NVMLError_Unknown
    nvml.init_error = nvml.NVML_ERROR_DRIVER_NOT_LOADED   # nvmlInit() fails ("no driver")
    nvml.gpus[0].energy_mj += 5_000   # the GPU used 5 J since the previous reading
    ExporterApp(config, nvml=nvml)    # an in-process exporter reading these GPUs
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

try:  # the real exception classes, so `except pynvml.NVMLError_NotSupported` behaves the same
    import pynvml as _pynvml

    NVMLError: type[Exception] = _pynvml.NVMLError
except ImportError:  # pragma: no cover - nvidia-ml-py is part of the exporter extra

    class NVMLError(Exception):  # type: ignore[no-redef]
        """Stand-in for ``pynvml.NVMLError`` when nvidia-ml-py is not installed."""

        def __init__(self, value: int) -> None:
            super().__init__(f"NVML error {value}")
            self.value = value

    _pynvml = None

__all__ = ["FakeNVML", "FakeGPU", "FakeProcess", "default_gpus"]


@dataclass
class FakeProcess:
    """A process using a fake GPU; ``used_bytes=None`` mimics NVML's "not available"."""

    pid: int
    used_bytes: int | None
    name: str | None = None  # returned by nvmlSystemGetProcessName when /proc does not know the pid
    sm_util: int = 0  # percent, the smUtil of each nvmlDeviceGetProcessUtilization sample


@dataclass
class FakeGPU:
    """The state of one fake GPU, in NVML's own units (MiB-free bytes, mW, mJ, MHz, percent, KB/s)."""

    name: str = "NVIDIA Fake A100"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    memory_total: int = 80 * 1024**3
    memory_used: int = 10 * 1024**3
    util_gpu: int = 37
    util_memory: int = 12
    temperature: int = 54
    power_mw: int = 123_456
    power_limit_mw: int = 300_000
    energy_mj: int = 9_876_543
    sm_clock_mhz: int = 1410
    mem_clock_mhz: int = 1215
    fan_percent: int = 40
    clock_event_reasons: int = 0x1 | 0x4  # GPU idle + SW power cap
    ecc_corrected: int = 3
    ecc_uncorrected: int = 0
    pcie_tx_kbps: int = 2048
    pcie_rx_kbps: int = 1024
    processes: list[FakeProcess] = field(default_factory=list)
    #: NVML function names (e.g. "nvmlDeviceGetFanSpeed") that raise NVMLError_NotSupported on this GPU.
    unsupported: set[str] = field(default_factory=set)


def default_gpus() -> list[FakeGPU]:
    """The default two-GPU machine: a full-featured GPU 0 and a GPU 1 lacking fan, ECC and energy."""
    return [
        FakeGPU(),
        FakeGPU(
            name="NVIDIA Fake T4",
            uuid="GPU-11111111-1111-1111-1111-111111111111",
            memory_total=16 * 1024**3,
            memory_used=512 * 1024**2,
            util_gpu=0,
            util_memory=0,
            temperature=33,
            power_mw=27_000,
            power_limit_mw=70_000,
            sm_clock_mhz=300,
            mem_clock_mhz=405,
            clock_event_reasons=0x1,
            unsupported={"nvmlDeviceGetFanSpeed", "nvmlDeviceGetTotalEccErrors", "nvmlDeviceGetTotalEnergyConsumption"},
        ),
    ]


@dataclass
class _Utilization:
    gpu: int
    memory: int


@dataclass
class _Memory:
    total: int
    free: int
    used: int


@dataclass
class _UtilizationSample:
    pid: int
    timeStamp: int
    smUtil: int
    memUtil: int = 0
    encUtil: int = 0
    decUtil: int = 0


@dataclass
class _ProcessInfo:
    pid: int
    usedGpuMemory: int | None


class FakeNVML:
    """A module-like stand-in for ``pynvml``: pass it wherever the exporter takes ``nvml=``.

    Attributes to steer a test: ``gpus`` (mutable list of :class:`FakeGPU`), ``init_error``
    (an NVML error code that ``nvmlInit`` raises), :meth:`fail_next`; counters ``init_calls``
    and ``shutdown_calls`` show re-initialisation.
    """

    NVMLError = NVMLError
    NVML_ERROR_UNINITIALIZED = 1
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_ERROR_NO_PERMISSION = 4
    NVML_ERROR_NOT_FOUND = 6
    NVML_ERROR_DRIVER_NOT_LOADED = 9
    NVML_ERROR_LIBRARY_NOT_FOUND = 12
    NVML_ERROR_GPU_IS_LOST = 15
    NVML_ERROR_UNKNOWN = 999
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0
    NVML_AGGREGATE_ECC = 1
    NVML_PCIE_UTIL_TX_BYTES = 0
    NVML_PCIE_UTIL_RX_BYTES = 1

    def __init__(self, gpus: list[FakeGPU] | None = None, *, driver_version: str = "550.54.15", cuda_version: int = 12040) -> None:
        self.gpus = gpus if gpus is not None else default_gpus()
        self.driver_version = driver_version
        self.cuda_version = cuda_version
        self.init_error: int | None = None
        self.initialized = False
        self.init_calls = 0
        self.shutdown_calls = 0
        self._fail_remaining = 0
        self._fail_code = self.NVML_ERROR_UNKNOWN
        self.util_clock = 0  # NVML's sample timestamps (µs); grows with every utilisation query

    # -- steering ---------------------------------------------------------------------------
    def fail_next(self, calls: int = 1, code: int | None = None) -> None:
        """Make the next ``calls`` device/system calls raise ``NVMLError(code)`` (default: Unknown)."""
        self._fail_remaining = calls
        self._fail_code = code if code is not None else self.NVML_ERROR_UNKNOWN

    def error(self, code: int) -> Exception:
        """An exception instance like real pynvml raises for ``code`` (the matching subclass)."""
        return NVMLError(code)

    def _call(self, fn: str, handle: Any = None) -> FakeGPU | None:
        if not self.initialized:
            raise NVMLError(self.NVML_ERROR_UNINITIALIZED)
        if self._fail_remaining > 0:
            self._fail_remaining -= 1
            raise NVMLError(self._fail_code)
        gpu = handle if isinstance(handle, FakeGPU) else None
        if gpu is not None and fn in gpu.unsupported:
            raise NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        return gpu

    # -- lifecycle --------------------------------------------------------------------------
    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        self.initialized = True

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1
        self.initialized = False

    # -- system -----------------------------------------------------------------------------
    def nvmlSystemGetDriverVersion(self) -> str:
        self._call("nvmlSystemGetDriverVersion")
        return self.driver_version

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._call("nvmlSystemGetCudaDriverVersion")
        return self.cuda_version

    def nvmlSystemGetProcessName(self, pid: int) -> str:
        self._call("nvmlSystemGetProcessName")
        for gpu in self.gpus:
            for proc in gpu.processes:
                if proc.pid == pid and proc.name:
                    return proc.name
        raise NVMLError(self.NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetCount(self) -> int:
        self._call("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGPU:
        self._call("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise NVMLError(2)  # NVML_ERROR_INVALID_ARGUMENT
        return self.gpus[index]

    # -- device -----------------------------------------------------------------------------
    def nvmlDeviceGetUUID(self, h: FakeGPU) -> str:
        return self._call("nvmlDeviceGetUUID", h).uuid  # type: ignore[union-attr]

    def nvmlDeviceGetName(self, h: FakeGPU) -> str:
        return self._call("nvmlDeviceGetName", h).name  # type: ignore[union-attr]

    def nvmlDeviceGetUtilizationRates(self, h: FakeGPU) -> _Utilization:
        g = self._call("nvmlDeviceGetUtilizationRates", h)
        return _Utilization(g.util_gpu, g.util_memory)  # type: ignore[union-attr]

    def nvmlDeviceGetMemoryInfo(self, h: FakeGPU) -> _Memory:
        g = self._call("nvmlDeviceGetMemoryInfo", h)
        assert g is not None
        return _Memory(g.memory_total, g.memory_total - g.memory_used, g.memory_used)

    def nvmlDeviceGetTemperature(self, h: FakeGPU, sensor: int) -> int:
        return self._call("nvmlDeviceGetTemperature", h).temperature  # type: ignore[union-attr]

    def nvmlDeviceGetPowerUsage(self, h: FakeGPU) -> int:
        return self._call("nvmlDeviceGetPowerUsage", h).power_mw  # type: ignore[union-attr]

    def nvmlDeviceGetEnforcedPowerLimit(self, h: FakeGPU) -> int:
        return self._call("nvmlDeviceGetEnforcedPowerLimit", h).power_limit_mw  # type: ignore[union-attr]

    def nvmlDeviceGetTotalEnergyConsumption(self, h: FakeGPU) -> int:
        return self._call("nvmlDeviceGetTotalEnergyConsumption", h).energy_mj  # type: ignore[union-attr]

    def nvmlDeviceGetClockInfo(self, h: FakeGPU, clock: int) -> int:
        g = self._call("nvmlDeviceGetClockInfo", h)
        assert g is not None
        return g.sm_clock_mhz if clock == self.NVML_CLOCK_SM else g.mem_clock_mhz

    def nvmlDeviceGetFanSpeed(self, h: FakeGPU) -> int:
        return self._call("nvmlDeviceGetFanSpeed", h).fan_percent  # type: ignore[union-attr]

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: FakeGPU) -> int:
        return self._call("nvmlDeviceGetCurrentClocksEventReasons", h).clock_event_reasons  # type: ignore[union-attr]

    def nvmlDeviceGetTotalEccErrors(self, h: FakeGPU, error_type: int, counter_type: int) -> int:
        g = self._call("nvmlDeviceGetTotalEccErrors", h)
        assert g is not None
        return g.ecc_corrected if error_type == self.NVML_MEMORY_ERROR_TYPE_CORRECTED else g.ecc_uncorrected

    def nvmlDeviceGetPcieThroughput(self, h: FakeGPU, counter: int) -> int:
        g = self._call("nvmlDeviceGetPcieThroughput", h)
        assert g is not None
        return g.pcie_tx_kbps if counter == self.NVML_PCIE_UTIL_TX_BYTES else g.pcie_rx_kbps

    def nvmlDeviceGetComputeRunningProcesses(self, h: FakeGPU) -> list[_ProcessInfo]:
        g = self._call("nvmlDeviceGetComputeRunningProcesses", h)
        assert g is not None
        return [_ProcessInfo(p.pid, p.used_bytes) for p in g.processes]

    def nvmlDeviceGetProcessUtilization(self, h: FakeGPU, last_seen: int) -> list[_UtilizationSample]:
        """One sample per process per call, stamped after ``last_seen``; NotFound without processes (as real NVML)."""
        g = self._call("nvmlDeviceGetProcessUtilization", h)
        assert g is not None
        if not g.processes:
            raise NVMLError(self.NVML_ERROR_NOT_FOUND)
        self.util_clock = max(self.util_clock, last_seen) + 1
        return [_UtilizationSample(p.pid, self.util_clock, p.sm_util) for p in g.processes]

    def nvmlDeviceGetGraphicsRunningProcesses(self, h: FakeGPU) -> list[_ProcessInfo]:
        self._call("nvmlDeviceGetGraphicsRunningProcesses", h)
        return []
