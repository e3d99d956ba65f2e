"""Semantic-convention versions: v1.41 names by default, the GenAI repository's newer ones on opt-in."""

from __future__ import annotations

import pytest

from llamatelemetry import LlamaCppClient
from llamatelemetry.provision.model import REASONING_TOKENS, THINKING_COMPLETION_TOKENS
from llamatelemetry.telemetry import semconv as sc

from telemetry_helpers import Telemetry

HI = [{"role": "user", "content": "hi"}]


def _names(tel: Telemetry) -> set[str]:
    data = tel.reader.get_metrics_data()
    return {m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}


def _counter_sum(tel: Telemetry, name: str, **attrs) -> int:
    return sum(p.value for p in tel.points(name) if all(p.attributes.get(k) == v for k, v in attrs.items()))


@pytest.mark.parametrize("value,expected", [
    ("", False), ("http", False), ("gen_ai_latest_experimental", True), ("http, gen_ai_latest_experimental", True),
    ("gen_ai_latest_experimental_x", False),
])
def test_opt_in_switch(value, expected):
    assert sc.latest_experimental({sc.STABILITY_OPT_IN_ENV: value}) is expected


def test_default_is_v1_41(full_server, monkeypatch):
    monkeypatch.delenv(sc.STABILITY_OPT_IN_ENV, raising=False)
    tel = Telemetry()
    with LlamaCppClient(full_server.base_url, **tel.providers) as c:
        c.chat_completion(messages=HI, max_tokens=64)
    names = _names(tel)
    assert sc.METRIC_TOKEN_USAGE in names and sc.METRIC_OPERATION_DURATION in names
    assert not any(n.startswith("gen_ai.client.inference.") for n in names)


def test_latest_experimental_emits_the_newer_token_metrics(full_server, monkeypatch):
    monkeypatch.setenv(sc.STABILITY_OPT_IN_ENV, "http,gen_ai_latest_experimental")
    tel = Telemetry()
    with LlamaCppClient(full_server.base_url, **tel.providers) as c:
        resp = c.chat_completion(messages=HI, max_tokens=64)
    names = _names(tel)
    assert sc.METRIC_TOKEN_USAGE not in names
    assert sc.METRIC_OPERATION_DURATION in names  # the duration kept its name
    text = {sc.TOKEN_MODALITY: sc.TOKEN_MODALITY_TEXT}
    assert _counter_sum(tel, sc.METRIC_INFERENCE_USAGE_INPUT_TOKENS, **text) == resp.usage.prompt_tokens
    assert _counter_sum(tel, sc.METRIC_INFERENCE_USAGE_OUTPUT_TOKENS, **text) == THINKING_COMPLETION_TOKENS
    assert _counter_sum(tel, sc.METRIC_INFERENCE_USAGE_REASONING_OUTPUT_TOKENS, **text) == REASONING_TOKENS
    assert _counter_sum(tel, sc.METRIC_INFERENCE_USAGE_CACHE_READ_INPUT_TOKENS) == resp.usage.prompt_tokens_details.cached_tokens
    assert tel.histogram_sum(sc.METRIC_INFERENCE_OPERATION_OUTPUT_TOKENS) == THINKING_COMPLETION_TOKENS
    assert tel.histogram_sum(sc.METRIC_INFERENCE_OPERATION_INPUT_TOKENS) == resp.usage.prompt_tokens
    # the span keeps its attribute names
    assert tel.only_span().attributes[sc.USAGE_REASONING_OUTPUT_TOKENS] == REASONING_TOKENS


def test_latest_experimental_records_failed_operations_with_zero_unknown_usage(full_server, monkeypatch):
    from llamatelemetry import errors

    monkeypatch.setenv(sc.STABILITY_OPT_IN_ENV, "gen_ai_latest_experimental")
    tel = Telemetry()
    with LlamaCppClient(full_server.base_url, **tel.providers) as c:
        with pytest.raises(errors.BadRequestError):
            c.chat_completion(messages=HI, max_tokens=-5, extra_body={"n_probs": "x"})
    unknown = {sc.TOKEN_MODALITY: sc.TOKEN_MODALITY_UNKNOWN}
    (point,) = [p for p in tel.points(sc.METRIC_INFERENCE_USAGE_INPUT_TOKENS) if p.attributes.get(sc.TOKEN_MODALITY) == "unknown"]
    assert point.value == 0 and sc.ERROR_TYPE not in point.attributes
    assert _counter_sum(tel, sc.METRIC_INFERENCE_USAGE_OUTPUT_TOKENS, **unknown) == 0
    assert tel.histogram_count(sc.METRIC_INFERENCE_OPERATION_INPUT_TOKENS, **{sc.ERROR_TYPE: "400"}) == 1
    assert not tel.points(sc.METRIC_INFERENCE_USAGE_REASONING_OUTPUT_TOKENS), "an unknown reasoning count is not a 0"
