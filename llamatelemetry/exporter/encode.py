"""A fast encoder for the Prometheus text format 0.0.4, for the families this exporter builds.

``prometheus_client.generate_latest`` re-validates every name and label and handles UTF-8
metric names on each call; for the exporter's few hundred samples that is most of the CPU of a
scrape. This writes the same format for counter / gauge / unknown families and defers to
``generate_latest`` for anything else (histograms or summaries passed through from upstream).
OpenMetrics answers always come from ``prometheus_client``.

Example::

    body = encode_text(families)     # bytes, Content-Type CONTENT_TYPE
    encoder = TextEncoder()          # or keep one per server: it remembers rendered series
    body = encoder.encode(families)
"""

from __future__ import annotations

import math
from typing import Iterable

from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

CONTENT_TYPE = CONTENT_TYPE_LATEST
_SIMPLE_TYPES = {"counter", "gauge", "unknown", "untyped"}
_LABEL_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", '"': '\\"'})
_INF = math.inf
_HELP_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n"})


def _value(v: float) -> str:
    if v != v:  # NaN
        return "NaN"
    if v == _INF or v == -_INF:
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


class _Registry:
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


class TextEncoder:
    """:func:`encode_text` with memory: the HELP/TYPE block of each family and the
    ``name{labels} `` prefix of each series are rendered once and reused while they recur.

    A scrape of the same targets yields the same series every time, so after the first scrape
    only the values are formatted. Both caches are emptied when they grow past ``max_entries``
    (series come and go, e.g. per-process GPU memory), which bounds the memory they hold.
    """

    def __init__(self, max_entries: int = 20_000) -> None:
        self.max_entries = max_entries
        self._heads: dict[tuple[str, str, str], str] = {}
        self._prefixes: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}

    def encode(self, families: Iterable[Metric]) -> bytes:
        """Families → Prometheus text exposition (the same output as ``generate_latest``, faster)."""
        families = list(families)
        if any(f.type not in _SIMPLE_TYPES for f in families):
            return generate_latest(_Registry(families))  # type: ignore[arg-type]
        if len(self._prefixes) > self.max_entries or len(self._heads) > self.max_entries:
            self._heads.clear()
            self._prefixes.clear()
        out: list[str] = []
        for fam in families:
            out.append(self._head(fam))
            for s in fam.samples:
                prefix = self._prefixes.get((s.name, tuple(s.labels.items())))
                if prefix is None:
                    prefix = self._prefix(s.name, s.labels)
                out.append(f"{prefix}{_value(s.value)}\n")
        return "".join(out).encode("utf-8")

    def _head(self, fam: Metric) -> str:
        key = (fam.name, fam.type, fam.documentation)
        head = self._heads.get(key)
        if head is None:
            name = fam.name + "_total" if fam.type == "counter" else fam.name
            mtype = "untyped" if fam.type == "unknown" else fam.type
            head = self._heads[key] = f"# HELP {name} {fam.documentation.translate(_HELP_ESCAPES)}\n# TYPE {name} {mtype}\n"
        return head

    def _prefix(self, name: str, labels: dict[str, str]) -> str:
        if labels:
            rendered = ",".join(f'{k}="{v.translate(_LABEL_ESCAPES)}"' for k, v in labels.items())
            prefix = f"{name}{{{rendered}}} "
        else:
            prefix = name + " "
        self._prefixes[(name, tuple(labels.items()))] = prefix
        return prefix


_DEFAULT_ENCODER = TextEncoder()


def encode_text(families: Iterable[Metric]) -> bytes:
    """Families → Prometheus text exposition (the same output as ``generate_latest``, faster)."""
    return _DEFAULT_ENCODER.encode(families)
