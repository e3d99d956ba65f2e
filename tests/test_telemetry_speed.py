"""The end of a long stream records every chunk gap without holding the event loop (see instruments.GAPS_PER_SLICE)."""

from __future__ import annotations

import asyncio
import math

import pytest

from llamatelemetry.telemetry.accumulate import accumulator_for
from llamatelemetry.telemetry import semconv as sc
from llamatelemetry.telemetry.instruments import GAPS_PER_SLICE as _GAPS_PER_SLICE
from llamatelemetry.telemetry.recorder import Recorder

from telemetry_helpers import Telemetry

GAPS = [0.001 * (i % 7 + 1) for i in range(10 * _GAPS_PER_SLICE + 3)]


def _streamed_record(tel: Telemetry):
    recorder = Recorder(server_address="127.0.0.1", server_port=8080, **tel.providers)
    record = recorder.start("/v1/chat/completions", {"model": "m", "stream": True}, stream=True)
    acc = accumulator_for("/v1/chat/completions")
    acc.add({"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {"content": "hi"}}]})
    acc.chunk_gaps = list(GAPS)  # as if len(GAPS) more chunks had arrived
    acc.finished = True
    return record, acc


def _gaps_recorded(tel: Telemetry) -> tuple[int, float]:
    return tel.histogram_count(sc.METRIC_TIME_PER_OUTPUT_CHUNK), tel.histogram_sum(sc.METRIC_TIME_PER_OUTPUT_CHUNK)


def test_every_gap_is_recorded_and_other_tasks_run_meanwhile():
    tel = Telemetry()
    record, acc = _streamed_record(tel)
    ticks: list[int] = []

    async def main() -> None:
        stop = asyncio.Event()

        async def other_stream() -> None:  # stands for another stream relayed on the same loop
            while not stop.is_set():
                ticks.append(1)
                await asyncio.sleep(0)

        other = asyncio.ensure_future(other_stream())
        await asyncio.sleep(0)
        before = len(ticks)
        await record.aend_stream(acc, None)
        ticks_during = len(ticks) - before
        stop.set()
        await other
        # one slice at a time: the other task ran between slices (all at once, it could not have)
        assert ticks_during >= len(GAPS) // _GAPS_PER_SLICE

    asyncio.run(main())
    count, total = _gaps_recorded(tel)
    assert count == len(GAPS) and math.isclose(total, sum(GAPS))
    assert len(tel.spans()) == 1


def test_cancelled_between_slices_still_records_every_gap():
    tel = Telemetry()
    record, acc = _streamed_record(tel)

    async def main() -> None:
        task = asyncio.ensure_future(record.aend_stream(acc, None))
        for _ in range(3):  # let it record a few slices, then cancel it mid-way
            await asyncio.sleep(0)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    count, total = _gaps_recorded(tel)
    assert count == len(GAPS) and math.isclose(total, sum(GAPS))
    assert len(tel.spans()) == 1


def test_sync_end_records_every_gap_at_once():
    tel = Telemetry()
    record, acc = _streamed_record(tel)
    record.end_stream(acc, None)
    count, total = _gaps_recorded(tel)
    assert count == len(GAPS) and math.isclose(total, sum(GAPS))
