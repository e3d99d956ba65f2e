"""The exporter's ``prometheus_client`` collector: everything is collected at scrape time.

One scrape = all targets fetched concurrently on the fetch loop while NVML is read in a
worker thread; then the self-metrics. A target that is slow, down or broken costs at most its
own timeout and never removes the other targets' series.

:meth:`collect` is the standard ``Collector`` API, called by ``generate_latest`` in an HTTP
request thread: it hands the scrape (:meth:`collect_async`) to the fetch loop and waits.

Example::

    from prometheus_client import CollectorRegistry, generate_latest
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ExporterCollector(targets, Fetcher(), runner.start(), gpu=None))
    print(generate_latest(registry).decode())
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .fetch import AsyncRunner, Fetched, Fetcher, TargetSnapshot
from .gpu import GpuCollector, GpuResult
from .llama import TargetView
from .router_target import RouterScrape, RouterView, router_answer
from .targets import Target

log = logging.getLogger("llamatelemetry.exporter")

#: Value of the ``collector`` label for the llama-server collection and the GPU collection.
LLAMA_COLLECTOR = "llama_server"
GPU_COLLECTOR = "gpu"


class ExporterCollector(Collector):
    """Collects every target and (optionally) the GPUs on each call of :meth:`collect`."""

    def __init__(self, targets: list[Target], fetcher: Fetcher, runner: AsyncRunner, gpu: GpuCollector | None = None,
                 views: dict[str, TargetView] | None = None, model_ports: GpuCollector | None = None) -> None:
        self.targets = targets
        # Where router targets' child-process ports go (for per-model GPU attribution): the GPU
        # collector, also for /probe collectors that do not collect GPUs themselves.
        self.model_ports = model_ports or gpu
        self.fetcher = fetcher
        self.runner = runner
        self.gpu = gpu
        # ``views`` lets /probe keep a target's memory (cached /props, logged problems) across scrapes.
        self.views = {t.name: (views or {}).get(t.name) or TargetView(t) for t in targets}
        self._gpu_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llamatelemetry-nvml") if gpu else None
        self._gpu_errors = 0
        self._lock = threading.Lock()  # TargetView state is updated by one scrape at a time

    def close_views(self) -> None:
        """Stop the router event-stream watchers of this collector's targets."""
        for view in self.views.values():
            view.close()

    def close(self) -> None:
        if self._gpu_pool is not None:
            self._gpu_pool.shutdown(wait=True)
        if self.gpu is not None:
            self.gpu.close()

    def collect(self) -> Iterator[Metric]:
        # The fetcher enforces each target's deadline; the margin only guards against a stuck loop.
        yield from self.runner.run(self.collect_async(), timeout=self.fetcher.timeout * 2 + 5)

    async def collect_async(self) -> list[Metric]:
        """One full scrape; runs on the runner's loop."""
        loop = asyncio.get_running_loop()
        fetch_ok = True
        snapshots: list[TargetSnapshot | RouterScrape]
        gpu_task = None
        try:
            routers = [(t, r) for t in self.targets if (r := self.views[t.name].router) is not None]
            plain = [t for t in self.targets if self.views[t.name].router is None]
            # A router's model list first (a few ms): it tells the GPU collection which child
            # process serves which model in this very scrape.
            listings = await asyncio.gather(*(r.list_models(self.fetcher) for _, r in routers))
            if self.model_ports is not None:
                for t, r in routers:
                    self.model_ports.set_model_ports(t.name, r.child_ports)
            gpu_task = loop.run_in_executor(self._gpu_pool, self._timed_gpu) if self._gpu_pool is not None else None
            with_props = {t.name: self.views[t.name].props_due() for t in plain}
            plain_snaps, router_scrapes = await asyncio.gather(
                self.fetcher.fetch_all(plain, with_props),
                asyncio.gather(*(r.scrape_models(self.fetcher, listing) for (_, r), listing in zip(routers, listings))))
            by_name: dict[str, TargetSnapshot | RouterScrape] = {s.target.name: s for s in plain_snaps}
            by_name.update({s.target.name: s for s in router_scrapes})
            for plain_snap in plain_snaps:
                detected = await self._detect_router(plain_snap)
                if detected is not None:
                    by_name[plain_snap.target.name] = detected
            snapshots = [by_name[t.name] for t in self.targets]
        except Exception as exc:  # noqa: BLE001 - one broken scrape must not kill the endpoint
            log.exception("fetching targets failed")
            fetch_ok = False
            snapshots = [TargetSnapshot(t, {"health": Fetched(error=f"internal error: {exc!r}")}) for t in self.targets]
        if gpu_task is None and self._gpu_pool is not None:
            gpu_task = loop.run_in_executor(self._gpu_pool, self._timed_gpu)
        gpu = None
        if gpu_task is not None:
            try:  # NVML calls have no timeout of their own; never let a stuck driver hang the scrape
                gpu = await asyncio.wait_for(asyncio.shield(gpu_task), self.fetcher.timeout)
            except asyncio.TimeoutError:
                log.warning("GPU collection took longer than %gs; GPU series skipped this scrape", self.fetcher.timeout)
                gpu = (GpuResult(up=False, error="timed out"), self.fetcher.timeout)
        built = self._build(snapshots, fetch_ok, gpu)
        for done in snapshots:
            if isinstance(done, RouterScrape) and not done.still_router:
                # restarted as a one-model llama-server: read as a plain target from the next scrape
                log.info("target %s: no longer a llama-server router", done.target.name)
                self.views[done.target.name].close()
        return built

    async def _detect_router(self, snap: TargetSnapshot) -> RouterScrape | None:
        """When ``snap`` shows a router (``/metrics`` 400 and ``/props`` role=router), switch its target
        to router mode and scrape it as one right away, so its first scrape is already complete."""
        target = snap.target
        metrics = snap.results.get("metrics")
        if target.query or metrics is None or metrics.status != 400:
            return None  # a ?model= target is one model of a router: read as a plain target
        props = snap.results.get("props") or await self.fetcher.get(target.base_url + "/props")
        if not router_answer(props):
            return None
        log.info("target %s (%s) is a llama-server router: reading it as a set of models", target.name, target.base_url)
        view = self.views[target.name]
        view.router = RouterView(target, api_key=self.fetcher.api_key)
        listing = await view.router.list_models(self.fetcher)
        return await view.router.scrape_models(self.fetcher, listing)

    # -- turning results into families ------------------------------------------------------------
    def _build(self, snapshots: list[TargetSnapshot | RouterScrape], fetch_ok: bool, gpu: tuple[GpuResult, float] | None) -> list[Metric]:
        up = GaugeMetricFamily("llamatelemetry_target_up", "1 when the llama-server target is ready and all its enabled endpoints answered well-formed data.", labels=["target"])
        duration = GaugeMetricFamily("llamatelemetry_scrape_duration_seconds", "Time spent collecting, per collector and target (target is empty for the GPU collector).", labels=["collector", "target"])
        errors = CounterMetricFamily("llamatelemetry_scrape_errors", "Scrapes in which this collector/target had an error (unreachable, timeout, malformed answer, NVML error).", labels=["collector", "target"])
        collector_up = GaugeMetricFamily("llamatelemetry_collector_up", "1 when the collector worked in this scrape (gpu: NVML initialised and read without errors).", labels=["collector"])

        # Each target yields its own families; merge them by name, since an exposition must have
        # exactly one HELP/TYPE block per metric name.
        merged: dict[str, Metric] = {}
        with self._lock:
            for snap in snapshots:
                view = self.views[snap.target.name]
                if isinstance(snap, RouterScrape) and view.router is not None:
                    families, target_ok = view.router.families(snap)
                    errors_total = view.router.errors_total
                elif isinstance(snap, RouterScrape):
                    families, target_ok, errors_total = [], False, view.errors_total
                else:
                    families, target_ok = view.families(snap)
                    errors_total = view.errors_total
                for fam in families:
                    have = merged.get(fam.name)
                    if have is None:
                        merged[fam.name] = fam
                    elif have.type == fam.type:
                        have.samples.extend(fam.samples)
                    else:
                        log.warning("target %s: metric %s has type %s, another target has %s; its samples are dropped",
                                    snap.target.name, fam.name, fam.type, have.type)
                up.add_metric([snap.target.name], 1.0 if target_ok else 0.0)
                duration.add_metric([LLAMA_COLLECTOR, snap.target.name], snap.duration)
                errors.add_metric([LLAMA_COLLECTOR, snap.target.name], float(errors_total))
            out = [fam for fam in merged.values() if fam.samples]
            collector_up.add_metric([LLAMA_COLLECTOR], 1.0 if fetch_ok else 0.0)
            if gpu is not None:
                result, seconds = gpu
                out.extend(fam for fam in result.families if fam.samples)
                if not result.up and not result.no_gpu:  # a host without a GPU is not an error
                    self._gpu_errors += 1
                collector_up.add_metric([GPU_COLLECTOR], 1.0 if result.up else 0.0)
                duration.add_metric([GPU_COLLECTOR, ""], seconds)
                errors.add_metric([GPU_COLLECTOR, ""], float(self._gpu_errors))
        return out + [up, duration, errors, collector_up]

    def _timed_gpu(self) -> tuple[GpuResult, float]:
        assert self.gpu is not None
        start = time.perf_counter()
        try:
            result = self.gpu.collect()
        except Exception as exc:  # noqa: BLE001 - a bug in GPU code must not take the targets down
            log.exception("GPU collection failed unexpectedly")
            result = GpuResult(up=False, error=repr(exc))
        return result, time.perf_counter() - start
