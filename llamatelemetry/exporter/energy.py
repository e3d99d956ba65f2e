"""Energy per llama-server target: a GPU's energy counter split among the targets running on it.

Pure bookkeeping, no NVML: the GPU collector feeds it one reading per GPU per scrape.

* Between two readings of a GPU, the energy it used is ``(now - before)`` of NVML's total-energy
  counter (millijoules since the driver loaded, monotonic).
* One target on that GPU gets all of it (idle power and other processes' share included: that
  is what running the model on this GPU costs).
* Several targets share it in proportion to their weights: the SM utilisation of each target's
  process over the interval (``nvmlDeviceGetProcessUtilization``). When no target used the SMs
  (all weights 0, or NVML had no samples), they share it equally.
* No target on the GPU: nobody is charged. A counter that went backwards (driver reloaded) only
  sets a new baseline.

Example::

    >>> ledger = EnergyLedger()
    >>> ledger.add_reading("GPU-0", 1_000_000, {"a": 3.0, "b": 1.0})   # first reading: baseline
    >>> ledger.add_reading("GPU-0", 1_004_000, {"a": 3.0, "b": 1.0})   # 4 J used since
    >>> ledger.totals
    {'a': 3.0, 'b': 1.0}
"""

from __future__ import annotations

from typing import Mapping

__all__ = ["EnergyLedger", "split_energy"]


def split_energy(joules: float, weights: Mapping[str, float]) -> dict[str, float]:
    """Split ``joules`` among the targets in ``weights``, proportionally (equally when all are 0).

    >>> split_energy(10.0, {"a": 1.0})
    {'a': 10.0}
    >>> split_energy(10.0, {"a": 30.0, "b": 10.0})
    {'a': 7.5, 'b': 2.5}
    >>> split_energy(10.0, {"a": 0.0, "b": 0.0})
    {'a': 5.0, 'b': 5.0}
    """
    if not weights:
        return {}
    clean = {t: max(float(w), 0.0) for t, w in weights.items()}
    total = sum(clean.values())
    if total <= 0.0:
        return {t: joules / len(clean) for t in clean}
    return {t: joules * w / total for t, w in clean.items()}


class EnergyLedger:
    """Running joule totals per target, from successive per-GPU energy readings.

    ``totals`` only grows (a counter); a target appears with 0 at the first reading of a GPU
    it runs on, so its series exists before it used any energy.
    """

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self._last_mj: dict[str, float] = {}

    def add_reading(self, gpu: str, energy_mj: float, weights: Mapping[str, float]) -> None:
        """Record GPU ``gpu``'s energy counter (mJ) now; ``weights`` are the targets on it and their SM use."""
        for target in weights:
            self.totals.setdefault(target, 0.0)
        before = self._last_mj.get(gpu)
        self._last_mj[gpu] = energy_mj
        if before is None or energy_mj < before:
            return
        for target, joules in split_energy((energy_mj - before) / 1000.0, weights).items():
            self.totals[target] += joules
