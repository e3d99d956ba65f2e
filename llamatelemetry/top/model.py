"""The view's numbers, computed from snapshots: rates, windows, sparkline history, percentiles.

Pure: no I/O, no clock. :class:`Model` is fed one :class:`~llamatelemetry.top.sources.Snapshot`
per refresh and returns a :class:`View` — plain dataclasses the terminal UI, ``--once`` and
``--json`` all render. Rates come from counters (the difference between two snapshots over the
time between them, with Prometheus' reset rule: a counter that went down restarted from 0), never
from llama-server's throughput gauges, which reset whenever anyone reads them.

Example::

    model = Model(window_seconds=60)
    view = model.update(snapshot_1)          # first snapshot: states and gauges, no rates yet
    view = model.update(snapshot_2)          # now tokens/s, requests/min, TTFT percentiles ...
    view.servers[0].generated_tokens_per_second
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable

from ..promtext import Sample
from .histogram import histogram_quantile
from .sources import Metrics, Reading, RecentRequest, Snapshot, merge_labels

__all__ = ["ClientRow", "GpuRow", "GpuTargetRow", "Model", "ModelRow", "ServerRow", "SlotRow", "SourceState", "View"]

#: Server states, as the exporter's ``llamatelemetry_server_state{state}`` one-hot gauge spells them.
SERVER_STATES = ("ok", "loading", "unreachable", "error")
#: A router's model states that have a running child (a SERVERS row), as the server state shown for it.
_RUNNING_MODEL_STATES = {"loaded": "ok", "loading": "loading", "sleeping": "sleeping"}


@dataclass(frozen=True)
class SourceState:
    """Whether one source (exporter or gateway) answered the last read, and why not."""

    name: str
    url: str
    up: bool
    error: str | None


@dataclass(frozen=True)
class ServerRow:
    """One llama-server, as the exporter reports it."""

    target: str
    state: str  # ok | loading | unreachable | error | unknown
    model: str | None
    context_size: int | None
    total_slots: int | None
    generated_tokens_per_second: float | None
    prompt_tokens_per_second: float | None
    generated_history: tuple[float | None, ...]
    prompt_history: tuple[float | None, ...]
    requests_processing: float | None
    requests_deferred: float | None


@dataclass(frozen=True)
class SlotRow:
    """One slot of one llama-server."""

    target: str
    slot: str
    processing: bool
    context_tokens: float | None
    context_size: float | None
    generated_tokens: float | None  # in the current (or last) task; needs the exporter's slot_generated_tokens

    @property
    def context_fill(self) -> float | None:
        if self.context_tokens is None or not self.context_size:
            return None
        return min(1.0, self.context_tokens / self.context_size)


@dataclass(frozen=True)
class ClientRow:
    """One client name seen by the gateway, over the window."""

    client: str
    requests_per_minute: float | None
    requests: float | None
    input_tokens: float | None
    output_tokens: float | None
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    empty_answers: float | None
    errors: float | None
    #: Prompt tokens served from llama-server's prompt cache / all prompt tokens, over the window.
    cache_hit_ratio: float | None = None


@dataclass(frozen=True)
class ModelRow:
    """One model of a llama-server router (``top --router``): its state and swaps, and the gateway's requests for it."""

    model: str
    state: str  # loaded | loading | unloaded | sleeping | failed | downloading | downloaded
    since: float  # unix seconds of the last state change seen (or of the first read)
    loads: int  # since top started following the router
    load_failures: int
    last_load_seconds: float | None
    last_exit_code: int | None
    requests: float | None  # inference requests the gateway forwarded for it (since the gateway started)
    cold_starts: float | None  # of which waited for the model to load or wake
    #: The exporter target (router) the model belongs to, when the row comes from the exporter.
    target: str | None = None


@dataclass(frozen=True)
class GpuRow:
    """One GPU (NVML, through the exporter)."""

    gpu: str
    name: str | None
    utilization: float | None  # 0-1
    memory_used_bytes: float | None
    memory_total_bytes: float | None
    power_watts: float | None
    temperature_celsius: float | None
    joules_per_token: float | None


@dataclass(frozen=True)
class GpuTargetRow:
    """GPU use attributed to one llama-server."""

    target: str
    memory_used_bytes: float | None
    joules_per_token: float | None


@dataclass
class View:
    """Everything one refresh of the view shows."""

    wall_time: float
    exporter: SourceState
    gateway: SourceState
    #: Span the per-client numbers (else the GPU energy numbers) cover: from the oldest snapshot kept
    #: (at most ``Model.window_seconds`` old) to this one. ``None`` until there are two snapshots.
    window_seconds: float | None
    servers: list[ServerRow] = field(default_factory=list)
    slots: list[SlotRow] = field(default_factory=list)
    gpu_state: str = "off"  # up | down | off (no GPU series: --no-gpu, or the exporter is down)
    gpus: list[GpuRow] = field(default_factory=list)
    gpu_targets: list[GpuTargetRow] = field(default_factory=list)
    clients: list[ClientRow] = field(default_factory=list)
    recent: list[RecentRequest] = field(default_factory=list)
    #: Upstream URLs the gateway cannot reach (its ``llamatelemetry_proxy_upstream_up`` is 0).
    upstreams_down: list[str] = field(default_factory=list)
    #: The router followed for the models panel (None: no ``--router``).
    router: SourceState | None = None
    models: list[ModelRow] = field(default_factory=list)


def _key(sample: Sample) -> tuple[str, frozenset[tuple[str, str]]]:
    return sample.name, frozenset(sample.labels.items())


def increase(now: Metrics, before: Metrics, name: str, group_by: str | None = None,
             where: Callable[[dict[str, str]], bool] | None = None) -> dict[str, float]:
    """How much counter ``name`` grew between two pages, summed per value of label ``group_by``.

    Per series, like PromQL's ``increase`` without extrapolation: a series that went down was
    reset (the process restarted) and counts from 0; a series absent before is new and counts
    from 0 too. Without ``group_by`` everything lands under the key ``""``.
    """
    old = {_key(s): s.value for s in before.series(name)}
    out: dict[str, float] = {}
    for sample in now.series(name):
        if where is not None and not where(sample.labels):
            continue
        group = sample.labels.get(group_by, "") if group_by else ""
        previous = old.get(_key(sample), 0.0)
        grew = sample.value - previous if sample.value >= previous else sample.value
        out[group] = out.get(group, 0.0) + grew
    return out


def bucket_increase(now: Metrics, before: Metrics, name: str, group_by: str) -> dict[str, list[tuple[float, float]]]:
    """Increase of histogram ``name``'s ``_bucket`` series per ``group_by`` value, as ``(le, count)`` lists."""
    per_group: dict[str, dict[float, float]] = {}
    old = {_key(s): s.value for s in before.series(name + "_bucket")}
    for sample in now.series(name + "_bucket"):
        le = sample.labels.get("le")
        if le is None:
            continue
        try:
            bound = float(le)
        except ValueError:
            continue
        previous = old.get(_key(sample), 0.0)
        grew = sample.value - previous if sample.value >= previous else sample.value
        buckets = per_group.setdefault(sample.labels.get(group_by, ""), {})
        buckets[bound] = buckets.get(bound, 0.0) + grew
    return {group: sorted(b.items()) for group, b in per_group.items()}


def _one(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.total(name, **labels)


def _per_second(now: float | None, before: float | None, seconds: float) -> float | None:
    if now is None or before is None or seconds <= 0:
        return None
    return (now - before if now >= before else now) / seconds


#: Label the gateway puts the client name in (OTel attribute ``llamatelemetry.client.name``).
CLIENT_LABEL = "llamatelemetry_client_name"
#: Label of the model a request asked for (OTel attribute ``gen_ai.request.model``).
MODEL_LABEL = "gen_ai_request_model"


def _failed_request(labels: dict[str, str]) -> bool:
    status = labels.get("http_response_status_code", "")
    if labels.get("error_type"):
        return True
    try:
        return int(float(status)) >= 400
    except ValueError:
        return False


class Model:
    """Turns a stream of snapshots into views. Keeps ``window_seconds`` of snapshots and ``history_points`` rates per server."""

    def __init__(self, window_seconds: float = 60.0, history_points: int = 120) -> None:
        if window_seconds <= 0:
            raise ValueError("window_seconds must be > 0")
        self.window_seconds = window_seconds
        self.history_points = history_points
        self._snapshots: deque[Snapshot] = deque()
        self._history: dict[str, deque[tuple[float | None, float | None]]] = {}
        #: (target, model) -> (load count, load seconds sum, last load seconds), from the exporter's histogram.
        self._load_sums: dict[tuple[str, str], tuple[float, float, float]] = {}

    # --- bookkeeping ---------------------------------------------------------------------------------

    def _previous(self, pick: Callable[[Snapshot], Reading]) -> Snapshot | None:
        """The latest kept snapshot in which that source was up."""
        for snap in reversed(self._snapshots):
            if pick(snap).up:
                return snap
        return None

    def _window_start(self, now: Snapshot, pick: Callable[[Snapshot], Reading]) -> Snapshot | None:
        """The oldest kept snapshot, within the window, in which that source was up."""
        for snap in self._snapshots:
            if now.time - snap.time <= self.window_seconds * 1.05 and pick(snap).up:
                return snap
        return None

    def _keep(self, snapshot: Snapshot) -> None:
        self._snapshots.append(snapshot)
        while self._snapshots and snapshot.time - self._snapshots[0].time > self.window_seconds * 1.05:
            self._snapshots.popleft()

    # --- the update --------------------------------------------------------------------------------------

    def update(self, snapshot: Snapshot) -> View:
        """The view after ``snapshot`` (snapshots must come in time order)."""
        exp = snapshot.exporter
        gw = snapshot.gateway
        view = View(
            wall_time=snapshot.wall,
            exporter=SourceState("exporter", exp.url, exp.up, exp.error),
            gateway=SourceState("gateway", gw.url, gw.up, gw.error),
            window_seconds=None,
        )
        if exp.up and exp.metrics is not None:
            previous = self._previous(lambda s: s.exporter)
            start = self._window_start(snapshot, lambda s: s.exporter)
            self._fill_servers(view, exp.metrics, previous, snapshot)
            self._fill_gpus(view, exp.metrics, start, snapshot)
        if gw.up and gw.metrics is not None:
            start = self._window_start(snapshot, lambda s: s.gateway)
            self._fill_clients(view, gw.metrics, start, snapshot)
            view.recent = list(gw.recent or [])
            view.upstreams_down = [s.labels.get("upstream", "?") for s in gw.metrics.series("llamatelemetry_proxy_upstream_up")
                                   if s.value == 0]
        if snapshot.router is not None:
            self._fill_models(view, snapshot)
        elif exp.up and exp.metrics is not None and exp.metrics.series("llamatelemetry_model_state"):
            self._fill_models_from_exporter(view, exp.metrics, snapshot)
        self._keep(snapshot)
        return view

    def _fill_servers(self, view: View, m: Metrics, previous: Snapshot | None, now: Snapshot) -> None:
        before = previous.exporter.metrics if previous is not None else None
        seconds = now.time - previous.time if previous is not None else 0.0
        targets = m.label_values("llamatelemetry_server_state", "target")
        for name in m.label_values("llamatelemetry_slot_processing", "target") + m.label_values("llamacpp_tokens_predicted_total", "target"):
            if name not in targets:
                targets.append(name)
        routers = set(m.label_values("llamatelemetry_router_info", "target"))
        router_rows: list[str] = []
        for target in targets:
            if target in routers:  # llama-server router mode: a row per running model (its series carry `model`)
                router_rows += self._fill_router_servers(view, m, before, seconds, target)
                continue
            state = next((s for s in SERVER_STATES if _one(m, "llamatelemetry_server_state", target=target, state=s) == 1), "unknown")
            info = m.series("llamatelemetry_server_info", target=target)
            labels = info[0].labels if info else {}
            gen = prompt = None
            if before is not None:
                gen = _per_second(_one(m, "llamacpp_tokens_predicted_total", target=target),
                                  _one(before, "llamacpp_tokens_predicted_total", target=target), seconds)
                prompt = _per_second(_one(m, "llamacpp_prompt_tokens_total", target=target),
                                     _one(before, "llamacpp_prompt_tokens_total", target=target), seconds)
            history = self._history.setdefault(target, deque(maxlen=self.history_points))
            if before is not None:
                history.append((gen, prompt))
            view.servers.append(ServerRow(
                target=target, state=state, model=labels.get("model") or None,
                context_size=_int_label(labels.get("n_ctx")), total_slots=_int_label(labels.get("total_slots")),
                generated_tokens_per_second=gen, prompt_tokens_per_second=prompt,
                generated_history=tuple(g for g, _ in history), prompt_history=tuple(p for _, p in history),
                requests_processing=_one(m, "llamacpp_requests_processing", target=target),
                requests_deferred=_one(m, "llamacpp_requests_deferred", target=target),
            ))
            slot_ids = [s.labels.get("slot", "") for s in m.series("llamatelemetry_slot_processing", target=target)]
            for slot in sorted(slot_ids, key=_slot_order):
                view.slots.append(SlotRow(
                    target=target, slot=slot,
                    processing=_one(m, "llamatelemetry_slot_processing", target=target, slot=slot) == 1,
                    context_tokens=_one(m, "llamatelemetry_slot_context_tokens", target=target, slot=slot),
                    context_size=_one(m, "llamatelemetry_slot_context_size_tokens", target=target, slot=slot),
                    generated_tokens=_one(m, "llamatelemetry_slot_generated_tokens", target=target, slot=slot),
                ))
        for gone in set(self._history) - set(targets) - set(router_rows):
            del self._history[gone]

    def _fill_router_servers(self, view: View, m: Metrics, before: Metrics | None, seconds: float, target: str) -> list[str]:
        """Server and slot rows of a router target, one server per running model, named ``target/model``."""
        names = []
        for sample in m.series("llamatelemetry_model_state", target=target):
            model, state = sample.labels.get("model", ""), sample.labels.get("state", "")
            if sample.value != 1 or state not in _RUNNING_MODEL_STATES:
                continue
            name, sel = f"{target}/{model}", {"target": target, "model": model}
            names.append(name)
            info = m.series("llamatelemetry_server_info", **sel)
            labels = info[0].labels if info else {}
            gen = prompt = None
            if before is not None:
                gen = _per_second(_one(m, "llamacpp_tokens_predicted_total", **sel), _one(before, "llamacpp_tokens_predicted_total", **sel), seconds)
                prompt = _per_second(_one(m, "llamacpp_prompt_tokens_total", **sel), _one(before, "llamacpp_prompt_tokens_total", **sel), seconds)
            history = self._history.setdefault(name, deque(maxlen=self.history_points))
            if before is not None:
                history.append((gen, prompt))
            view.servers.append(ServerRow(
                target=name, state=_RUNNING_MODEL_STATES[state], model=model,
                context_size=_int_label(labels.get("n_ctx")), total_slots=_int_label(labels.get("total_slots")),
                generated_tokens_per_second=gen, prompt_tokens_per_second=prompt,
                generated_history=tuple(g for g, _ in history), prompt_history=tuple(p for _, p in history),
                requests_processing=_one(m, "llamacpp_requests_processing", **sel),
                requests_deferred=_one(m, "llamacpp_requests_deferred", **sel),
            ))
            for slot in sorted((s.labels.get("slot", "") for s in m.series("llamatelemetry_slot_processing", **sel)), key=_slot_order):
                view.slots.append(SlotRow(
                    target=name, slot=slot,
                    processing=_one(m, "llamatelemetry_slot_processing", slot=slot, **sel) == 1,
                    context_tokens=_one(m, "llamatelemetry_slot_context_tokens", slot=slot, **sel),
                    context_size=_one(m, "llamatelemetry_slot_context_size_tokens", slot=slot, **sel),
                    generated_tokens=_one(m, "llamatelemetry_slot_generated_tokens", slot=slot, **sel),
                ))
        return names

    def _fill_gpus(self, view: View, m: Metrics, start: Snapshot | None, now: Snapshot) -> None:
        gpu_up = m.series("llamatelemetry_collector_up", collector="gpu")
        if not gpu_up:
            view.gpu_state = "off"
        else:
            view.gpu_state = "up" if gpu_up[0].value == 1 else "down"
        before = start.exporter.metrics if start is not None else None
        if start is not None and now.time > start.time:
            view.window_seconds = now.time - start.time
        tokens = increase(m, before, "llamacpp_tokens_predicted_total", "target") if before is not None else {}
        all_tokens = math.fsum(tokens.values())
        gpus = m.label_values("llamatelemetry_gpu_info", "gpu")
        for name in ("llamatelemetry_gpu_utilization_ratio", "llamatelemetry_gpu_memory_used_bytes", "llamatelemetry_gpu_temperature_celsius"):
            gpus += [g for g in m.label_values(name, "gpu") if g not in gpus]
        energy = increase(m, before, "llamatelemetry_gpu_energy_joules_total", "gpu") if before is not None else {}
        for gpu in sorted(gpus, key=_slot_order):
            info = m.series("llamatelemetry_gpu_info", gpu=gpu)
            view.gpus.append(GpuRow(
                gpu=gpu, name=info[0].labels.get("name") if info else None,
                utilization=_one(m, "llamatelemetry_gpu_utilization_ratio", gpu=gpu),
                memory_used_bytes=_one(m, "llamatelemetry_gpu_memory_used_bytes", gpu=gpu),
                memory_total_bytes=_one(m, "llamatelemetry_gpu_memory_total_bytes", gpu=gpu),
                power_watts=_one(m, "llamatelemetry_gpu_power_watts", gpu=gpu),
                temperature_celsius=_one(m, "llamatelemetry_gpu_temperature_celsius", gpu=gpu),
                # Every GPU's energy over every server's tokens: the box-level cost of a token.
                joules_per_token=_ratio(energy.get(gpu), all_tokens),
            ))
        target_energy = increase(m, before, "llamatelemetry_target_energy_joules_total", "target") if before is not None else {}
        targets = m.label_values("llamatelemetry_gpu_target_memory_used_bytes", "target")
        targets += [t for t in m.label_values("llamatelemetry_target_energy_joules_total", "target") if t not in targets]
        for target in targets:
            view.gpu_targets.append(GpuTargetRow(
                target=target,
                memory_used_bytes=_one(m, "llamatelemetry_gpu_target_memory_used_bytes", target=target),
                joules_per_token=_ratio(target_energy.get(target), tokens.get(target, 0.0)),
            ))

    def _fill_models(self, view: View, now: Snapshot) -> None:
        router = now.router
        assert router is not None
        view.router = SourceState("router", router.url, router.up, router.error)
        gw = now.gateway.metrics if now.gateway.up else None
        requests = merge_labels(gw.series("gen_ai_server_request_duration_seconds_count"), MODEL_LABEL) if gw else {}
        cold = merge_labels(gw.series("llamatelemetry_model_load_wait_seconds_count"), MODEL_LABEL) if gw else {}
        for state in router.models or []:
            names = (state.id, *state.aliases)
            view.models.append(ModelRow(
                model=state.id, state=state.status, since=state.since, loads=state.loads,
                load_failures=state.load_failures, last_load_seconds=state.last_load_seconds,
                last_exit_code=state.last_exit_code,
                requests=math.fsum(requests.get(n, 0.0) for n in names) if gw else None,
                cold_starts=math.fsum(cold.get(n, 0.0) for n in names) if gw else None,
            ))

    def _gateway_per_model(self, now: Snapshot) -> tuple[dict[str, float], dict[str, float]] | None:
        gw = now.gateway.metrics if now.gateway.up else None
        if gw is None:
            return None
        return (merge_labels(gw.series("gen_ai_server_request_duration_seconds_count"), MODEL_LABEL),
                merge_labels(gw.series("llamatelemetry_model_load_wait_seconds_count"), MODEL_LABEL))

    def _fill_models_from_exporter(self, view: View, m: Metrics, now: Snapshot) -> None:
        """The models panel from the exporter's router series (``llamatelemetry_model_*``): counts since the exporter started."""
        per_model = self._gateway_per_model(now)
        keys: dict[tuple[str, str], None] = {}
        for sample in m.series("llamatelemetry_model_state"):
            keys.setdefault((sample.labels.get("target", ""), sample.labels.get("model", "")), None)
        for target, model in keys:
            state = next((s.labels.get("state", "") for s in m.series("llamatelemetry_model_state", target=target, model=model)
                          if s.value == 1), "unknown")
            count = _one(m, "llamatelemetry_model_load_duration_seconds_count", target=target, model=model)
            total = _one(m, "llamatelemetry_model_load_duration_seconds_sum", target=target, model=model)
            view.models.append(ModelRow(
                model=model, state=state,
                since=_one(m, "llamatelemetry_model_state_since_timestamp_seconds", target=target, model=model) or now.wall,
                loads=int(_one(m, "llamatelemetry_model_loads_total", target=target, model=model) or 0),
                load_failures=int(_one(m, "llamatelemetry_model_load_failures_total", target=target, model=model) or 0),
                last_load_seconds=self._last_load((target, model), count, total),
                last_exit_code=_int_or_none(_one(m, "llamatelemetry_model_last_exit_code", target=target, model=model)),
                requests=per_model[0].get(model, 0.0) if per_model else None,
                cold_starts=per_model[1].get(model, 0.0) if per_model else None,
                target=target,
            ))

    def _last_load(self, key: tuple[str, str], count: float | None, total: float | None) -> float | None:
        """The last load's duration from the exporter's histogram: what its sum grew by when its count grew by one
        (the average of the loads in between when several happened; the average of all loads at first sight)."""
        if count is None or total is None or count <= 0:
            return None
        seen = self._load_sums.get(key)
        if seen is None or count < seen[0]:  # first sight, or the exporter restarted
            self._load_sums[key] = (count, total, total / count)
        elif count > seen[0]:
            self._load_sums[key] = (count, total, (total - seen[1]) / (count - seen[0]))
        return self._load_sums[key][2]

    def _fill_clients(self, view: View, m: Metrics, start: Snapshot | None, now: Snapshot) -> None:
        names = m.label_values("llamatelemetry_proxy_requests_total", CLIENT_LABEL)
        for metric in ("gen_ai_server_request_duration_seconds_count", "gen_ai_client_token_usage_count"):
            names += [n for n in m.label_values(metric, CLIENT_LABEL) if n not in names]
        before = start.gateway.metrics if start is not None else None
        seconds = now.time - start.time if start is not None else 0.0
        if before is None or seconds <= 0:
            view.clients = [ClientRow(n, None, None, None, None, None, None, None, None) for n in sorted(names)]
            return
        view.window_seconds = seconds  # the per-client numbers are what the window is mostly about
        requests = increase(m, before, "llamatelemetry_proxy_requests_total", CLIENT_LABEL)
        errors = increase(m, before, "llamatelemetry_proxy_requests_total", CLIENT_LABEL, where=_failed_request)
        tokens_in = increase(m, before, "gen_ai_client_token_usage_sum", CLIENT_LABEL, where=lambda l: l.get("gen_ai_token_type") == "input")
        tokens_out = increase(m, before, "gen_ai_client_token_usage_sum", CLIENT_LABEL, where=lambda l: l.get("gen_ai_token_type") == "output")
        empty = increase(m, before, "llamatelemetry_reasoning_budget_exhausted_total", CLIENT_LABEL)
        ttft = bucket_increase(m, before, "gen_ai_server_time_to_first_token_seconds", CLIENT_LABEL)
        prompt = increase(m, before, "llamatelemetry_prompt_tokens_total", CLIENT_LABEL)
        cached = increase(m, before, "llamatelemetry_prompt_cached_tokens_total", CLIENT_LABEL)
        rows = []
        for name in names:
            count = requests.get(name, 0.0)
            buckets = ttft.get(name, [])
            rows.append(ClientRow(
                client=name, requests_per_minute=count * 60.0 / seconds, requests=count,
                input_tokens=tokens_in.get(name, 0.0), output_tokens=tokens_out.get(name, 0.0),
                ttft_p50_s=histogram_quantile(0.5, buckets) if buckets else None,
                ttft_p95_s=histogram_quantile(0.95, buckets) if buckets else None,
                empty_answers=empty.get(name, 0.0), errors=errors.get(name, 0.0),
                cache_hit_ratio=_ratio(cached.get(name), prompt.get(name, 0.0)),
            ))
        view.clients = sorted(rows, key=lambda r: (-(r.requests or 0.0), r.client))


def _ratio(numerator: float | None, denominator: float) -> float | None:
    if numerator is None or denominator <= 0:
        return None
    return numerator / denominator


def _int_or_none(value: float | None) -> int | None:
    return int(value) if value is not None and math.isfinite(value) else None


def _int_label(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _slot_order(value: str) -> tuple[int, str]:
    return (int(value), "") if value.isdigit() else (1 << 30, value)


def sparkline(values: Iterable[float | None], width: int) -> str:
    """The last ``width`` values as block characters scaled to their maximum (unknown values are blank).

    Example::

        >>> sparkline([0, 1, 2, 4, None, 8], 6)
        '▁▂▃▅ █'
    """
    shown = list(values)[-width:] if width > 0 else []
    top = max((v for v in shown if v is not None), default=0.0)
    blocks = "▁▂▃▄▅▆▇█"
    out = []
    for v in shown:
        if v is None:
            out.append(" ")
        elif top <= 0:
            out.append(blocks[0])
        else:
            out.append(blocks[min(len(blocks) - 1, int(v / top * (len(blocks) - 1) + 0.5))])
    return "".join(out).rjust(width)
