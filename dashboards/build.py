"""Generate the Grafana dashboards in this directory (``python dashboards/build.py``).

The JSON files are committed; ``tests/test_stack_dashboards.py`` checks they match this generator, that
they have the shape Grafana provisions, and ``tests/test_stack_live.py`` runs every PromQL query against
a real Prometheus. Edit this file, not the JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

HERE = Path(__file__).resolve().parent

PROM_UID = "llamatelemetry-prometheus"
JAEGER_UID = "llamatelemetry-jaeger"
PROM = {"type": "prometheus", "uid": PROM_UID}
JAEGER = {"type": "jaeger", "uid": JAEGER_UID}

#: Jaeger searches (Grafana's Jaeger data source) for llama.cpp client spans (gen_ai.provider.name is set by the
#: llamatelemetry client). Jaeger searches one service at a time: `$service` is the Requests board's variable
#: (the metrics' `job` is the application's service.name); the gateway's spans are service llamatelemetry-proxy.
SEARCH_LLAMA = {"queryType": "search", "service": "${service}", "tags": "gen_ai.provider.name=llama.cpp"}
SEARCH_ERRORS = {"queryType": "search", "service": "${service}", "tags": "gen_ai.provider.name=llama.cpp error=true"}
SEARCH_GATEWAY = {"queryType": "search", "service": "llamatelemetry-proxy"}
SEARCH_COLD_STARTS = {"queryType": "search", "service": "llamatelemetry-proxy", "tags": "llamatelemetry.model.cold_start=true"}

GREEN, YELLOW, ORANGE, RED, BLUE = "green", "yellow", "orange", "red", "blue"

Json = dict[str, Any]


def thresholds(*steps: tuple[str, float | None]) -> Json:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}


def query_var(name: str, label: str, metric: str, *, all_value: str = ".*", multi: bool = True) -> Json:
    """A Prometheus query variable ``label_values(metric, label)`` with an "All" option matching ``all_value``."""
    definition = f"label_values({metric}, {label})"
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": PROM,
        "definition": definition,
        "query": {"query": definition, "refId": f"PrometheusVariableQueryEditor-{name}", "qryType": 1},
        "refresh": 2,
        "includeAll": True,
        "allValue": all_value,
        "multi": multi,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "sort": 1,
        "hide": 0,
        "regex": "",
    }


def explore_link(title: str, search: Json) -> Json:
    """A dashboard link opening Grafana Explore on the Jaeger datasource with a trace search."""
    panes = {
        "t": {
            "datasource": JAEGER_UID,
            "queries": [{"refId": "A", "datasource": JAEGER, **search, "limit": 50}],
            "range": {"from": "now-1h", "to": "now"},
        }
    }
    url = "/explore?schemaVersion=1&orgId=1&panes=" + quote(json.dumps(panes, separators=(",", ":")), safe="${}")
    return {"title": title, "type": "link", "url": url, "icon": "external link", "targetBlank": False,
            "asDropdown": False, "includeVars": False, "keepTime": True, "tags": [], "tooltip": title}


def dashboards_link() -> Json:
    return {"title": "llamatelemetry", "type": "dashboards", "tags": ["llamatelemetry"], "asDropdown": True,
            "includeVars": False, "keepTime": True, "icon": "external link", "targetBlank": False, "tooltip": "",
            "url": ""}


class Board:
    """Collects panels with a simple left-to-right flow layout on Grafana's 24-column grid."""

    def __init__(self, uid: str, title: str, description: str, variables: list[Json], links: list[Json],
                 min_interval: str | None = None) -> None:
        self.uid, self.title, self.description = uid, title, description
        self.min_interval = min_interval or EXPORTER_MIN_INTERVAL
        self.variables, self.links = variables, links
        self.panels: list[Json] = []
        self._x = self._y = self._row_h = 0

    def _place(self, w: int, h: int) -> Json:
        if self._x + w > 24:
            self._x, self._y, self._row_h = 0, self._y + self._row_h, 0
        pos = {"x": self._x, "y": self._y, "w": w, "h": h}
        self._x += w
        self._row_h = max(self._row_h, h)
        return pos

    def row(self, title: str) -> None:
        if self._x:
            self._x, self._y, self._row_h = 0, self._y + self._row_h, 0
        self.panels.append({"id": len(self.panels) + 1, "type": "row", "title": title, "collapsed": False,
                            "gridPos": {"x": 0, "y": self._y, "w": 24, "h": 1}, "panels": []})
        self._y += 1

    def panel(self, kind: str, title: str, targets: list[Json], *, w: int, h: int = 8, unit: str,
              description: str = "", steps: tuple[tuple[str, float | None], ...] = ((GREEN, None),),
              min: float | None = None, max: float | None = None, options: Json | None = None,
              custom: Json | None = None, mappings: list[Json] | None = None, overrides: list[Json] | None = None,
              datasource: Json = PROM, links: list[Json] | None = None, transformations: list[Json] | None = None) -> Json:
        defaults: Json = {"unit": unit, "thresholds": thresholds(*steps), "color": {"mode": "thresholds" if kind != "timeseries" else "palette-classic"}}
        if min is not None:
            defaults["min"] = min
        if max is not None:
            defaults["max"] = max
        if custom:
            defaults["custom"] = custom
        if mappings:
            defaults["mappings"] = mappings
        if links:
            defaults["links"] = links
        for i, target in enumerate(targets):
            target.setdefault("refId", chr(ord("A") + i))
            target.setdefault("datasource", datasource)
        panel: Json = {
            "id": len(self.panels) + 1,
            "type": kind,
            "title": title,
            "description": description,
            "datasource": datasource,
            "gridPos": self._place(w, h),
            "targets": targets,
            "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
            "options": options or {},
        }
        if transformations:
            panel["transformations"] = transformations
        if any("rate(" in t.get("expr", "") and not t.get("instant") for t in targets):
            panel["interval"] = self.min_interval
        self.panels.append(panel)
        return panel

    def to_json(self) -> Json:
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["llamatelemetry", "llama.cpp"],
            "editable": True,
            "graphTooltip": 1,
            "schemaVersion": 39,
            "version": 1,
            "refresh": "30s",
            "time": {"from": "now-1h", "to": "now"},
            "timepicker": {},
            "timezone": "browser",
            "fiscalYearStartMonth": 0,
            "liveNow": False,
            "weekStart": "",
            "annotations": {"list": [{
                "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True, "hide": True,
                "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"}]},
            "links": self.links,
            "templating": {"list": self.variables},
            "panels": self.panels,
        }


def q(expr: str, legend: str = "", *, instant: bool = False, table: bool = False, exemplar: bool = False) -> Json:
    if "by (cluster, host" in expr and legend and "{{host}}" not in legend:
        legend += " {{host}}"  # same target names on several hosts stay apart (empty on a single box)
    target: Json = {"expr": expr, "legendFormat": legend or "__auto", "range": not instant, "instant": instant,
                    "editorMode": "code"}
    if table:
        target["format"] = "table"
    if exemplar:
        target["exemplar"] = True
    return target


def ts(fill: int = 10, stack: bool = False, draw: str = "line") -> Json:
    return {"drawStyle": draw, "lineWidth": 1, "fillOpacity": fill, "showPoints": "never", "spanNulls": False,
            "stacking": {"mode": "normal" if stack else "none", "group": "A"}, "axisPlacement": "auto",
            "thresholdsStyle": {"mode": "off"}}


LEGEND = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
          "tooltip": {"mode": "multi", "sort": "desc"}}
LEGEND_TABLE = {"legend": {"displayMode": "table", "placement": "right", "showLegend": True, "calcs": ["lastNotNull", "max"]},
                "tooltip": {"mode": "multi", "sort": "desc"}}
STAT = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}, "colorMode": "background",
        "graphMode": "area", "justifyMode": "auto", "textMode": "auto", "orientation": "auto"}
GAUGE = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}, "showThresholdLabels": False,
         "showThresholdMarkers": True, "orientation": "auto"}
BARGAUGE = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}, "displayMode": "gradient",
            "orientation": "horizontal", "showUnfilled": True, "valueMode": "color", "namePlacement": "auto",
            "sizing": "auto", "minVizHeight": 16, "minVizWidth": 8, "maxVizHeight": 300}
TABLE = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False, "reducer": ["sum"], "fields": ""}}

UP_MAPPINGS = [{"type": "value", "options": {"0": {"text": "DOWN", "color": RED, "index": 0},
                                             "1": {"text": "UP", "color": GREEN, "index": 1}}}]

#: Fleet selectors on every query: `cluster` and `host` are the external labels each host's Prometheus agent
#: adds (deploy/prometheus-agent.yml). On a single box the labels are absent and "All" (.*) matches that.
H = 'cluster=~"$cluster", host=~"$host"'
T = f'target=~"$target", {H}'
G = f'gpu=~"$gpu", {H}'
RI = "$__rate_interval"
#: Minimum interval of rate panels: $__rate_interval is then at least this plus one scrape interval, so a
#: rate window always holds several samples even when a client exports every 15 s (OTEL_METRIC_EXPORT_INTERVAL).
EXPORTER_MIN_INTERVAL = "30s"
CLIENT_MIN_INTERVAL = "1m"


#: llamacpp:n_busy_slots_per_decode is typed `counter` by some llama.cpp builds and `gauge` by others; the
#: exporter follows the build, so the series may carry the counter suffix. Match both.
BUSY_PER_DECODE = "llamacpp_n_busy_slots_per_decode(_total)?"


def fleet_vars() -> list[Json]:
    """The `cluster` and `host` variables every dashboard starts with (values from `up`, written for every job)."""
    return [query_var("cluster", "cluster", "up"), query_var("host", "host", "up")]


# --------------------------------------------------------------------------------------------- llama-server
def llama_server() -> Board:
    b = Board("llamatelemetry-llama-server", "llama-server",
              "llama-server metrics re-exported by the llamatelemetry sidecar exporter: throughput, queueing, slots, prompt cache.",
              [*fleet_vars(), query_var("target", "target", "llamatelemetry_target_up")],
              [dashboards_link()])
    b.row("Health")
    b.panel("stat", "Healthy", [q(f"llamatelemetry_target_up{{{T}}}", "{{target}}")], w=4, h=5, unit="none",
            description="UP when /health said ok and every enabled endpoint answered well-formed on the last scrape; "
                        "DOWN while the model loads or the server is unreachable (see State).",
            steps=((RED, None), (GREEN, 1)), mappings=UP_MAPPINGS, options={**STAT, "graphMode": "none"})
    b.panel("stat", "State", [q(f"llamatelemetry_server_state{{{T}}} == 1", "{{target}}: {{state}}")], w=5, h=5, unit="none",
            description="ok, loading (model loading, /health 503), unreachable or error.",
            mappings=[{"type": "value", "options": {"1": {"text": "", "index": 0}}}],
            options={**STAT, "graphMode": "none", "textMode": "name", "colorMode": "none"})
    b.panel("table", "Server", [q(f"llamatelemetry_server_info{{{T}}}", instant=True, table=True)], w=15, h=5, unit="none",
            description="Model, context size per slot, number of slots and build as reported by /props.",
            options=TABLE,
            transformations=[{"id": "organize", "options": {
                "excludeByName": {"Time": True, "Value": True, "__name__": True, "job": True, "instance": True},
                "renameByName": {"n_ctx": "context (tokens)", "total_slots": "slots"}}}])
    b.row("Throughput")
    b.panel("timeseries", "Prompt processing (tokens/s)",
            [q(f"sum by (cluster, host, target) (rate(llamacpp_prompt_tokens_total{{{T}}}[{RI}]))", "{{target}} evaluated"),
             q(f"sum by (cluster, host, target) (rate(llamacpp_prompt_tokens_cached_total{{{T}}}[{RI}]))", "{{target}} from cache")],
            w=8, unit="suffix: tok/s", min=0, custom=ts(), options=LEGEND,
            description="Prompt tokens per second, from rate() of the counters (never from the resetting *_tokens_seconds gauges).")
    b.panel("timeseries", "Generation (tokens/s)",
            [q(f"sum by (cluster, host, target) (rate(llamacpp_tokens_predicted_total{{{T}}}[{RI}]))", "{{target}}")],
            w=8, unit="suffix: tok/s", min=0, custom=ts(), options=LEGEND,
            description="Generated tokens per second across all slots.")
    b.panel("timeseries", "Speed while busy (tokens/s)",
            [q(f"sum by (cluster, host, target) (rate(llamacpp_tokens_predicted_total{{{T}}}[{RI}])) / sum by (cluster, host, target) (rate(llamacpp_tokens_predicted_seconds_total{{{T}}}[{RI}]))", "{{target}} generation"),
             q(f"sum by (cluster, host, target) (rate(llamacpp_prompt_tokens_total{{{T}}}[{RI}])) / sum by (cluster, host, target) (rate(llamacpp_prompt_seconds_total{{{T}}}[{RI}]))", "{{target}} prompt")],
            w=8, unit="suffix: tok/s", min=0, custom=ts(fill=0), options=LEGEND,
            description="Tokens per second of processing time: what one request sees. Empty while idle.")
    b.row("Queue and slots")
    b.panel("timeseries", "Requests processing / deferred",
            [q(f"sum by (cluster, host, target) (llamacpp_requests_processing{{{T}}})", "{{target}} processing"),
             q(f"sum by (cluster, host, target) (llamacpp_requests_deferred{{{T}}})", "{{target}} deferred")],
            w=8, unit="short", min=0, custom=ts(), options=LEGEND,
            description="Deferred requests wait for a free slot: sustained deferral means too few slots (-np) for the load.",
            overrides=[{"matcher": {"id": "byRegexp", "options": ".*deferred"},
                        "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": RED}}]}])
    b.panel("gauge", "Slot occupancy",
            [q(f"sum by (cluster, host, target) (llamatelemetry_slot_processing{{{T}}}) / count by (cluster, host, target) (llamatelemetry_slot_processing{{{T}}})", "{{target}}")],
            w=5, unit="percentunit", min=0, max=1, steps=((GREEN, None), (ORANGE, 0.75), (RED, 1)), options=GAUGE,
            description="Share of slots processing a request right now (from /slots).")
    b.panel("bargauge", "Context used per slot",
            [q(f"llamatelemetry_slot_context_utilization_ratio{{{T}}}", "{{target}} slot {{slot}}")],
            w=11, unit="percentunit", min=0, max=1, steps=((GREEN, None), (ORANGE, 0.8), (RED, 0.9)), options=BARGAUGE,
            description="Tokens in each slot's context over the slot's context size. Above 90% the conversation is about to hit n_ctx.")
    b.panel("timeseries", "Context tokens per slot",
            [q(f"llamatelemetry_slot_context_tokens{{{T}}}", "{{target}} slot {{slot}}"),
             q(f"max by (cluster, host, target) (llamatelemetry_slot_context_size_tokens{{{T}}})", "{{target}} slot size")],
            w=8, unit="short", min=0, custom=ts(fill=0), options=LEGEND,
            description="Tokens held in each slot's context, against the per-slot context size.",
            overrides=[{"matcher": {"id": "byRegexp", "options": ".*slot size"},
                        "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                                       {"id": "color", "value": {"mode": "fixed", "fixedColor": RED}}]}])
    b.panel("timeseries", "Slots busy",
            [q(f"sum by (cluster, host, target) (llamatelemetry_slot_processing{{{T}}})", "{{target}} busy now"),
             q(f'max by (cluster, host, target) ({{__name__=~"{BUSY_PER_DECODE}", {T}}})', "{{target}} avg busy per decode (since start)")],
            w=8, unit="short", min=0, custom=ts(fill=0), options=LEGEND,
            description="Slots processing now (from /slots) and llama-server's average busy slots per decode since start "
                        "(typed counter in some llama.cpp builds, gauge in others: the query matches both names).")
    b.panel("stat", "Prompt-cache reuse",
            [q(f"sum by (cluster, host, target) (rate(llamacpp_prompt_tokens_cached_total{{{T}}}[{RI}])) / (sum by (cluster, host, target) (rate(llamacpp_prompt_tokens_cached_total{{{T}}}[{RI}])) + sum by (cluster, host, target) (rate(llamacpp_prompt_tokens_total{{{T}}}[{RI}])))", "{{target}}")],
            w=8, unit="percentunit", min=0, max=1, steps=((ORANGE, None), (YELLOW, 0.3), (GREEN, 0.6)), options=STAT,
            description="Share of prompt tokens served from the slot's KV cache instead of being evaluated again (prompt_tokens_total excludes cached tokens). "
                        "llama.cpp builds older than prompt_tokens_cached_total show no data here.")
    b.row("Energy")
    b.panel("timeseries", "Energy per generated token",
            [q(f"target:llamatelemetry_joules_per_token:rate5m{{{T}}}", "{{target}} {{host}}")],
            w=8, unit="joule", min=0, custom=ts(fill=0), options=LEGEND,
            description="Joules the target's GPU share used per generated token over 5 minutes (recording rule "
                        "target:llamatelemetry_joules_per_token:rate5m; attribution explained in the README). Empty without an NVIDIA GPU.")
    b.panel("timeseries", "Energy per request",
            [q(f"target:llamatelemetry_joules_per_request:rate5m{{{T}}}", "{{target}} {{host}}")],
            w=8, unit="joule", min=0, custom=ts(fill=0), options=LEGEND,
            description="Joules per finished request over 5 minutes (recording rule target:llamatelemetry_joules_per_request:rate5m).")
    b.panel("stat", "Energy in range",
            [q(f"sum by (cluster, host, target) (increase(llamatelemetry_target_energy_joules_total{{{T}}}[$__range]))", "{{target}}", instant=True)],
            w=8, unit="joule", min=0, options={**STAT, "colorMode": "none"},
            description="Energy attributed to each llama-server over the dashboard's time range (llamatelemetry_target_energy_joules_total).")
    b.row("Internals")
    b.panel("timeseries", "Decode calls/s",
            [q(f"sum by (cluster, host, target) (rate(llamacpp_n_decode_total{{{T}}}[{RI}]))", "{{target}}")],
            w=8, unit="ops", min=0, custom=ts(), options=LEGEND,
            description="llama_decode() calls per second (one batch each).")
    b.panel("table", "Endpoints",
            [q(f"llamatelemetry_endpoint_available{{{T}}}", instant=True, table=True)],
            w=8, unit="none", options=TABLE, mappings=UP_MAPPINGS,
            description="Optional llama-server endpoints (/metrics, /slots, ...) found enabled by the exporter.",
            transformations=[{"id": "organize", "options": {
                "excludeByName": {"Time": True, "__name__": True, "job": True, "instance": True},
                "renameByName": {"Value": "available"}}}],
            overrides=[{"matcher": {"id": "byName", "options": "available"},
                        "properties": [{"id": "custom.cellOptions", "value": {"type": "color-background"}}]}],
            steps=((RED, None), (GREEN, 1)))
    b.panel("timeseries", "Exporter scrape duration",
            [q(f"max by (cluster, host, collector, target) (llamatelemetry_scrape_duration_seconds{{{H}}})", "{{collector}} {{target}}"),
             q(f"sum by (cluster, host, collector, target) (rate(llamatelemetry_scrape_errors_total{{{H}}}[{RI}]))", "{{collector}} {{target}} errors/s")],
            w=8, unit="s", min=0, custom=ts(fill=0), options=LEGEND,
            description="How long the exporter's collectors take per scrape, and their error rate.",
            overrides=[{"matcher": {"id": "byRegexp", "options": ".*errors/s"},
                        "properties": [{"id": "unit", "value": "ops"}, {"id": "custom.axisPlacement", "value": "right"}]}])
    return b


# ---------------------------------------------------------------------------------------------------- GPU
def gpu() -> Board:
    b = Board("llamatelemetry-gpu", "GPU",
              "NVIDIA GPU metrics (NVML) from the llamatelemetry sidecar exporter, with GPU memory per llama-server and per process.",
              [*fleet_vars(), query_var("gpu", "gpu", "llamatelemetry_gpu_info")],
              [dashboards_link()])
    b.row("Overview")
    b.panel("table", "GPUs", [q(f"llamatelemetry_gpu_info{{{G}}}", instant=True, table=True)], w=12, h=5, unit="none",
            options=TABLE, description="Name, driver and CUDA version of each GPU.",
            transformations=[{"id": "organize", "options": {
                "excludeByName": {"Time": True, "Value": True, "__name__": True, "job": True, "instance": True}}}])
    b.panel("stat", "GPU collection", [q(f'llamatelemetry_collector_up{{collector="gpu", {H}}}', "{{host}} {{instance}}")], w=4, h=5,
            unit="none", steps=((RED, None), (GREEN, 1)), mappings=UP_MAPPINGS, options={**STAT, "graphMode": "none"},
            description="0 when NVML cannot be initialised (no driver, no device access in the container).")
    b.panel("gauge", "Memory used", [q(f"llamatelemetry_gpu_memory_used_bytes{{{G}}} / llamatelemetry_gpu_memory_total_bytes{{{G}}}", "GPU {{gpu}}")],
            w=8, h=5, unit="percentunit", min=0, max=1, steps=((GREEN, None), (ORANGE, 0.9), (RED, 0.95)), options=GAUGE,
            description="llama-server allocates weights and KV cache up front, so high usage is expected; above 95% other allocations fail.")
    b.row("Load")
    b.panel("timeseries", "Utilisation",
            [q(f"llamatelemetry_gpu_utilization_ratio{{{G}}}", "GPU {{gpu}} compute"),
             q(f"llamatelemetry_gpu_memory_utilization_ratio{{{G}}}", "GPU {{gpu}} memory bandwidth")],
            w=12, unit="percentunit", min=0, max=1, custom=ts(), options=LEGEND,
            description="Share of time a kernel was running / device memory was being read or written (NVML).")
    b.panel("timeseries", "Memory",
            [q(f"llamatelemetry_gpu_memory_used_bytes{{{G}}}", "GPU {{gpu}} used"),
             q(f"llamatelemetry_gpu_memory_total_bytes{{{G}}}", "GPU {{gpu}} total")],
            w=12, unit="bytes", min=0, custom=ts(), options=LEGEND,
            description="Used and total device memory.",
            overrides=[{"matcher": {"id": "byRegexp", "options": ".*total"},
                        "properties": [{"id": "custom.fillOpacity", "value": 0},
                                       {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}]}])
    b.row("Power and thermals")
    b.panel("timeseries", "Power",
            [q(f"llamatelemetry_gpu_power_watts{{{G}}}", "GPU {{gpu}} draw"),
             q(f"llamatelemetry_gpu_power_limit_watts{{{G}}}", "GPU {{gpu}} limit")],
            w=8, unit="watt", min=0, custom=ts(), options=LEGEND, description="Board power draw against the enforced power limit.",
            overrides=[{"matcher": {"id": "byRegexp", "options": ".*limit"},
                        "properties": [{"id": "custom.fillOpacity", "value": 0},
                                       {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}]}])
    b.panel("stat", "Energy in range",
            [q(f"increase(llamatelemetry_gpu_energy_joules_total{{{G}}}[$__range])", "GPU {{gpu}}", instant=True)],
            w=4, unit="joule", min=0, options={**STAT, "colorMode": "none"},
            description="Energy used over the dashboard's time range (NVML total energy counter).")
    b.panel("timeseries", "Temperature",
            [q(f"llamatelemetry_gpu_temperature_celsius{{{G}}}", "GPU {{gpu}}")],
            w=6, unit="celsius", min=0, steps=((GREEN, None), (ORANGE, 80), (RED, 85)),
            custom={**ts(fill=0), "thresholdsStyle": {"mode": "line+area"}}, options=LEGEND,
            description="GPU core temperature; the GpuTemperatureHigh alert fires above 85°C for 5 minutes.")
    b.panel("timeseries", "Fan speed",
            [q(f"llamatelemetry_gpu_fan_speed_ratio{{{G}}}", "GPU {{gpu}}")],
            w=6, unit="percentunit", min=0, max=1, custom=ts(fill=0), options=LEGEND,
            description="Intended fan speed as a share of maximum (absent on passively cooled GPUs).")
    b.panel("timeseries", "Clocks",
            [q(f"llamatelemetry_gpu_sm_clock_hertz{{{G}}}", "GPU {{gpu}} SM"),
             q(f"llamatelemetry_gpu_memory_clock_hertz{{{G}}}", "GPU {{gpu}} memory")],
            w=12, unit="hertz", min=0, custom=ts(fill=0), options=LEGEND, description="Current SM and memory clocks.")
    b.panel("state-timeline", "Throttle reasons",
            [q(f"max by (cluster, host, gpu, reason) (llamatelemetry_gpu_throttle_reason{{{G}}})", "GPU {{gpu}} {{reason}}")],
            w=12, unit="none", steps=((GREEN, None), (RED, 1)),
            mappings=[{"type": "value", "options": {"0": {"text": "off", "color": "transparent", "index": 0},
                                                    "1": {"text": "active", "color": RED, "index": 1}}}],
            options={"showValue": "never", "mergeValues": True, "rowHeight": 0.8, "alignValue": "left",
                     "legend": {"displayMode": "list", "placement": "bottom", "showLegend": False}},
            description="Why clocks are reduced. Power cap under full load is normal; thermal and hardware slowdown are not.")
    b.row("Who uses the GPU")
    b.panel("bargauge", "GPU memory per llama-server",
            [q(f"sum by (cluster, host, gpu, target) (llamatelemetry_gpu_target_memory_used_bytes{{{G}}})", "GPU {{gpu}} {{target}}")],
            w=12, unit="bytes", min=0, options=BARGAUGE,
            description="Device memory held by each llama-server target (its process, matched by PID).")
    b.panel("table", "GPU memory per process",
            [q(f"llamatelemetry_gpu_process_memory_used_bytes{{{G}}}", instant=True, table=True)],
            w=12, unit="bytes", options={**TABLE, "sortBy": [{"displayName": "memory", "desc": True}]},
            description="Every compute process on the GPU (host PIDs) and its device memory.",
            transformations=[{"id": "organize", "options": {
                "excludeByName": {"Time": True, "__name__": True, "job": True, "instance": True},
                "renameByName": {"Value": "memory"}}}],
            overrides=[{"matcher": {"id": "byName", "options": "memory"},
                        "properties": [{"id": "custom.cellOptions", "value": {"type": "gauge", "mode": "basic"}}]}])
    b.panel("stat", "ECC errors in range",
            [q(f"sum by (cluster, host, gpu, type) (increase(llamatelemetry_gpu_ecc_errors_total{{{G}}}[$__range]))", "GPU {{gpu}} {{type}}", instant=True)],
            w=24, h=4, unit="short", min=0, steps=((GREEN, None), (RED, 1)), options={**STAT, "graphMode": "none"},
            description="Corrected and uncorrected ECC errors over the time range (absent on GPUs without ECC).")
    return b


# ----------------------------------------------------------------------------------------------- Requests
def requests() -> Board:
    sel = f'gen_ai_request_model=~"$model", gen_ai_operation_name=~"$operation", {H}'
    count = "gen_ai_client_operation_duration_seconds_count"
    variables = [*fleet_vars(), query_var("model", "gen_ai_request_model", "gen_ai_client_operation_duration_seconds_count"),
                 query_var("operation", "gen_ai_operation_name", "gen_ai_client_operation_duration_seconds_count"),
                 # Jaeger searches need one service: the trace links and the traces table use this one
                 {**query_var("service", "job", "gen_ai_client_operation_duration_seconds_count", multi=False),
                  "label": "service (traces)", "includeAll": False, "current": {}}]
    b = Board("llamatelemetry-requests", "Requests (client telemetry)",
              "OpenTelemetry GenAI client metrics from applications using the llamatelemetry client, via the OTel collector.",
              variables,
              [dashboards_link(), explore_link("Traces in Jaeger", SEARCH_LLAMA),
               explore_link("Failed calls in Jaeger", SEARCH_ERRORS)], min_interval=CLIENT_MIN_INTERVAL)
    trace_link = [{"title": "Traces of this period in Jaeger", "targetBlank": False,
                   "url": "/explore?schemaVersion=1&orgId=1&panes=" + quote(json.dumps({"t": {
                       "datasource": JAEGER_UID,
                       "queries": [{"refId": "A", "datasource": JAEGER, **SEARCH_LLAMA}],
                       "range": {"from": "${__from}", "to": "${__to}"}}}, separators=(",", ":")), safe="${}_")}]
    b.row("Overview")
    b.panel("stat", "Calls/s", [q(f"sum(rate({count}{{{sel}}}[{RI}]))", "calls/s")], w=6, h=5, unit="reqps", min=0,
            options={**STAT, "colorMode": "none"}, description="Client operations per second (all outcomes).")
    b.panel("stat", "Error ratio",
            [q(f'(sum(rate({count}{{{sel}, error_type!=""}}[{RI}])) or vector(0)) / sum(rate({count}{{{sel}}}[{RI}]))', "errors")],
            w=6, h=5, unit="percentunit", min=0, steps=((GREEN, None), (ORANGE, 0.01), (RED, 0.05)), options=STAT,
            description="Share of calls that failed (error.type set). The ClientErrorRateHigh alert fires above 5%.")
    b.panel("stat", "p95 latency",
            [q(f"histogram_quantile(0.95, sum by (le) (rate(gen_ai_client_operation_duration_seconds_bucket{{{sel}}}[{RI}])))", "p95")],
            w=6, h=5, unit="s", min=0, steps=((GREEN, None), (ORANGE, 10), (RED, 30)), options=STAT,
            description="95th percentile of the whole operation's duration.")
    b.panel("stat", "Reasoning-budget exhaustions",
            [q(f'sum(increase(llamatelemetry_reasoning_budget_exhausted_total{{gen_ai_request_model=~"$model", {H}}}[$__range]))', "exhausted", instant=True)],
            w=6, h=5, unit="short", min=0, steps=((GREEN, None), (ORANGE, 1)), options=STAT,
            description="Calls over the time range whose max_tokens ran out while the model was still reasoning (no answer).")
    b.row("Latency")
    b.panel("timeseries", "Operation duration",
            [q(f"histogram_quantile({p}, sum by (le) (rate(gen_ai_client_operation_duration_seconds_bucket{{{sel}}}[{RI}])))",
               f"p{round(p * 100)}", exemplar=True) for p in (0.5, 0.9, 0.99)],
            w=12, unit="s", min=0, custom=ts(fill=0), options=LEGEND, links=trace_link,
            description="Percentiles of the client-side duration of each call. Exemplar dots open the trace in Jaeger.")
    b.panel("timeseries", "Time to first chunk (streaming)",
            [q(f"histogram_quantile({p}, sum by (le) (rate(gen_ai_client_operation_time_to_first_chunk_seconds_bucket{{{sel}}}[{RI}])))",
               f"p{round(p * 100)}", exemplar=True) for p in (0.5, 0.9, 0.99)],
            w=12, unit="s", min=0, custom=ts(fill=0), options=LEGEND, links=trace_link,
            description="Time from sending the request to the first streamed chunk: queueing plus prompt processing.")
    b.panel("timeseries", "p95 duration by model",
            [q(f"histogram_quantile(0.95, sum by (le, gen_ai_request_model) (rate(gen_ai_client_operation_duration_seconds_bucket{{{sel}}}[{RI}])))",
               "{{gen_ai_request_model}}")],
            w=12, unit="s", min=0, custom=ts(fill=0), options=LEGEND, links=trace_link,
            description="95th percentile duration per requested model.")
    b.panel("timeseries", "Time per output chunk",
            [q(f"histogram_quantile({p}, sum by (le) (rate(gen_ai_client_operation_time_per_output_chunk_seconds_bucket{{{sel}}}[{RI}])))",
               f"p{round(p * 100)}") for p in (0.5, 0.9)],
            w=12, unit="s", min=0, custom=ts(fill=0), options=LEGEND,
            description="Time between streamed chunks after the first: the generation speed a streaming user sees.")
    b.row("Tokens")
    b.panel("timeseries", "Tokens per call (average)",
            [q(f"sum by (gen_ai_token_type) (rate(gen_ai_client_token_usage_sum{{{sel}}}[{RI}])) / sum by (gen_ai_token_type) (rate(gen_ai_client_token_usage_count{{{sel}}}[{RI}]))",
               "{{gen_ai_token_type}}")],
            w=8, unit="short", min=0, custom=ts(fill=0), options=LEGEND,
            description="Average input, output and reasoning tokens per call (output includes reasoning).")
    b.panel("bargauge", "Output tokens per call (p50 / p90 / p99)",
            [q(f'histogram_quantile({p}, sum by (le) (rate(gen_ai_client_token_usage_bucket{{{sel}, gen_ai_token_type="output"}}[{RI}])))',
               f"p{round(p * 100)}") for p in (0.5, 0.9, 0.99)],
            w=8, unit="short", min=0, options=BARGAUGE,
            description="Distribution of output tokens per call.")
    b.panel("gauge", "Reasoning share of output",
            [q(f'sum(rate(gen_ai_client_token_usage_sum{{{sel}, gen_ai_token_type="reasoning"}}[{RI}])) / sum(rate(gen_ai_client_token_usage_sum{{{sel}, gen_ai_token_type="output"}}[{RI}]))',
               "reasoning share")],
            w=8, unit="percentunit", min=0, max=1, steps=((GREEN, None), (YELLOW, 0.7), (ORANGE, 0.9)), options=GAUGE,
            description="Share of output tokens spent reasoning (<think>) rather than answering.")
    b.panel("timeseries", "Token throughput by type",
            [q(f"sum by (gen_ai_token_type) (rate(gen_ai_client_token_usage_sum{{{sel}}}[{RI}]))", "{{gen_ai_token_type}}")],
            w=12, unit="suffix: tok/s", min=0, custom=ts(), options=LEGEND,
            description="Tokens per second across all calls, by token type.")
    b.panel("timeseries", "Reasoning-budget exhaustions/s",
            [q(f'sum by (gen_ai_request_model) (rate(llamatelemetry_reasoning_budget_exhausted_total{{gen_ai_request_model=~"$model", {H}}}[{RI}]))',
               "{{gen_ai_request_model}}")],
            w=12, unit="reqps", min=0, custom=ts(draw="bars", fill=60), options=LEGEND,
            description="Calls whose max_tokens ran out during reasoning. Alert: ReasoningBudgetExhaustionRateHigh (over 10% of calls).")
    b.row("Errors and traces")
    b.panel("timeseries", "Errors by error.type",
            [q(f'sum by (error_type) (rate({count}{{{sel}, error_type!=""}}[{RI}]))', "{{error_type}}")],
            w=12, unit="reqps", min=0, custom=ts(stack=True, draw="bars", fill=80), options=LEGEND,
            links=[{"title": "Failed calls in Jaeger", "url": explore_link("", SEARCH_ERRORS)["url"], "targetBlank": False}],
            description="Failed calls per second by error.type (HTTP status or exception class).")
    b.panel("table", "Recent llama.cpp traces",
            [{"refId": "A", "datasource": JAEGER, **SEARCH_LLAMA, "limit": 20}],
            w=12, unit="none", datasource=JAEGER, options=TABLE,
            description="Latest llama.cpp client traces of the chosen service in Jaeger; click a trace id to open it.")
    return b


# ------------------------------------------------------------------------------------------ Proxy (clients)
def proxy() -> Board:
    """Every agent tool behind `llamatelemetry proxy`, from the proxy's admin /metrics (job llamatelemetry-proxy)."""
    c = f'llamatelemetry_client_name=~"$client", llamatelemetry_client_name!="", {H}'
    variables = [*fleet_vars(), query_var("client", "llamatelemetry_client_name", "llamatelemetry_proxy_requests_total")]
    b = Board("llamatelemetry-proxy", "Clients (proxy)",
              "Per-client latency, tokens, empty answers and errors of the traffic through llamatelemetry proxy "
              "(Claude Code, aider, Continue, SDKs, curl), from the proxy's admin /metrics.",
              variables, [dashboards_link(), explore_link("Gateway traces in Jaeger", SEARCH_GATEWAY)], min_interval=CLIENT_MIN_INTERVAL)
    b.row("Traffic")
    b.panel("timeseries", "Requests/s per endpoint",
            [q(f"sum by (http_route) (rate(llamatelemetry_proxy_requests_total{{{c}}}[{RI}]))", "{{http_route}}")],
            w=12, unit="reqps", min=0, custom=ts(stack=True), options=LEGEND,
            description="Every request the proxy forwarded, inference or not, by endpoint path.")
    b.panel("timeseries", "Requests/s per client and status",
            [q(f"sum by (llamatelemetry_client_name, http_response_status_code) (rate(llamatelemetry_proxy_requests_total{{{c}}}[{RI}]))",
               "{{llamatelemetry_client_name}} {{http_response_status_code}}")],
            w=12, unit="reqps", min=0, custom=ts(stack=True), options=LEGEND,
            description="Forwarded requests per client tool and HTTP status.")
    b.row("Latency per client")
    b.panel("timeseries", "Time to first token (p50 / p95)",
            [q(f"histogram_quantile({p}, sum by (le, llamatelemetry_client_name) (rate(gen_ai_server_time_to_first_token_seconds_bucket{{{c}}}[{RI}])))",
               f"{{{{llamatelemetry_client_name}}}} p{round(p * 100)}") for p in (0.5, 0.95)],
            w=12, unit="s", min=0, custom=ts(fill=0), options=LEGEND,
            description="gen_ai.server.time_to_first_token per client: queueing plus prompt processing, measured at the proxy.")
    b.panel("timeseries", "Request duration (p95)",
            [q(f"histogram_quantile(0.95, sum by (le, llamatelemetry_client_name) (rate(gen_ai_server_request_duration_seconds_bucket{{{c}}}[{RI}])))",
               "{{llamatelemetry_client_name}}")],
            w=12, unit="s", min=0, custom=ts(fill=0), options=LEGEND,
            description="gen_ai.server.request.duration per client, whole request including streaming.")
    b.row("Tokens and empty answers per client")
    b.panel("timeseries", "Tokens/s per client",
            [q(f"sum by (llamatelemetry_client_name, gen_ai_token_type) (rate(gen_ai_client_token_usage_sum{{{c}}}[{RI}]))",
               "{{llamatelemetry_client_name}} {{gen_ai_token_type}}")],
            w=12, unit="suffix: tok/s", min=0, custom=ts(), options=LEGEND,
            description="Input, output and reasoning tokens per second of each client (exact counts from llama-server's usage/timings).")
    b.panel("stat", "Empty answers in range",
            [q(f"sum by (llamatelemetry_client_name) (increase(llamatelemetry_reasoning_budget_exhausted_total{{{c}}}[$__range]))",
               "{{llamatelemetry_client_name}}", instant=True)],
            w=6, unit="short", min=0, steps=((GREEN, None), (ORANGE, 1)), options={**STAT, "graphMode": "none"},
            description="Requests per client whose max_tokens ran out during reasoning (no answer) over the time range.")
    b.panel("stat", "Empty-answer share",
            [q(f"sum by (llamatelemetry_client_name) (rate(llamatelemetry_reasoning_budget_exhausted_total{{{c}}}[{RI}])) "
               f"/ sum by (llamatelemetry_client_name) (rate(gen_ai_server_request_duration_seconds_count{{{c}}}[{RI}]))",
               "{{llamatelemetry_client_name}}")],
            w=6, unit="percentunit", min=0, steps=((GREEN, None), (ORANGE, 0.05), (RED, 0.1)), options=STAT,
            description="Share of each client's inference requests that ended with an empty answer.")
    b.row("Errors per client")
    b.panel("timeseries", "Failed requests/s by error.type",
            [q(f'sum by (llamatelemetry_client_name, error_type) (rate(gen_ai_server_request_duration_seconds_count{{{c}, error_type!=""}}[{RI}]))',
               "{{llamatelemetry_client_name}} {{error_type}}")],
            w=24, unit="reqps", min=0, custom=ts(stack=True, draw="bars", fill=80), options=LEGEND,
            description="Requests llama-server rejected (e.g. context overflow 400) or that failed upstream, per client.")
    agent_panels(b, c)
    return b


# ------------------------------------------------------------------------------------ Models (router mode)
#: State codes of the state timeline: one number per state so one series per model can show them all.
MODEL_STATE_CODES = (("unloaded", 0, "#808080"), ("sleeping", 1, BLUE), ("loading", 2, YELLOW), ("loaded", 3, GREEN),
                     ("failed", 4, RED))


def models() -> Board:
    """A llama-server router's models: which was loaded when, swaps, load times, and the cold starts clients waited for.

    Exporter series (``llamatelemetry_model_*``, job llamatelemetry) and the gateway's cold-start histogram
    (``llamatelemetry_model_load_wait_seconds``, job llamatelemetry-proxy).
    """
    m = f'target=~"$target", model=~"$model", {H}'
    gw = f'gen_ai_request_model=~"$model", {H}'
    variables = [*fleet_vars(), query_var("target", "target", "llamatelemetry_model_state"),
                 query_var("model", "model", "llamatelemetry_model_state")]
    b = Board("llamatelemetry-models", "Models (router)",
              "llama-server router mode (--models-dir / --models-preset): per-model state, swaps, load durations and "
              "failures from the exporter, and how long requests through the gateway waited for their model to load.",
              variables, [dashboards_link(), explore_link("Cold starts in Jaeger", SEARCH_COLD_STARTS)])
    code = " + ".join(f'sum by (cluster, host, target, model) (llamatelemetry_model_state{{{m}, state="{name}"}}) * {value}'
                      for name, value, _ in MODEL_STATE_CODES if value)
    b.row("Which model was loaded when")
    b.panel("state-timeline", "Model state", [q(code, "{{target}} {{model}}")], w=24, h=8, unit="none",
            description="Each model's state on the router over time: loaded, loading, sleeping, unloaded or failed "
                        "(llamatelemetry_model_state). Under --models-max a swap shows as one model turning grey as another turns green.",
            mappings=[{"type": "value", "options": {str(value): {"text": name, "color": color, "index": value}
                                                    for name, value, color in MODEL_STATE_CODES}}],
            options={"showValue": "never", "mergeValues": True, "rowHeight": 0.8, "alignValue": "left",
                     "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}})
    b.row("Swaps and loads")
    b.panel("timeseries", "Loads per 10 minutes",
            [q(f"sum by (cluster, host, target, model) (increase(llamatelemetry_model_loads_total{{{m}}}[10m]))", "{{target}} {{model}}")],
            w=8, unit="short", min=0, custom=ts(), options=LEGEND, steps=((GREEN, None), (ORANGE, 6)),
            description="Loads started by the router per model over the last 10 minutes (llamatelemetry_model_loads_total, counted "
                        "from its /models/sse events, so a swap between two scrapes still counts). Many loads of the same models: thrashing.")
    b.panel("timeseries", "Load duration (p50 / p95)",
            [q(f"histogram_quantile({p}, sum by (cluster, host, target, model, le) (rate(llamatelemetry_model_load_duration_seconds_bucket{{{m}}}[{RI}])))",
               f"{{{{target}}}} {{{{model}}}} p{round(p * 100)}") for p in (0.5, 0.95)],
            w=8, unit="s", min=0, custom=ts(fill=0), options=LEGEND,
            description="Time from the router reporting a model loading to loaded (llamatelemetry_model_load_duration_seconds).")
    b.panel("stat", "Loads, unloads and failed loads in range",
            [q(f"sum by (cluster, host, target, model) (increase(llamatelemetry_model_loads_total{{{m}}}[$__range]))", "{{model}} loads", instant=True),
             q(f"sum by (cluster, host, target, model) (increase(llamatelemetry_model_unloads_total{{{m}}}[$__range]))", "{{model}} unloads", instant=True),
             q(f"sum by (cluster, host, target, model) (increase(llamatelemetry_model_load_failures_total{{{m}}}[$__range]))", "{{model}} failed", instant=True)],
            w=8, unit="short", min=0, options={**STAT, "graphMode": "none", "colorMode": "none"},
            description="Per model over the time range: loads, unloads (unload request, LRU eviction or crash) and loads that ended with the process exiting.",
            overrides=[{"matcher": {"id": "byRegexp", "options": ".*failed"},
                        "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": RED}},
                                       {"id": "custom.cellOptions", "value": {"type": "color-background"}}]}])
    b.row("Cold starts (gateway)")
    b.panel("timeseries", "Cold-start wait per client (p95)",
            [q(f"histogram_quantile(0.95, sum by (le, gen_ai_request_model, llamatelemetry_client_name) (rate(llamatelemetry_model_load_wait_seconds_bucket{{{gw}}}[{RI}])))",
               "{{llamatelemetry_client_name}} → {{gen_ai_request_model}}")],
            w=12, unit="s", min=0, custom=ts(fill=0), options=LEGEND,
            description="How long requests through the gateway waited for their model to load or wake, per client and model "
                        "(llamatelemetry_model_load_wait_seconds; the span has llamatelemetry.model.cold_start=true and the wait).")
    b.panel("bargauge", "Cold starts per client in range",
            [q(f"sum by (llamatelemetry_client_name, gen_ai_request_model) (increase(llamatelemetry_model_load_wait_seconds_count{{{gw}}}[$__range]))",
               "{{llamatelemetry_client_name}} → {{gen_ai_request_model}}", instant=True)],
            w=12, unit="short", min=0, options=BARGAUGE, steps=((GREEN, None), (ORANGE, 10)),
            description="Requests per client and model that found their model not loaded over the time range.")
    return b


#: The OTel SDK's Prometheus exporter names a unit-"1" histogram without a suffix, the collector's with `_ratio`.
CONTEXT_UTILIZATION = "llamatelemetry_context_utilization(_ratio)?_bucket"


def agent_panels(b: Board, c: str) -> None:
    """What agents run into on a shared server: queueing, context, tool calls, prompt cache, drafts, energy."""
    by = "llamatelemetry_client_name, gen_ai_request_model"
    legend = "{{llamatelemetry_client_name}} {{gen_ai_request_model}}"
    b.row("Agents: queueing, context, tool calls")
    b.panel("timeseries", "Queue wait (p50 / p95)",
            [q(f"histogram_quantile({p}, sum by (le, {by}) (rate(llamatelemetry_request_queue_wait_seconds_bucket{{{c}}}[{RI}])))",
               f"{legend} p{round(p * 100)}") for p in (0.5, 0.95)],
            w=12, unit="s", min=0, custom=ts(fill=0), options=LEGEND,
            description="Time each request spent outside a llama-server slot (waiting for a free slot, plus a few ms of "
                        "fixed overhead): wall time minus the server's prompt + generation time.")
    b.panel("timeseries", "Context utilisation (p95)",
            [q(f'histogram_quantile(0.95, sum by (le, {by}) (rate({{__name__=~"{CONTEXT_UTILIZATION}", {c}}}[{RI}])))', legend)],
            w=12, unit="percentunit", min=0, max=1, steps=((GREEN, None), (ORANGE, 0.8), (RED, 0.95)), custom=ts(fill=0),
            options=LEGEND, description="Prompt tokens / the slot's n_ctx per request: a line creeping to 100% is a "
                                        "conversation about to overflow.")
    b.panel("stat", "Context overflows in range",
            [q(f"sum by ({by}) (increase(llamatelemetry_context_overflows_total{{{c}}}[$__range]))", legend, instant=True)],
            w=6, unit="short", min=0, steps=((GREEN, None), (RED, 1)), options={**STAT, "graphMode": "none"},
            description="Prompts llama-server refused with exceed_context_size_error (400), per client and model.")
    b.panel("timeseries", "Tool calls/s and malformed",
            [q(f"sum by (llamatelemetry_client_name) (rate(llamatelemetry_tool_calls_total{{{c}}}[{RI}]))",
               "{{llamatelemetry_client_name}} calls"),
             q(f"sum by (llamatelemetry_client_name, llamatelemetry_tool_call_malformed_reason) "
               f"(rate(llamatelemetry_tool_calls_malformed_total{{{c}}}[{RI}]))",
               "{{llamatelemetry_client_name}} malformed: {{llamatelemetry_tool_call_malformed_reason}}")],
            w=10, unit="ops", min=0, custom=ts(), options=LEGEND,
            description="Tool calls per second, and malformed ones by reason: invalid JSON arguments, finish reason "
                        "tool_calls without a call, or llama-server's parser rejecting the output (500).")
    b.panel("stat", "Prompt-cache hit ratio",
            [q(f"sum by ({by}) (rate(llamatelemetry_prompt_cached_tokens_total{{{c}}}[{RI}])) / "
               f"(sum by ({by}) (rate(llamatelemetry_prompt_tokens_total{{{c}}}[{RI}])) > 0)", legend)],
            w=8, unit="percentunit", min=0, max=1, steps=((RED, None), (ORANGE, 0.5), (GREEN, 0.8)), options=STAT,
            description="Share of prompt tokens llama-server reused from its prompt cache, per client and model: a "
                        "low ratio is an agent re-reading its whole context each turn (recording rule "
                        "client_model:llamatelemetry_prompt_cache_hit_ratio:rate5m).")
    b.row("Agents: speculative decoding and energy")
    b.panel("timeseries", "Speculative acceptance ratio",
            [q(f"sum by (gen_ai_request_model) (rate(llamatelemetry_speculative_accepted_tokens_total{{{c}}}[{RI}])) / "
               f"(sum by (gen_ai_request_model) (rate(llamatelemetry_speculative_draft_tokens_total{{{c}}}[{RI}])) > 0)",
               "{{gen_ai_request_model}}")],
            w=8, unit="percentunit", min=0, max=1, custom=ts(fill=0), options=LEGEND,
            description="Drafted tokens the target model accepted (llama-server's draft_n_accepted / draft_n), per model.")
    b.panel("timeseries", "Power per client (W)",
            [q(f'sum by (llamatelemetry_client_name) (client:llamatelemetry_joules:rate5m{{llamatelemetry_client_name=~"$client", {H}}})',
               "{{llamatelemetry_client_name}}")],
            w=8, unit="watt", min=0, custom=ts(stack=True), options=LEGEND,
            description="Joules per second spent on each client: its output tokens/s times the upstream's joules per "
                        "token (exporter, NVML). Needs the exporter's target named address:port.")
    b.panel("stat", "Energy per client in range",
            [q(f'sum by (llamatelemetry_client_name) (avg_over_time(client:llamatelemetry_joules:rate5m{{llamatelemetry_client_name=~"$client", {H}}}[$__range])) * $__range_s',
               "{{llamatelemetry_client_name}}", instant=True)],
            w=8, unit="joule", min=0, options={**STAT, "graphMode": "none"},
            description="Joules each client cost over the time range: its average power times the range's length.")


BOARDS = {"llama-server.json": llama_server, "gpu.json": gpu, "requests.json": requests, "proxy.json": proxy}
BOARDS["models.json"] = models  # router mode (issue 16)


def render() -> dict[str, str]:
    return {name: json.dumps(make().to_json(), indent=2, ensure_ascii=False) + "\n" for name, make in BOARDS.items()}


def main() -> int:
    for name, text in render().items():
        (HERE / name).write_text(text, encoding="utf-8")
        print(f"wrote {HERE / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
