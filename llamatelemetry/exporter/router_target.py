"""A router-mode llama-server target: scraped as a set of models, never loading or waking one.

A target whose ``GET /props`` says ``"role": "router"`` (see :mod:`llamatelemetry.router`) is read as:

* ``GET /props`` and ``GET /models`` of the router itself (answered by the router: no model is
  touched) → ``llamatelemetry_router_info`` and one ``llamatelemetry_model_state`` series per model
  and state, for every model the router knows;
* for each *running* model, its ``/metrics`` and ``/props`` (and ``/slots``, see below) through the
  router with ``?model=<id>&autoload=false`` → the usual ``llamacpp_*`` / ``llamatelemetry_*``
  series, each labelled with ``model``. ``autoload=false`` makes the router answer 400 instead of
  loading a model that went away between the list and the read; ``loading`` models are skipped.
  ``/metrics`` and ``/props`` of a child neither wake it nor reset its idle timer (the metrics
  task is the one task that does not, ``server-queue.cpp``), but ``/slots`` is an ordinary task
  that does both, so ``/slots`` is read only for models whose child was started without
  ``--sleep-idle-seconds`` (read from the router's ``status.args``);
* counters and the load-duration histogram come from a :class:`~llamatelemetry.router.ModelWatcher`
  that follows ``/models/sse``, so a swap between two scrapes is still counted.

Example::

    view = RouterView(parse_target("http://127.0.0.1:8080"))
    listing = await view.list_models(fetcher)           # /props + /models
    scrape = await view.scrape_models(fetcher, listing)  # each running model
    families, ok = view.families(scrape)
    view.close()
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlencode

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample as PromSample

from ..router import STATES, ModelInfo, ModelWatcher, is_router, parse_models
from .fetch import Fetched, Fetcher, TargetSnapshot
from .llama import TargetView
from .targets import Target

log = logging.getLogger("llamatelemetry.exporter.router")

#: Buckets of ``llamatelemetry_model_load_duration_seconds``: a small model on a fast disk loads in
#: well under a second, a 70B one from a network disk in minutes.
LOAD_BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

#: Families of a model's own scrape that make no sense per model (the router target has them).
_PER_TARGET_ONLY = {"llamatelemetry_server_state"}


def router_answer(props: Fetched) -> bool:
    """Whether a ``/props`` answer comes from a router."""
    if props.status != 200:
        return False
    try:
        body = json.loads(props.body)
    except ValueError:
        return False
    return isinstance(body, dict) and is_router(body)


@dataclass
class RouterListing:
    """The router's own answers in one scrape: ``/props`` and ``/models``."""

    props: Fetched
    models: Fetched
    parsed: list[ModelInfo] | None = None
    problem: str | None = None
    started: float = field(default_factory=time.perf_counter)


@dataclass
class RouterScrape:
    """One scrape of a router target: its listing and each running model's raw answers."""

    target: Target
    listing: RouterListing
    models: dict[str, TargetSnapshot] = field(default_factory=dict)
    duration: float = 0.0
    still_router: bool = True


def _error_message(got: Fetched) -> str:
    """The ``error.message`` of a llama-server error body, else a short description."""
    if got.status is None:
        return got.error or "no answer"
    try:
        body = json.loads(got.body)
        message = body["error"]["message"] if isinstance(body, dict) else None
    except (ValueError, KeyError, TypeError):
        message = None
    return f"HTTP {got.status}: {message or got.body[:120].decode(errors='replace')}"


def _child_port(info: ModelInfo) -> int | None:
    """The loopback port of a running model's child (``--port`` in the router's rendered args)."""
    for i, arg in enumerate(info.args[:-1]):
        if arg == "--port" and info.args[i + 1].isdigit():
            return int(info.args[i + 1])
    return None


class RouterView:
    """Memory of one router target across scrapes: its watcher, per-model views, the load histogram.

    ``watcher_factory`` builds the :class:`ModelWatcher` (tests may pass one with a short backoff).
    """

    def __init__(self, target: Target, *, api_key: str | None = None,
                 watcher_factory: Callable[[str], ModelWatcher] | None = None) -> None:
        self.target = target
        factory = watcher_factory or (lambda url: ModelWatcher(url, api_key=api_key))
        self.watcher = factory(target.base_url)
        self._model_views: dict[str, TargetView] = {}
        self._hist_lock = threading.Lock()
        self._hist: dict[str, list[float]] = {}  # model -> [count per bucket..., +Inf count, sum]
        self.errors_total = 0
        self._last_problem: str | None = None
        self._model_problems: dict[str, str | None] = {}
        self.child_ports: dict[str, int] = {}
        self.watcher.add_listener(self._on_transition)
        self.watcher.start()

    def close(self) -> None:
        """Stop following the router's event stream."""
        self.watcher.stop()

    # -- the load-duration histogram, fed by the watcher's thread ---------------------------------
    def _on_transition(self, model: str, old: str | None, new: str, at: float, exit_code: int | None) -> None:
        if old != "loading" or new not in ("loaded", "sleeping"):
            return
        state = self.watcher.snapshot().get(model)
        if state is None or state.last_load_seconds is None:
            return
        self.observe_load(model, state.last_load_seconds)

    def observe_load(self, model: str, seconds: float) -> None:
        """Record one load (``loading`` → ``loaded``) of ``model`` that took ``seconds``."""
        with self._hist_lock:
            counts = self._hist.setdefault(model, [0.0] * (len(LOAD_BUCKETS) + 2))
            for i, bound in enumerate(LOAD_BUCKETS):
                if seconds <= bound:
                    counts[i] += 1
            counts[len(LOAD_BUCKETS)] += 1
            counts[-1] += seconds

    # -- fetching ---------------------------------------------------------------------------------
    async def list_models(self, fetcher: Fetcher) -> RouterListing:
        """``GET /props`` and ``GET /models`` of the router, concurrently (no model is touched)."""
        props, models = await asyncio.gather(fetcher.get(self.target.base_url + "/props"),
                                             fetcher.get(self.target.base_url + "/models"))
        listing = RouterListing(props, models)
        if models.status == 200:
            try:
                listing.parsed = parse_models(models.body)
            except ValueError as exc:
                listing.problem = f"{exc}; per-model series are skipped this scrape"
        elif models.status is None:
            listing.problem = f"router unreachable: {models.error}"
        else:
            listing.problem = f"GET /models {_error_message(models)}"
        if listing.parsed is not None:
            self.child_ports = {m.id: p for m in listing.parsed if m.running and (p := _child_port(m)) is not None}
        else:
            self.child_ports = {}
        return listing

    def _model_view(self, model: str) -> TargetView:
        view = self._model_views.get(model)
        if view is None:
            query = urlencode({"model": model, "autoload": "false"})  # never loads or wakes it
            view = TargetView(Target(name=self.target.name, base_url=self.target.base_url, query=query,
                                     port=self.target.port, local_addresses=self.target.local_addresses))
            self._model_views[model] = view
        return view

    async def _scrape_model(self, fetcher: Fetcher, info: ModelInfo) -> TargetSnapshot:
        view = self._model_view(info.id)
        endpoints = ["metrics"]
        if view.props_due():
            endpoints.append("props")
        # /slots resets the child's idle timer and wakes it (see the module docstring): only where sleep is off.
        if info.status == "loaded" and info.sleep_idle_seconds is None:
            endpoints.append("slots")
        start = time.perf_counter()
        answers = await asyncio.gather(*(fetcher.get(view.target.url("/" + ep)) for ep in endpoints))
        return TargetSnapshot(view.target, dict(zip(endpoints, answers)), time.perf_counter() - start)

    async def scrape_models(self, fetcher: Fetcher, listing: RouterListing) -> RouterScrape:
        """Read each loaded or sleeping model (``autoload=false``); returns the whole router scrape."""
        scrape = RouterScrape(self.target, listing, still_router=router_answer(listing.props) or listing.props.status is None)
        if listing.parsed is not None:
            running = [m for m in listing.parsed if m.status in ("loaded", "sleeping")]
            snaps = await asyncio.gather(*(self._scrape_model(fetcher, m) for m in running))
            scrape.models = {m.id: s for m, s in zip(running, snaps)}
        scrape.duration = time.perf_counter() - listing.started
        return scrape

    # -- interpretation ---------------------------------------------------------------------------
    def _note(self, key: str | None, problem: str | None, level: int = logging.WARNING) -> None:
        previous = self._last_problem if key is None else self._model_problems.get(key)
        if problem != previous:
            where = f"target {self.target.name}" + (f" model {key}" if key else "")
            if problem is not None:
                log.log(level, "%s: %s", where, problem)
            elif previous is not None:
                log.info("%s: fine again", where)
        if key is None:
            self._last_problem = problem
        else:
            self._model_problems[key] = problem

    def families(self, scrape: RouterScrape) -> tuple[list[Metric], bool]:
        """Metric families of one router scrape and whether the router counts as up."""
        name = self.target.name
        listing = scrape.listing
        errors: list[str] = []
        out: list[Metric] = []
        if listing.models.status is None:
            server_state = "unreachable"
        elif listing.models.status == 200 and listing.parsed is not None:
            server_state = "ok"
        else:
            server_state = "error"
        state_fam = GaugeMetricFamily("llamatelemetry_server_state", "1 for the current state of the llama-server (from /health): ok, loading, unreachable or error.", labels=["target", "state"])
        for s in ("ok", "loading", "unreachable", "error"):
            state_fam.add_metric([name, s], 1.0 if s == server_state else 0.0)
        out.append(state_fam)
        self._note(None, listing.problem)
        if listing.problem:
            errors.append(listing.problem)

        if listing.props.status == 200:
            try:
                props = json.loads(listing.props.body)
            except ValueError:
                props = {}
            if isinstance(props, dict):
                router_info = GaugeMetricFamily("llamatelemetry_router_info", "A llama-server in router mode (many models behind one port); value is always 1.",
                                         labels=["target", "max_instances", "models_autoload", "build"])
                router_info.add_metric([name, str(props.get("max_instances", "")), str(props.get("models_autoload", "")).lower(),
                                        str(props.get("build_info") or "")], 1.0)
                out.append(router_info)

        watch_up = GaugeMetricFamily("llamatelemetry_router_events_up", "1 while the exporter follows the router's /models/sse event stream (loads/unloads between scrapes are counted only then, or inferred at reconnect).", labels=["target"])
        watch_up.add_metric([name], 1.0 if self.watcher.connected else 0.0)
        out.append(watch_up)

        known = self.watcher.snapshot()
        listed = {m.id: m for m in listing.parsed} if listing.parsed is not None else {}
        states = GaugeMetricFamily("llamatelemetry_model_state", "1 for the model's current state on the router (from GET /models): loaded, loading, unloaded, sleeping, failed, downloading, downloaded, ...; 0 for the others.", labels=["target", "model", "state"])
        since = GaugeMetricFamily("llamatelemetry_model_state_since_timestamp_seconds", "Unix time the model entered its current state (as seen by the exporter's event stream; the exporter's start for a state older than that).", labels=["target", "model"])
        for model_id, info in sorted(listed.items()):
            current = info.state
            for s in STATES + ((current,) if current not in STATES else ()):
                states.add_metric([name, model_id, s], 1.0 if s == current else 0.0)
            watched = known.get(model_id)
            if watched is not None and watched.status == current:
                since.add_metric([name, model_id], watched.since)
        out += [states, since]

        loads = CounterMetricFamily("llamatelemetry_model_loads", "Loads of the model started by the router (from its /models/sse events), since the exporter started.", labels=["target", "model"])
        failures = CounterMetricFamily("llamatelemetry_model_load_failures", "Loads that ended with the model's process exiting (exit_code: the last one seen).", labels=["target", "model", "exit_code"])
        unloads = CounterMetricFamily("llamatelemetry_model_unloads", "Times a running model's process stopped: unload request, LRU eviction (--models-max), or a crash (then last_exit_code is not 0).", labels=["target", "model"])
        exit_code = GaugeMetricFamily("llamatelemetry_model_last_exit_code", "Exit code of the model's process the last time it stopped (0: a clean unload or eviction).", labels=["target", "model"])
        for model_id in sorted(set(listed) | set(known)):
            st = known.get(model_id)
            loads.add_metric([name, model_id], float(st.loads if st else 0))
            unloads.add_metric([name, model_id], float(st.unloads if st else 0))
            if st is not None and st.load_failures:
                failures.add_metric([name, model_id, str(st.last_exit_code)], float(st.load_failures))
            if st is not None and st.last_exit_code is not None:
                exit_code.add_metric([name, model_id], float(st.last_exit_code))
        out += [loads, failures, unloads, exit_code]
        out.append(self._histogram(sorted(set(listed) | set(known))))

        model_up = GaugeMetricFamily("llamatelemetry_model_up", "1 when a loaded or sleeping model's endpoints answered well-formed data through the router (autoload=false), else 0.", labels=["target", "model"])
        for model_id, snap in sorted(scrape.models.items()):
            fams, ok = self._model_families(model_id, snap, errors)
            if ok is None:
                continue
            model_up.add_metric([name, model_id], 1.0 if ok else 0.0)
            out += fams
        out.append(model_up)
        if errors:
            self.errors_total += 1
        return out, server_state == "ok" and not errors

    def _model_families(self, model_id: str, snap: TargetSnapshot, errors: list[str]) -> tuple[list[Metric], bool | None]:
        """One model's re-exported families, labelled ``model``; ``None`` for a model that just went away."""
        metrics = snap.results.get("metrics", Fetched(error="not fetched"))
        if metrics.status == 400:
            # Unloaded or removed between the list and the read: the next scrape shows its new state.
            self._note(model_id, None)
            log.debug("target %s model %s: %s (state changed during the scrape)", self.target.name, model_id, _error_message(metrics))
            return [], None
        if metrics.status is None:
            problem = f"/metrics?model={model_id} failed: {metrics.error}"
            self._note(model_id, problem)
            errors.append(problem)
            return [], False
        view = self._model_view(model_id)
        families, ok = view.families(snap)
        out: list[Metric] = []
        for fam in families:
            if fam.name in _PER_TARGET_ONLY:
                continue
            relabelled = []
            for s in fam.samples:
                labels = dict(s.labels)
                if "model" in labels and fam.name != "llamatelemetry_server_info":
                    labels["exported_model"] = labels["model"]
                labels["model"] = model_id
                relabelled.append(PromSample(s.name, labels, s.value, s.timestamp, s.exemplar))
            fam.samples = relabelled
            out.append(fam)
        if not ok:
            problem = f"model {model_id}: an endpoint answered badly (see the log lines above)"
            errors.append(problem)
        self._note(model_id, None if ok else "endpoints answered badly")
        return out, ok

    def _histogram(self, models: list[str]) -> HistogramMetricFamily:
        hist = HistogramMetricFamily("llamatelemetry_model_load_duration_seconds", "Time from the router reporting the model loading to loaded (from its /models/sse events).", labels=["target", "model"])
        with self._hist_lock:
            for model in models:
                counts = self._hist.get(model, [0.0] * (len(LOAD_BUCKETS) + 2))
                buckets = [(f"{b:g}", counts[i]) for i, b in enumerate(LOAD_BUCKETS)] + [("+Inf", counts[len(LOAD_BUCKETS)])]
                hist.add_metric([self.target.name, model], buckets, counts[-1])
        return hist
