"""A small, strict parser for the Prometheus text exposition format (version 0.0.4).

This is what llama-server's ``/metrics`` returns (metric names with colons, such as
``llamacpp:prompt_tokens_total``). The parser is linear in the input size (a hand-written
scanner, no backtracking regular expressions), so hostile input cannot make it hang.

Policy for bad input: **strict**. Any malformed line (a sample without a value, an
unterminated label set, a value that is not a number, an unknown ``# TYPE``) raises
:class:`PromTextParseError` (a :class:`ValueError`) naming the line number. A half-parsed
scrape is worse than none: a truncated counter line would otherwise be silently dropped and
``rate()`` would see a reset. Callers that want to carry on (the exporter does) catch the
error and report the target's metrics as failed for that scrape.

Example::

    >>> from llamatelemetry.promtext import parse_prometheus_text
    >>> fams = parse_prometheus_text(
    ...     "# HELP llamacpp:tokens_predicted_total Number of generation tokens processed.\\n"
    ...     "# TYPE llamacpp:tokens_predicted_total counter\\n"
    ...     "llamacpp:tokens_predicted_total 42\\n")
    >>> fams[0].name, fams[0].type, fams[0].samples[0].value
    ('llamacpp:tokens_predicted_total', 'counter', 42.0)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

__all__ = ["MetricFamily", "Sample", "PromTextParseError", "parse_prometheus_text"]

#: Metric types accepted in ``# TYPE`` lines (``unknown`` is the OpenMetrics spelling of ``untyped``).
METRIC_TYPES = frozenset({"counter", "gauge", "histogram", "summary", "untyped", "unknown", "info", "stateset", "gaugehistogram"})

# Sample-name suffixes that belong to a declared family (``foo_bucket`` belongs to histogram ``foo``).
_SUFFIXES = ("_total", "_created", "_bucket", "_count", "_sum", "_gcount", "_gsum", "_info")


class PromTextParseError(ValueError):
    """The text is not valid Prometheus exposition; ``lineno`` is 1-based (0 when not line-specific)."""

    def __init__(self, message: str, lineno: int = 0, line: str = "") -> None:
        shown = line if len(line) <= 120 else line[:117] + "..."
        where = f"line {lineno}: " if lineno else ""
        super().__init__(f"{where}{message}" + (f" (got {shown!r})" if line else ""))
        self.lineno = lineno


@dataclass(frozen=True)
class Sample:
    """One sample line: ``name{labels} value``. Timestamps, when present, are dropped."""

    name: str
    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class MetricFamily:
    """All samples of one metric, with the type and help text from its ``# TYPE`` / ``# HELP`` lines.

    ``type`` is ``"untyped"`` when no ``# TYPE`` line was given.
    """

    name: str
    type: str
    help: str
    samples: list[Sample] = field(default_factory=list)


# Simple character-class regexes (no nested quantifiers, so no catastrophic backtracking).
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_NAME_CHARS = re.compile(r"[a-zA-Z0-9_:]*")
# Fast path for the common label-less sample: "name value [timestamp]".
_SIMPLE_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)[ \t]+(\S+)(?:[ \t]+(\S+))?")


def _valid_metric_name(name: str) -> bool:
    return _METRIC_NAME.fullmatch(name) is not None


_SPECIAL_VALUES = {"+inf": math.inf, "inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _parse_float(token: str, lineno: int, line: str) -> float:
    lowered = token.lower()
    special = _SPECIAL_VALUES.get(lowered)
    if special is not None:
        return special
    try:
        # float() also accepts '1_000' and ' 1 ' and 'infinity'; reject those spellings explicitly.
        if "_" in token or not token or lowered.lstrip("+-").startswith("infinity"):
            raise ValueError(token)
        return float(token)
    except ValueError:
        raise PromTextParseError("sample value is not a number", lineno, line) from None


def _unescape(text: str, lineno: int, line: str, *, quote: bool) -> str:
    if "\\" not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "n":
                out.append("\n")
            elif nxt == "\\":
                out.append("\\")
            elif nxt == '"' and quote:
                out.append('"')
            else:  # unknown escapes are kept verbatim, as Prometheus does
                out.append(ch + nxt)
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _parse_sample(line: str, lineno: int) -> Sample:
    simple = _SIMPLE_SAMPLE.fullmatch(line)
    if simple is not None:
        value = _parse_float(simple.group(2), lineno, line)
        if simple.group(3) is not None:
            try:
                float(simple.group(3))
            except ValueError:
                raise PromTextParseError("timestamp is not a number", lineno, line) from None
        return Sample(simple.group(1), {}, value)
    n = len(line)
    match = _NAME_CHARS.match(line)
    i = match.end() if match else 0
    name = line[:i]
    if not _valid_metric_name(name):
        raise PromTextParseError("expected a metric name", lineno, line)
    labels: dict[str, str] = {}
    if i < n and line[i] == "{":
        i += 1
        while True:
            while i < n and line[i] in " \t":
                i += 1
            if i >= n:
                raise PromTextParseError("unterminated label set", lineno, line)
            if line[i] == "}":
                i += 1
                break
            match = _LABEL_NAME.match(line, i)
            if match is None:
                raise PromTextParseError("expected a label name", lineno, line)
            label = match.group()
            i = match.end()
            while i < n and line[i] in " \t":
                i += 1
            if i >= n or line[i] != "=":
                raise PromTextParseError(f"expected '=' after label {label!r}", lineno, line)
            i += 1
            while i < n and line[i] in " \t":
                i += 1
            if i >= n or line[i] != '"':
                raise PromTextParseError(f"expected a quoted value for label {label!r}", lineno, line)
            i += 1
            start = i
            while i < n and line[i] != '"':
                i += 2 if line[i] == "\\" else 1
            if i >= n:
                raise PromTextParseError("unterminated label value", lineno, line)
            if label in labels:
                raise PromTextParseError(f"duplicate label {label!r}", lineno, line)
            labels[label] = _unescape(line[start:i], lineno, line, quote=True)
            i += 1
            while i < n and line[i] in " \t":
                i += 1
            if i < n and line[i] == ",":
                i += 1
            elif i < n and line[i] != "}":
                raise PromTextParseError("expected ',' or '}' in label set", lineno, line)
    rest = line[i:]
    if rest and rest[0] not in " \t":
        raise PromTextParseError("expected whitespace before the sample value", lineno, line)
    parts = rest.split()
    if not parts:
        raise PromTextParseError("sample has no value (truncated line?)", lineno, line)
    if len(parts) > 2:
        raise PromTextParseError("unexpected text after the sample value", lineno, line)
    value = _parse_float(parts[0], lineno, line)
    if len(parts) == 2:
        try:
            float(parts[1])
        except ValueError:
            raise PromTextParseError("timestamp is not a number", lineno, line) from None
    return Sample(name, labels, value)


def _family_for(sample_name: str, declared: dict[str, MetricFamily]) -> MetricFamily | None:
    if sample_name in declared:
        return declared[sample_name]
    for suffix in _SUFFIXES:
        if sample_name.endswith(suffix):
            base = declared.get(sample_name[: -len(suffix)])
            if base is not None:
                return base
    return None


def parse_prometheus_text(text: str) -> list[MetricFamily]:
    """Parse Prometheus text exposition into metric families, in order of first appearance.

    Raises :class:`PromTextParseError` (a ``ValueError``) on the first malformed line.

    Example::

        >>> [f.name for f in parse_prometheus_text('up 1\\nfoo{a="b"} 2.5\\n')]
        ['up', 'foo']
    """
    if not isinstance(text, str):
        raise TypeError(f"expected str, got {type(text).__name__}; decode the HTTP body first")
    families: dict[str, MetricFamily] = {}
    helps: dict[str, str] = {}
    types: dict[str, str] = {}

    def family(name: str) -> MetricFamily:
        fam = families.get(name)
        if fam is None:
            fam = MetricFamily(name, types.get(name, "untyped"), helps.get(name, ""), [])
            families[name] = fam
        return fam

    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip(" \t\r")
        if not line:
            continue
        if line.startswith("#"):
            parts = line[1:].strip().split(None, 2)
            if not parts or parts[0] not in ("HELP", "TYPE", "EOF"):
                continue  # a plain comment
            if parts[0] == "EOF":
                break
            if len(parts) < 2 or not _valid_metric_name(parts[1]):
                raise PromTextParseError(f"# {parts[0]} without a valid metric name", lineno, line)
            name = parts[1]
            if parts[0] == "HELP":
                doc = _unescape(parts[2] if len(parts) > 2 else "", lineno, line, quote=False)
                helps[name] = doc
                if name in families:
                    families[name] = MetricFamily(name, families[name].type, doc, families[name].samples)
            else:
                mtype = parts[2].strip().lower() if len(parts) > 2 else ""
                if mtype not in METRIC_TYPES:
                    raise PromTextParseError(f"unknown metric type {mtype!r}", lineno, line)
                if name in families and families[name].samples:
                    raise PromTextParseError(f"# TYPE for {name} after its samples", lineno, line)
                types[name] = mtype
                families[name] = MetricFamily(name, mtype, helps.get(name, ""), [])
            continue
        sample = _parse_sample(line, lineno)
        fam = _family_for(sample.name, families) or family(sample.name)
        fam.samples.append(sample)
    return list(families.values())
