"""Tests of the Prometheus text parser, including real llama-server output and hostile input."""

from __future__ import annotations

import math
import time

import httpx
import pytest

from llamatelemetry.promtext import MetricFamily, PromTextParseError, Sample, parse_prometheus_text

LLAMA_SAMPLE = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 17
# HELP llamacpp:prompt_tokens_seconds Average prompt throughput in tokens/s.
# TYPE llamacpp:prompt_tokens_seconds gauge
llamacpp:prompt_tokens_seconds 1234.5
"""


def test_llama_style_names_types_and_help() -> None:
    fams = parse_prometheus_text(LLAMA_SAMPLE)
    assert fams == [
        MetricFamily("llamacpp:prompt_tokens_total", "counter", "Number of prompt tokens processed.", [Sample("llamacpp:prompt_tokens_total", {}, 17.0)]),
        MetricFamily("llamacpp:prompt_tokens_seconds", "gauge", "Average prompt throughput in tokens/s.", [Sample("llamacpp:prompt_tokens_seconds", {}, 1234.5)]),
    ]


def test_dataclasses_are_frozen() -> None:
    fam = parse_prometheus_text("a 1\n")[0]
    with pytest.raises(AttributeError):
        fam.name = "b"  # type: ignore[misc]


def test_labels_escapes_special_values_and_timestamps() -> None:
    text = (
        '# HELP x_seconds a \\\\ b\\nc\n# TYPE x_seconds histogram\n'
        'x_seconds_bucket{le="0.5",path="a\\"b\\\\c\\nd"} 3 1700000000000\n'
        'x_seconds_bucket{le="+Inf",path="p",} 5\n'
        'x_seconds_sum 1.5e-3\nx_seconds_count 5\n'
        'nan_value NaN\nneg -Inf\n'
        '# just a comment\n\n'
    )
    fams = {f.name: f for f in parse_prometheus_text(text)}
    hist = fams["x_seconds"]
    assert hist.type == "histogram" and hist.help == "a \\ b\nc"
    assert [s.name for s in hist.samples] == ["x_seconds_bucket", "x_seconds_bucket", "x_seconds_sum", "x_seconds_count"]
    assert hist.samples[0].labels == {"le": "0.5", "path": 'a"b\\c\nd'}
    assert hist.samples[1].labels == {"le": "+Inf", "path": "p"}
    assert hist.samples[2].value == pytest.approx(0.0015)
    assert math.isnan(fams["nan_value"].samples[0].value)
    assert fams["neg"].samples[0].value == -math.inf and fams["neg"].type == "untyped"


def test_openmetrics_eof_stops_parsing() -> None:
    fams = parse_prometheus_text("a 1\n# EOF\nthis is not parsed\n")
    assert [f.name for f in fams] == ["a"]


@pytest.mark.parametrize(
    "bad",
    [
        "llamacpp:prompt_tokens_total",  # truncated: no value
        "llamacpp:prompt_tokens_total{",  # truncated label set
        'x{a="1"',
        'x{a="unterminated} 1',
        "x{a=1} 1",
        "x 1 2 3",
        "x one",
        "x 1_000",
        "# TYPE x bogus",
        "{} 1",
        "1x 1",
        'x{a="1",a="2"} 1',
        "\x00\x01\x02 garbage",
        "x 1 notatimestamp",
    ],
)
def test_garbage_raises_a_value_error_with_the_line_number(bad: str) -> None:
    with pytest.raises(PromTextParseError) as info:
        parse_prometheus_text("ok 1\n" + bad + "\n")
    assert isinstance(info.value, ValueError)
    assert "line 2" in str(info.value)


def test_rejects_bytes_with_a_hint() -> None:
    with pytest.raises(TypeError, match="decode"):
        parse_prometheus_text(b"a 1")  # type: ignore[arg-type]


def test_hostile_input_is_linear_time() -> None:
    # Long label values, many labels, many backslashes and one huge unterminated line: must not hang.
    hostile = [
        "x{" + ",".join(f'l{i}="{"v" * 50}"' for i in range(2000)) + "} 1",
        'x{a="' + "\\" * 200_001 + "} 1",
        "x{" + 'a="b",' * 100_000,
        "a" * 1_000_000,
    ]
    for text in hostile:
        start = time.perf_counter()
        try:
            parse_prometheus_text(text)
        except PromTextParseError:
            pass
        assert time.perf_counter() - start < 2.0


def test_parses_a_real_llama_server_metrics_page(full_server) -> None:  # noqa: ANN001 - fixture
    text = httpx.get(full_server.base_url + "/metrics", timeout=10).text
    fams = {f.name: f for f in parse_prometheus_text(text)}
    assert fams["llamacpp:prompt_tokens_total"].type == "counter"
    assert fams["llamacpp:requests_processing"].type == "gauge"
    assert all(len(f.samples) == 1 for f in fams.values())
