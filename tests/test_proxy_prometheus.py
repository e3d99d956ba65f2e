"""A real Prometheus scrapes the gateway's admin /metrics and answers the per-client panel queries.

These are the queries handed to the dashboards (see /work/coord/proxy.md and docs/proxy.md):
each must return one finite series per client that sent traffic.
"""

from __future__ import annotations

import math

import httpx
import openai
import pytest

from prom_helpers import start_prometheus
from proxy_helpers import running_gateway

HI = [{"role": "user", "content": "Say hello."}]
W = "[1m]"  # dashboards use [$__rate_interval]; the test's scrape interval is 1s

PANEL_QUERIES = {
    "TTFT p95 per client": f"histogram_quantile(0.95, sum by (le, llamatelemetry_client_name) (rate(gen_ai_server_time_to_first_token_seconds_bucket{W})))",
    "TTFT p50 per client": f"histogram_quantile(0.50, sum by (le, llamatelemetry_client_name) (rate(gen_ai_server_time_to_first_token_seconds_bucket{W})))",
    "output tokens/s per client": f"sum by (llamatelemetry_client_name) (rate(gen_ai_client_token_usage_sum{{gen_ai_token_type=\"output\"}}{W}))",
    "empty answers per client": f"sum by (llamatelemetry_client_name) (increase(llamatelemetry_reasoning_budget_exhausted_total{W}))",
    "request rate per endpoint": f"sum by (http_route) (rate(llamatelemetry_proxy_requests_total{W}))",
    "errors per client": f"sum by (llamatelemetry_client_name, error_type) (rate(llamatelemetry_proxy_requests_total{{error_type!=\"\"}}{W}))",
}


def _traffic(url: str) -> None:
    sdk = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    list(sdk.chat.completions.create(model="scripted", messages=HI, max_tokens=64, stream=True))
    aider = {"x-client-name": "aider"}
    for max_tokens in (64, 8):  # the second runs out of budget while thinking: an empty answer
        with httpx.stream("POST", url + "/v1/chat/completions", headers=aider,
                          json={"messages": HI, "max_tokens": max_tokens, "stream": True}) as resp:
            resp.read()
    httpx.post(url + "/v1/chat/completions", headers=aider, json={"messages": [{"role": "user", "content": "hi " * 3000}]})
    httpx.get(url + "/health", headers=aider)


def _finite(result: list[dict]) -> bool:
    return bool(result) and all(not math.isnan(float(r["value"][1])) and float(r["value"][1]) > 0 for r in result)


@pytest.fixture(scope="module")
def scraped(full_server):
    with running_gateway(full_server.base_url) as gw:
        admin = gw.admin_url.removeprefix("http://")
        with start_prometheus({"proxy": [admin]}) as prom:
            _traffic(gw.url)
            gw.wait_for_recent(5)
            prom.wait_for("llamatelemetry_proxy_requests_total")  # series exist: the next batch shows as a rate
            _traffic(gw.url)
            yield prom


@pytest.mark.parametrize("title", sorted(PANEL_QUERIES))
def test_panel_query_per_client(scraped, title):
    result = scraped.wait_for(PANEL_QUERIES[title], _finite, timeout=30)
    labels = [r["metric"] for r in result]
    if title == "request rate per endpoint":
        assert {m["http_route"] for m in labels} >= {"/v1/chat/completions", "/health"}
    elif title == "empty answers per client":
        assert [m["llamatelemetry_client_name"] for m in labels] == ["aider"]
    elif title == "errors per client":
        assert {(m["llamatelemetry_client_name"], m["error_type"]) for m in labels} == {("aider", "exceed_context_size_error")}
    else:
        assert {m["llamatelemetry_client_name"] for m in labels} == {"openai-python", "aider"}
