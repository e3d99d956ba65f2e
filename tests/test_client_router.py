"""The client against a real llama-server router: models.list/load/unload (sync and async) and typed router errors."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from llamatelemetry import AsyncLlamaCppClient, LlamaCppClient, errors, types
from llamatelemetry.telemetry import semconv as sc
from llamatelemetry.telemetry.lookups import Lookups
from proxy_helpers import running_gateway
from telemetry_helpers import Telemetry
from waiting import wait_for

HI = [{"role": "user", "content": "Say hello."}]



def status(client: LlamaCppClient, model: str) -> types.ModelStatus:
    found = next(m for m in client.models.list().data if m.id == model)
    assert found.status is not None
    return found.status


@pytest.fixture(scope="module")
def router(router_factory):
    return router_factory(["alpha", "beta", "gamma"], broken=["bad"], models_max=1)


@pytest.fixture(scope="module")
def manual_router(router_factory):
    """A router that never loads on demand (--no-models-autoload)."""
    return router_factory(["alpha", "beta"], autoload=False)


def test_list_shows_router_status_fields(router) -> None:
    with LlamaCppClient(router.base_url, telemetry=False) as client:
        models = {m.id: m for m in client.models.list().data}
    assert set(models) == {"alpha", "beta", "gamma", "bad"}
    alpha = models["alpha"]
    assert isinstance(alpha.status, types.ModelStatus) and alpha.status.value in ("unloaded", "loaded", "loading", "sleeping")
    assert alpha.aliases == [] and alpha.source == "models_dir" and isinstance(alpha.status.args, list)


def test_load_and_unload_sync(manual_router) -> None:
    with LlamaCppClient(manual_router.base_url, telemetry=False) as client:
        assert status(client, "alpha").value == "unloaded"
        assert client.models.load("alpha") is True
        wait_for(lambda: status(client, "alpha").value == "loaded", what="alpha loaded")
        assert client.chat_completion(model="alpha", messages=HI, max_tokens=8).usage.completion_tokens == 8
        with pytest.raises(errors.BadRequestError, match="already running"):
            client.models.load("alpha")
        assert client.models.unload("alpha") is True
        wait_for(lambda: status(client, "alpha").value == "unloaded", what="alpha unloaded")
        with pytest.raises(errors.BadRequestError, match="not running"):
            client.models.unload("alpha")


def test_load_and_unload_async(manual_router) -> None:
    async def main() -> None:
        async with AsyncLlamaCppClient(manual_router.base_url, telemetry=False) as client:
            assert await client.models.load("beta") is True
            deadline = time.monotonic() + 60
            while True:
                found = next(m for m in (await client.models.list()).data if m.id == "beta")
                if found.status is not None and found.status.value == "loaded":
                    break
                assert time.monotonic() < deadline, "beta never loaded"
                await asyncio.sleep(0.05)
            assert await client.models.unload("beta") is True
            while True:  # the unload is asynchronous: the child is stopping for a moment after the answer
                found = next(m for m in (await client.models.list()).data if m.id == "beta")
                if found.status is not None and found.status.value == "unloaded":
                    break
                assert time.monotonic() < deadline + 60, "beta never unloaded"
                await asyncio.sleep(0.05)
            with pytest.raises(errors.ModelNotLoadedError) as not_loaded:
                await client.chat_completion(model="beta", messages=HI, max_tokens=8)
            assert not_loaded.value.model == "beta"

    asyncio.run(main())


def test_model_not_loaded_carries_model_and_status(manual_router) -> None:
    with LlamaCppClient(manual_router.base_url, telemetry=False) as client:
        with pytest.raises(errors.ModelNotLoadedError) as caught:
            client.chat_completion(model="alpha", messages=HI, max_tokens=8)
    exc = caught.value
    assert isinstance(exc, errors.RouterModelError) and isinstance(exc, errors.BadRequestError)
    assert exc.model == "alpha" and exc.model_status is not None and exc.model_status.value == "unloaded"
    assert exc.status_code == 400 and "client.models.load" in str(exc)


def test_unknown_model_and_failed_load(router) -> None:
    telemetry = Telemetry()
    with LlamaCppClient(router.base_url, tracer_provider=telemetry.tracer_provider,
                        meter_provider=telemetry.meter_provider) as client:
        with pytest.raises(errors.UnknownModelError) as unknown:
            client.chat_completion(model="nope", messages=HI, max_tokens=8)
        assert unknown.value.model == "nope" and unknown.value.model_status is None
        with pytest.raises(errors.ModelLoadFailedError) as failed:
            client.chat_completion(model="bad", messages=HI, max_tokens=8)
        client.flush_telemetry()
    status_ = failed.value.model_status
    assert failed.value.model == "bad" and failed.value.status_code == 500
    assert status_ is not None and status_.failed and status_.exit_code not in (None, 0)
    # the client's spans carry the same distinct error.type as the gateway's
    assert [s.attributes[sc.ERROR_TYPE] for s in telemetry.spans()] == [sc.ERROR_TYPE_MODEL_NOT_FOUND,
                                                                         sc.ERROR_TYPE_MODEL_LOAD_FAILED]


def test_anthropic_dialect_router_error_through_the_gateway(router) -> None:
    """/v1/messages through the gateway: the Anthropic-shaped router error still becomes the typed error."""
    with running_gateway(router.base_url) as gw, LlamaCppClient(gw.url, telemetry=False) as client:
        with pytest.raises(errors.UnknownModelError) as unknown:
            client.messages.create(model="nope", max_tokens=8, messages=HI)
    assert unknown.value.model == "nope" and unknown.value.body["type"] == "error"


def test_reasoning_count_works_through_a_router(router) -> None:
    """The client's reasoning-token count (a /tokenize it sends) names the model, as a router requires.

    Without the model the router answers that /tokenize with a 400 and every count is missing. A count is
    best-effort telemetry (2 s, no retry) on a machine shared with other test runs, so each client gets
    up to three calls to show one.
    """
    from llamatelemetry.provision.model import REASONING_TOKENS

    def counts(telemetry: Telemetry) -> list[object]:
        return [s.attributes.get(sc.USAGE_REASONING_OUTPUT_TOKENS) for s in telemetry.spans()]

    sync_telemetry = Telemetry()
    with LlamaCppClient(router.base_url, tracer_provider=sync_telemetry.tracer_provider,
                        meter_provider=sync_telemetry.meter_provider) as client:
        for _ in range(3):
            client.chat_completion(model="gamma", messages=HI, max_tokens=64)
            client.flush_telemetry()
            if REASONING_TOKENS in counts(sync_telemetry):
                break

    async_telemetry = Telemetry()

    async def main() -> None:
        async with AsyncLlamaCppClient(router.base_url, tracer_provider=async_telemetry.tracer_provider,
                                       meter_provider=async_telemetry.meter_provider) as aclient:
            for _ in range(3):
                await aclient.chat_completion(model="gamma", messages=HI, max_tokens=64)
                await aclient.flush_telemetry()
                if REASONING_TOKENS in counts(async_telemetry):
                    break

    asyncio.run(main())
    assert REASONING_TOKENS in counts(sync_telemetry), counts(sync_telemetry)
    assert REASONING_TOKENS in counts(async_telemetry), counts(async_telemetry)
    assert set(counts(sync_telemetry) + counts(async_telemetry)) <= {REASONING_TOKENS, None}


def test_context_size_lookup_through_a_router_never_loads_a_model(router) -> None:
    """The n_ctx lookup asks the router about the call's model (``GET /props?model=…&autoload=false``): the first
    call of a model records its utilisation, and a lookup for a model that is not running never loads it."""
    tel = Telemetry()
    with LlamaCppClient(router.base_url, **tel.providers) as client:
        result = client.chat.completions.create(model="alpha", messages=HI, max_tokens=8)
        assert client.flush_telemetry(timeout=10)
        span = tel.only_span()
        n_ctx = httpx.get(router.base_url + "/props", params={"model": "alpha"}, timeout=10).json()[
            "default_generation_settings"]["n_ctx"]
        assert result.usage is not None and span.attributes[sc.CONTEXT_N_CTX] == n_ctx
        assert span.attributes[sc.CONTEXT_UTILIZATION] == pytest.approx(result.usage.prompt_tokens / n_ctx)
        # models_max=1: alpha running means the others are not (a swap evicted them).
        idle = next(m for m in ("beta", "gamma") if status(client, m).value == "unloaded")
        with httpx.Client() as http:
            assert Lookups(http, router.base_url).context_size(idle) is None
        time.sleep(1.0)  # a load the lookup started would show as loading/loaded by now
        assert status(client, idle).value == "unloaded"
