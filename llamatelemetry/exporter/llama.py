"""Turn one target's raw endpoint answers into Prometheus metric families.

* ``/health`` → ``llamatelemetry_server_state`` (one-hot ok / loading / unreachable / error).
* ``/metrics`` → re-exported as ``llamacpp_*`` (colons are not valid in exporter metric names),
  keeping the upstream type. Exception: ``llamacpp:n_tokens_max`` is a high-water mark that
  llama-server types as a counter; it is re-exported as a gauge named ``llamacpp_n_tokens_max``
  (``rate()`` of a maximum means nothing, and as a counter the client library would rename it
  ``..._total``). ``llamacpp:n_busy_slots_per_decode`` (an average, typed counter by some builds)
  is always a gauge too. Families that are not ``llamacpp:*`` are dropped (logged once).
* ``/props`` → ``llamatelemetry_server_info``; ``/slots`` → per-slot gauges.
* 501 answers → ``llamatelemetry_endpoint_available{endpoint} 0`` plus one log line naming the
  llama-server flag, repeated only after the endpoint came back in between.

:class:`TargetView` keeps per-target state across scrapes (what was already logged, the error
counter). It never raises for bad input from the server: malformed answers are counted as
scrape errors and logged once per change.

Example::

    view = TargetView(parse_target("http://127.0.0.1:8080"))
    families, ok = view.families(snapshot)   # snapshot from Fetcher.fetch_target()
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.samples import Sample as PromSample

from .._defaults import API_KEY_ENV
from ..promtext import MetricFamily, PromTextParseError, parse_prometheus_text
from .fetch import Fetched, TargetSnapshot
from .targets import Target

if TYPE_CHECKING:
    from .router_target import RouterView

log = logging.getLogger("llamatelemetry.exporter.llama")

STATES = ("ok", "loading", "unreachable", "error")

#: What to tell the user when an endpoint answers 501 (the llama-server flag that enables it).
FLAG_HINT = {
    "metrics": "llama-server was started without --metrics; restart it with --metrics to get llamacpp_* series",
    "slots": "llama-server was started with --no-slots; restart it without --no-slots to get per-slot series",
    "props": "this llama-server does not serve /props, so llamatelemetry_server_info is missing for it",
}

#: Only these families are re-exported: anything else on a target's /metrics (another exporter's
#: llamatelemetry_* families, say) would collide with the exporter's own names.
UPSTREAM_PREFIXES = ("llamacpp:", "llamacpp_")

#: Upstream families whose type is changed on re-export (see module docstring).
#: ``n_busy_slots_per_decode`` is an average (busy slots / decode calls) that some builds type as a
#: counter and others as a gauge: always a gauge here, so its name and type do not depend on the build.
TYPE_OVERRIDES = {"llamacpp:n_tokens_max": "gauge", "llamacpp:n_busy_slots_per_decode": "gauge"}

_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def exported_name(name: str) -> str:
    """``llamacpp:prompt_tokens_total`` → ``llamacpp_prompt_tokens_total`` (any invalid char → ``_``)."""
    return _INVALID.sub("_", name)


#: /props (model, n_ctx, slots, build) changes only on restart: re-read it at most this often
#: while the target stays ready, and at once after the target was not ready.
PROPS_TTL_SECONDS = 60.0


def _state_of(health: Fetched) -> str:
    if health.status is None:
        return "unreachable"
    if health.status == 200:
        return "ok"
    if health.status == 503:
        return "loading"
    return "error"


def derive_state(results: dict[str, Fetched]) -> tuple[str, Fetched]:
    """Server state and the answer it was read from.

    ``/health`` decides when it was fetched; otherwise (see ``Fetcher.fetch_target``) any 200
    means ok, any 503 loading, and no HTTP answer at all unreachable.
    """
    if "health" in results:
        return _state_of(results["health"]), results["health"]
    answers = list(results.values())
    for status, state in ((200, "ok"), (503, "loading")):
        for a in answers:
            if a.status == status:
                return state, a
    if answers and all(a.status is None for a in answers):
        return "unreachable", answers[0]
    return "error", answers[0] if answers else Fetched(error="nothing fetched")


class TargetView:
    """Per-target interpretation and memory (log de-duplication, the scrape error counter)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.errors_total = 0
        self._last_problem: dict[str, str | None] = {}
        self._last_state: str | None = None
        self._props_labels: list[str] | None = None  # cached llamatelemetry_server_info labels
        self._props_at = 0.0
        self._slot_tasks: dict[str, Any] = {}  # slot id -> the id_task seen at the previous scrape
        self.requests_seen = 0  # tasks seen starting on a slot (see _count_requests)
        #: Set once the target turned out to be a llama-server router (then it is read as a set of models).
        self.router: RouterView | None = None

    def close(self) -> None:
        """Forget router mode (stops its event-stream watcher); the next scrape reads the target afresh."""
        if self.router is not None:
            self.router.close()
            self.router = None

    def props_due(self) -> bool:
        """Whether this scrape should read ``/props`` (see :data:`PROPS_TTL_SECONDS`)."""
        return (self._props_labels is None or self._last_state != "ok"
                or time.monotonic() - self._props_at > PROPS_TTL_SECONDS)

    # -- logging once per change ----------------------------------------------------------------
    def _note(self, key: str, problem: str | None, level: int = logging.WARNING) -> None:
        """Log ``problem`` for ``key`` only when it differs from the previous scrape's."""
        previous = self._last_problem.get(key)
        if problem != previous:
            if problem is not None:
                log.log(level, "target %s: %s", self.target.name, problem)
            elif previous is not None:
                log.info("target %s: %s is fine again", self.target.name, key)
        self._last_problem[key] = problem

    # -- interpretation --------------------------------------------------------------------------
    def families(self, snap: TargetSnapshot) -> tuple[list[Metric], bool]:
        """Metric families for this scrape and whether the target counts as up.

        Up means: ``/health`` said ok and every enabled endpoint gave a well-formed answer.
        """
        name = self.target.name
        res = snap.results
        state, health = derive_state(res)
        if state != self._last_state:
            detail = {"ok": "ready", "loading": "loading the model (503)", "unreachable": f"unreachable ({health.error})",
                      "error": f"answered HTTP {health.status}"}[state]
            log.log(logging.INFO if state in ("ok", "loading") else logging.WARNING, "target %s (%s): %s", name, self.target.base_url, detail)
            self._last_state = state
        errors: list[str] = [] if state in ("ok", "loading") else [state]

        out: list[Metric] = []
        state_fam = GaugeMetricFamily("llamatelemetry_server_state", "1 for the current state of the llama-server (from /health): ok, loading, unreachable or error.", labels=["target", "state"])
        for s in STATES:
            state_fam.add_metric([name, s], 1.0 if s == state else 0.0)
        out.append(state_fam)

        available = GaugeMetricFamily("llamatelemetry_endpoint_available", "1 when the llama-server endpoint is enabled, 0 when it answers 501 (flag not set).", labels=["target", "endpoint"])
        bodies: dict[str, bytes] = {}
        for ep in ("metrics", "props", "slots"):
            got = res.get(ep)
            if got is None:
                continue
            problem = None
            if got.status == 200:
                available.add_metric([name, ep], 1.0)
                bodies[ep] = got.body
            elif got.status == 501:
                available.add_metric([name, ep], 0.0)
                self._note(f"/{ep}", f"/{ep} answered 501: {FLAG_HINT[ep]}")
                continue
            elif state != "ok" or got.status == 503:
                continue  # already reported through the server state
            elif got.status is None:
                problem = f"/{ep} failed: {got.error}"
            elif got.status in (401, 403):
                problem = f"/{ep} answered {got.status}: the API key is missing or wrong (set --api-key or {API_KEY_ENV})"
            elif got.status == 400 and ep == "metrics":
                problem = f"/metrics answered 400 ({_error_body(got.body)})"
                if self.target.query:
                    problem += " - is the model in ?model= known to the router (GET /models lists them)?"
            else:
                problem = f"/{ep} answered HTTP {got.status}"
            if problem:
                self._note(f"/{ep}", problem)
                errors.append(problem)
        out.append(available)

        if "metrics" in bodies:
            fams, problem = self._metrics(bodies["metrics"])
            out.extend(fams)
            self._check("/metrics", problem, errors)
        if state != "ok":
            self._props_labels = None
        if "props" in bodies:
            labels, problem = self._props(bodies["props"])
            self._props_labels, self._props_at = labels, time.monotonic()
            self._check("/props", problem, errors)
        elif "props" not in res and self._props_labels is not None:
            available.add_metric([name, "props"], 1.0)  # read recently and cached
        if self._props_labels is not None and state == "ok":
            info = GaugeMetricFamily("llamatelemetry_server_info", "llama-server identity from /props; value is always 1.",
                                     labels=["target", "model", "n_ctx", "total_slots", "build"])
            info.add_metric(self._props_labels, 1.0)
            out.append(info)
        if "slots" in bodies:
            fams, problem = self._slots(bodies["slots"])
            out.extend(fams)
            self._check("/slots", problem, errors)

        if errors:
            self.errors_total += 1
        return out, state == "ok" and not errors

    def _check(self, key: str, problem: str | None, errors: list[str]) -> None:
        self._note(key, problem)
        if problem:
            errors.append(problem)

    def _metrics(self, body: bytes) -> tuple[list[Metric], str | None]:
        try:
            parsed = parse_prometheus_text(body.decode("utf-8"))
        except (UnicodeDecodeError, PromTextParseError) as exc:
            return [], f"/metrics is not valid Prometheus text ({exc}); its llamacpp_* series are skipped this scrape"
        out: list[Metric] = []
        foreign: list[str] = []
        for fam in parsed:
            if not fam.name.startswith(UPSTREAM_PREFIXES):
                foreign.append(fam.name)
                continue
            out.append(_reexport(fam, self.target.name))
        # Not an error of the target (its llamacpp_* series are fine), but worth one log line per change:
        # another exporter, or this exporter itself, behind a target URL would otherwise add duplicate families.
        self._note("/metrics (foreign families)", None if not foreign else (
            f"/metrics has {len(foreign)} families that are not llama-server's (e.g. {foreign[0]}); they are dropped. "
            "Is this target really a llama-server?"))
        return out, None

    def _props(self, body: bytes) -> tuple[list[str] | None, str | None]:
        try:
            props = json.loads(body)
            if not isinstance(props, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            return None, f"/props is not a JSON object ({str(exc)[:80]})"
        settings = props.get("default_generation_settings") or {}
        model_path = str(props.get("model_path") or "")
        alias = str(props.get("model_alias") or "")
        # Without --alias, llama-server reports the full GGUF path as the alias: label by the file's name.
        model = (alias if alias and alias != model_path else os.path.basename(model_path)) or "unknown"
        n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
        return [self.target.name, str(model), _label(n_ctx), _label(props.get("total_slots")), str(props.get("build_info") or "")], None

    def _slots(self, body: bytes) -> tuple[list[Metric], str | None]:
        try:
            slots = json.loads(body)
            if not isinstance(slots, list) or not all(isinstance(s, dict) for s in slots):
                raise ValueError("not a JSON list of slot objects")
        except ValueError as exc:
            return [], f"/slots is not a JSON list of slots ({str(exc)[:80]}); per-slot series are skipped this scrape"
        labels = ["target", "slot"]
        processing = GaugeMetricFamily("llamatelemetry_slot_processing", "1 while the slot is processing a request, else 0.", labels=labels)
        size = GaugeMetricFamily("llamatelemetry_slot_context_size_tokens", "Context size of the slot, in tokens.", labels=labels)
        used = GaugeMetricFamily("llamatelemetry_slot_context_tokens", "Tokens currently held in the slot's context (prompt plus generated).", labels=labels)
        ratio = GaugeMetricFamily("llamatelemetry_slot_context_utilization_ratio", "Tokens in context divided by the slot's context size (0-1).", labels=labels)
        generated = GaugeMetricFamily("llamatelemetry_slot_generated_tokens", "Tokens generated so far by the request the slot is processing; 0 once it ends (llama-server resets it).", labels=labels)
        for index, slot in enumerate(slots):
            slot_id = str(slot.get("id", index))
            lv = [self.target.name, slot_id]
            processing.add_metric(lv, 1.0 if slot.get("is_processing") else 0.0)
            decoded = _n_decoded(slot.get("next_token"))
            if decoded is not None:
                generated.add_metric(lv, decoded)
            self._count_request(slot_id, slot.get("id_task"))
            n_ctx = _number(slot.get("n_ctx"))
            tokens = _number(slot.get("n_prompt_tokens")) or 0.0  # absent before the slot's first task
            if n_ctx is not None:
                size.add_metric(lv, n_ctx)
            used.add_metric(lv, tokens)
            if n_ctx:
                ratio.add_metric(lv, min(tokens / n_ctx, 1.0))
        requests = CounterMetricFamily(
            "llamatelemetry_target_requests",
            "Requests seen starting on the target's slots (a slot's task id changed since the previous scrape). "
            "At most one per slot per scrape: a lower bound when requests are shorter than the scrape interval.",
            labels=["target"])
        requests.add_metric([self.target.name], float(self.requests_seen))
        return [processing, size, used, ratio, generated, requests], None

    def _count_request(self, slot_id: str, task: Any) -> None:
        """Count a request when the slot's task id changed since the last scrape.

        llama-server has no request counter; /slots shows each slot's current or last task id. The
        first sight of a slot only sets the baseline (the task ran before the exporter looked).
        """
        seen = slot_id in self._slot_tasks
        before = self._slot_tasks.get(slot_id)
        self._slot_tasks[slot_id] = task
        if seen and task is not None and task != before:
            self.requests_seen += 1


def _reexport(fam: MetricFamily, target: str) -> Metric:
    """``fam`` renamed and retyped (see the module docstring), each sample labelled with ``target``."""
    metric, suffix = _exported_family(fam)
    for sample in fam.samples:
        # An upstream "target" label would clash with ours: keep it as exported_target, as Prometheus does.
        labels = {("exported_target" if k == "target" else k): v for k, v in sample.labels.items()}
        labels["target"] = target
        sample_name = exported_name(sample.name)
        if suffix is not None:
            if sample_name not in (metric.name, metric.name + suffix):
                continue  # e.g. a counter's _created sample: regenerated by the client library
            sample_name = metric.name + suffix
        metric.samples.append(PromSample(sample_name, labels, sample.value))
    return metric


def _exported_family(fam: MetricFamily) -> tuple[Metric, str | None]:
    """The empty family ``fam`` is re-exported as, and the suffix its samples must carry
    (``None``: histogram / summary / untyped samples pass through under their own names)."""
    base = exported_name(fam.name)
    mtype = TYPE_OVERRIDES.get(fam.name, fam.type)
    doc = fam.help or fam.name
    if mtype == "counter":
        return CounterMetricFamily(base, doc, labels=None), "_total"  # strips a _total from the name
    if mtype == "gauge":
        return GaugeMetricFamily(base, doc, labels=None), ""
    return Metric(base, doc, "unknown" if mtype == "untyped" else mtype), None


def _error_body(body: bytes) -> str:
    """The ``error.message`` of a llama-server error answer (e.g. ``model 'x' not found``)."""
    try:
        message = json.loads(body)["error"]["message"]
        return str(message)
    except (ValueError, KeyError, TypeError):
        return body[:120].decode("utf-8", "replace")


def _n_decoded(next_token: Any) -> float | None:
    # A list of one object in recent builds, the object itself in older ones.
    first = next_token[0] if isinstance(next_token, list) and next_token else next_token
    return _number(first.get("n_decoded")) if isinstance(first, dict) else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _label(value: Any) -> str:
    return "" if value is None else str(value)
