"""The gateway in front of a real llama-server *router* (``--models-dir``, three scripted models, ``--models-max 1``).

What it proves (issue 16, Gateway): the routed model on every span; a request that had to wait
for its model to load (or wake) is marked ``llamatelemetry.model.cold_start`` with its wait, and
counted in ``llamatelemetry.model.load_wait`` per model and client — the next request is not; the
router's own errors reach OpenAI and Anthropic clients in their shapes, with distinct ``error.type``.
"""

from __future__ import annotations

import json
import time

import anthropic
import httpx
import openai
import pytest

from llamatelemetry.provision.model import REASONING_TOKENS
from llamatelemetry.telemetry import semconv as sc
from proxy_helpers import ProxyUnderTest, running_gateway
from waiting import wait_for

HI = [{"role": "user", "content": "Say hello."}]
MODELS = ("alpha", "beta", "gamma")



def status_of(base_url: str, model: str) -> str:
    data = httpx.get(base_url + "/models", timeout=10).json()["data"]
    return next(m["status"]["value"] for m in data if m["id"] == model)


@pytest.fixture(scope="module")
def router(router_factory):
    # --sleep-idle-seconds 3: long enough that back-to-back requests find the model awake on a loaded
    # machine, short enough that the sleeping test does not wait long.
    return router_factory(MODELS, broken=["bad"], models_max=1, sleep_idle_seconds=3)


@pytest.fixture(scope="module")
def proxy(router):
    with running_gateway(router.base_url) as gw:
        yield gw


@pytest.fixture()
def fresh(proxy: ProxyUnderTest) -> ProxyUnderTest:
    proxy.exporter.clear()
    return proxy


def _oai(proxy: ProxyUnderTest, name: str = "agent-a") -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-x", max_retries=0, timeout=120,
                         default_headers={"X-Client-Name": name})


def _anth(proxy: ProxyUnderTest) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url, api_key="sk-x", max_retries=0, timeout=120)


def _last_span(proxy: ProxyUnderTest, count: int):
    return proxy.wait_for_spans(count)[count - 1]


def _load_wait_counts(proxy: ProxyUnderTest) -> dict[tuple[str, str], float]:
    """(model, client) -> count of llamatelemetry_model_load_wait_seconds, read from the admin /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(proxy.admin_url + "/metrics", timeout=10).text
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "llamatelemetry_model_load_wait_seconds_count":
                key = (sample.labels["gen_ai_request_model"], sample.labels["llamatelemetry_client_name"])
                found[key] = found.get(key, 0) + sample.value
    return found


def test_cold_start_marked_once_then_not_and_swap_marks_again(fresh: ProxyUnderTest, router) -> None:
    oai = _oai(fresh)
    assert status_of(router.base_url, "alpha") != "loaded"
    resp = oai.chat.completions.create(model="alpha", messages=HI, max_tokens=64)
    cold = _last_span(fresh, 1)
    a = cold.attributes
    assert a[sc.REQUEST_MODEL] == "alpha" and a[sc.RESPONSE_MODEL] == resp.model
    # the reasoning count (a /tokenize the gateway sends) works through the router: it names the model
    assert a[sc.USAGE_REASONING_OUTPUT_TOKENS] == REASONING_TOKENS
    assert a[sc.MODEL_COLD_START] is True and a[sc.MODEL_STATE_BEFORE] in ("unloaded", "failed")
    # the wait is the load (a scripted model: well under a minute, more than nothing) ...
    assert 0 < a[sc.MODEL_LOAD_WAIT] < 60
    assert a[sc.MODEL_LOAD_WAIT] <= (cold.end_time - cold.start_time) / 1e9
    # ... ending when the router said "loaded" on its event stream, not when the answer came
    view = fresh.gateway.observer.routers.view(router.base_url)
    loaded_at = view.watcher.snapshot()["alpha"].since
    assert abs(cold.start_time / 1e9 + a[sc.MODEL_LOAD_WAIT] - loaded_at) < 0.01

    oai.chat.completions.create(model="alpha", messages=HI, max_tokens=8)
    warm = _last_span(fresh, 2).attributes
    assert warm[sc.REQUEST_MODEL] == "alpha"
    assert sc.MODEL_COLD_START not in warm and sc.MODEL_LOAD_WAIT not in warm

    # --models-max 1: beta evicts alpha; the next alpha request loads it again, and is marked again
    stream = oai.chat.completions.create(model="beta", messages=HI, max_tokens=8, stream=True)
    assert len(list(stream)) > 1
    beta = _last_span(fresh, 3).attributes
    assert beta[sc.REQUEST_MODEL] == "beta" and beta[sc.MODEL_COLD_START] is True and beta[sc.MODEL_LOAD_WAIT] > 0
    wait_for(lambda: status_of(router.base_url, "alpha") == "unloaded", what="alpha evicted")
    _oai(fresh, "agent-b").chat.completions.create(model="alpha", messages=HI, max_tokens=8)
    again = _last_span(fresh, 4).attributes
    assert again[sc.MODEL_COLD_START] is True and again[sc.MODEL_STATE_BEFORE] == "unloaded"

    counts = _load_wait_counts(fresh)
    assert counts.get(("alpha", "agent-a")) == 1 and counts.get(("beta", "agent-a")) == 1
    assert counts.get(("alpha", "agent-b")) == 1


def test_sleeping_model_wakes_as_a_cold_start(fresh: ProxyUnderTest, router) -> None:
    oai = _oai(fresh, "sleeper")
    oai.chat.completions.create(model="gamma", messages=HI, max_tokens=8)
    wait_for(lambda: status_of(router.base_url, "gamma") == "sleeping", what="gamma asleep")
    oai.chat.completions.create(model="gamma", messages=HI, max_tokens=8)
    woke = _last_span(fresh, 2).attributes
    assert woke[sc.MODEL_COLD_START] is True and woke[sc.MODEL_STATE_BEFORE] == "sleeping"
    assert woke[sc.MODEL_LOAD_WAIT] >= 0
    oai.chat.completions.create(model="gamma", messages=HI, max_tokens=8)
    assert sc.MODEL_COLD_START not in _last_span(fresh, 3).attributes


def test_router_errors_in_openai_dialect_with_distinct_error_types(fresh: ProxyUnderTest) -> None:
    oai = _oai(fresh)
    with pytest.raises(openai.BadRequestError) as unknown:
        oai.chat.completions.create(model="nope", messages=HI, max_tokens=8)
    assert unknown.value.body["message"] == "model 'nope' not found"
    assert _last_span(fresh, 1).attributes[sc.ERROR_TYPE] == sc.ERROR_TYPE_MODEL_NOT_FOUND

    with pytest.raises(openai.InternalServerError) as failed:
        oai.chat.completions.create(model="bad", messages=HI, max_tokens=8)
    assert "failed to load" in failed.value.body["message"]
    span = _last_span(fresh, 2).attributes
    assert span[sc.ERROR_TYPE] == sc.ERROR_TYPE_MODEL_LOAD_FAILED and span[sc.MODEL_COLD_START] is True

    # ?autoload=false (per request) on a model that is not running: the router refuses to load it
    loaded = {m["id"] for m in httpx.get(fresh.url + "/models", timeout=10).json()["data"] if m["status"]["value"] == "loaded"}
    idle = next(m for m in MODELS if m not in loaded)
    with pytest.raises(openai.BadRequestError) as not_loaded:
        oai.chat.completions.create(model=idle, messages=HI, max_tokens=8, extra_query={"autoload": "false"})
    assert not_loaded.value.body["message"] == "model is not loaded"
    assert _last_span(fresh, 3).attributes[sc.ERROR_TYPE] == sc.ERROR_TYPE_MODEL_NOT_LOADED


def test_router_errors_in_anthropic_dialect(fresh: ProxyUnderTest) -> None:
    anth = _anth(fresh)
    with pytest.raises(anthropic.BadRequestError) as unknown:
        anth.messages.create(model="nope", max_tokens=8, messages=HI)
    # the Anthropic shape, the router's words kept
    assert unknown.value.body == {"type": "error", "error": {"type": "invalid_request_error", "message": "model 'nope' not found"}}
    assert _last_span(fresh, 1).attributes[sc.ERROR_TYPE] == sc.ERROR_TYPE_MODEL_NOT_FOUND

    with pytest.raises(anthropic.InternalServerError) as failed:
        anth.messages.create(model="bad", max_tokens=8, messages=HI, stream=True)
    assert failed.value.body["type"] == "error" and failed.value.body["error"]["type"] == "api_error"
    assert _last_span(fresh, 2).attributes[sc.ERROR_TYPE] == sc.ERROR_TYPE_MODEL_LOAD_FAILED

    # the gateway's request counter carries the same error.type
    text = httpx.get(fresh.admin_url + "/metrics", timeout=10).text
    assert 'error_type="model_not_found"' in text and 'error_type="model_load_failed"' in text


def test_gateway_never_loads_a_model_itself(router_factory) -> None:
    """Detecting the router and following its models reads /props, /models and /models/sse only."""
    quiet = router_factory(["one", "two"], models_max=1)
    with running_gateway(quiet.base_url) as gw:
        with pytest.raises(openai.BadRequestError):
            _oai(gw).chat.completions.create(model="nope", messages=HI, max_tokens=8)  # detection runs here
        gw.wait_for_spans(1)
        time.sleep(1.0)
        assert {status_of(quiet.base_url, m) for m in ("one", "two")} == {"unloaded"}


def test_router_restart_is_followed_and_cold_starts_marked_again(router_factory) -> None:
    """A router restarted under the gateway: its watcher reconnects and resyncs; nothing stays stale."""
    restarting = router_factory(["one", "two"], models_max=1)
    with running_gateway(restarting.base_url) as gw:
        oai = _oai(gw)
        oai.chat.completions.create(model="one", messages=HI, max_tokens=8)
        oai.chat.completions.create(model="one", messages=HI, max_tokens=8)
        spans = gw.wait_for_spans(2)
        assert spans[0].attributes[sc.MODEL_COLD_START] is True and sc.MODEL_COLD_START not in spans[1].attributes
        assert gw.gateway is not None and gw.gateway.observer is not None
        watcher = gw.gateway.observer.routers.view(restarting.base_url).watcher
        syncs = watcher.syncs
        restarting.restart()  # every model is unloaded again
        wait_for(lambda: watcher.connected and watcher.syncs > syncs, what="the gateway's watcher back on the router")
        oai.chat.completions.create(model="one", messages=HI, max_tokens=8)
        again = gw.wait_for_spans(3)[2].attributes
        assert again[sc.MODEL_COLD_START] is True and again[sc.MODEL_STATE_BEFORE] == "unloaded"


def test_router_with_an_api_key(router_factory) -> None:
    """llama-server --api-key: the gateway follows the router with the key its clients send, and records it nowhere."""
    locked = router_factory(["one", "two"], models_max=1, extra_args=["--api-key", "sk-router-secret"], wait=False)
    key = {"Authorization": "Bearer sk-router-secret"}

    def ready() -> bool:
        try:
            return httpx.get(locked.base_url + "/models", headers=key, timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, what="the router with --api-key")
    with running_gateway(locked.base_url) as gw:
        with pytest.raises(openai.AuthenticationError):  # a client with a wrong key first: it must not settle anything
            openai.OpenAI(base_url=gw.url + "/v1", api_key="wrong", max_retries=0).chat.completions.create(
                model="two", messages=HI, max_tokens=8)
        oai = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-router-secret", max_retries=0, timeout=120)
        oai.chat.completions.create(model="one", messages=HI, max_tokens=8)
        oai.chat.completions.create(model="one", messages=HI, max_tokens=8)
        _, cold, warm = gw.wait_for_spans(3)
        assert cold.attributes[sc.MODEL_COLD_START] is True and sc.MODEL_COLD_START not in warm.attributes
        metrics = httpx.get(gw.admin_url + "/metrics", timeout=10).text
        spans = " ".join(str(dict(s.attributes)) for s in gw.wait_for_spans(3))
        assert "sk-router-secret" not in metrics + spans


@pytest.mark.parametrize(("status", "message", "error_type", "model"), [
    (400, "model 'nope' not found", "model_not_found", "nope"),
    (400, "model is not loaded", "model_not_loaded", None),
    (500, "model name=bad failed to load", "model_load_failed", "bad"),
    (400, "the request exceeds the available context size", None, None),  # llama-server's own: stays "400"
    (500, "model 'x' not found", None, None),  # wrong status for that message: not a router error
])
def test_router_error_classification(status: int, message: str, error_type: str | None, model: str | None) -> None:
    from llamatelemetry.errors import classify_router_error
    from llamatelemetry.proxy.routing import in_client_dialect, router_error

    body = json.dumps({"error": {"code": status, "message": message, "type": "invalid_request_error"}}).encode()
    found = router_error(status, body)
    assert (found[0].error_type if found else None) == error_type
    assert (classify_router_error(status, message) or (None, None))[1] == model
    reshaped = in_client_dialect("/v1/messages", status, body)
    if error_type is None:
        assert reshaped is None
    else:
        assert json.loads(reshaped) == {"type": "error", "error": {
            "type": "invalid_request_error" if status == 400 else "api_error", "message": message}}
        assert in_client_dialect("/v1/chat/completions", status, body) is None  # already the OpenAI shape
