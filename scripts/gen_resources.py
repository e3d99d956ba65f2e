#!/usr/bin/env python3
"""Write the stream-capable methods' overloads in ``llamatelemetry/_resources.py`` from their one declaration.

Each endpoint's parameters are declared once, by its request builder in ``llamatelemetry/_calls.py``
(names, types, defaults, docstring). Type checkers need ``create``/``chat_completion`` overloaded on
``stream`` (``Literal[False]`` gives the result, ``Literal[True]`` a stream, ``bool`` either), for the
sync and the async client: 3 overloads x 8 methods restating the same parameters. This script writes
them between the ``# <generated ...>`` and ``# </generated>`` markers; everything else in the file is
hand-written. ``tests/test_typing.py`` fails when the file differs from what this script writes, so a
new chat parameter is one edit in ``_calls.py`` and one run of::

    python scripts/gen_resources.py          # rewrite the generated regions
    python scripts/gen_resources.py --check  # exit 1 (and say where) if they are stale
"""

from __future__ import annotations

import argparse
import builtins
import importlib
import inspect
import re
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "llamatelemetry" / "_resources.py"
sys.path.insert(0, str(ROOT))


def _load_calls() -> ModuleType:
    # Without running the package's __init__ (which imports _resources): this script must work on a
    # _resources.py that does not import yet, e.g. with an empty generated region.
    if "llamatelemetry" not in sys.modules:
        package = ModuleType("llamatelemetry")
        package.__path__ = [str(ROOT / "llamatelemetry")]
        sys.modules["llamatelemetry"] = package
    return importlib.import_module("llamatelemetry._calls")


_calls = _load_calls()


@dataclass(frozen=True)
class Method:
    owner: str      # the class it belongs to
    name: str       # the method's name
    builder: str    # the request builder in _calls that declares its parameters
    result: str     # what a non-streamed call returns
    chunk: str      # what a stream yields

    @property
    def is_async(self) -> bool:
        return self.owner.startswith("Async")


_CHAT = ("chat_completion", "types.ChatCompletion", "types.ChatCompletionChunk")
_COMPLETION = ("completion", "types.Completion", "types.Completion")
_MESSAGE = ("message", "types.Message", "types.MessageStreamEvent")

METHODS = [
    Method(owner, name, *declared)
    for prefix in ("", "Async")
    for owner, name, declared in (
        ("ChatCompletions", "create", _CHAT), ("Completions", "create", _COMPLETION),
        ("Messages", "create", _MESSAGE), ("ClientMethods", "chat_completion", _CHAT),
    )
    for owner in (prefix + owner,)
]


def _qualified(annotation: str) -> str:
    """An annotation from ``_calls`` as ``_resources`` spells it (its own aliases as ``_calls.X``)."""

    def qualify(match: re.Match[str]) -> str:
        name = match.group(0)
        own = name in vars(_calls) and not hasattr(typing, name) and not hasattr(builtins, name) and name != "types"
        return f"_calls.{name}" if own else name

    return re.sub(r"(?<![\w.])[A-Za-z_]\w*", qualify, annotation)


def _parameters(builder: str, stream: str) -> list[str]:
    lines = []
    for param in inspect.signature(getattr(_calls, builder)).parameters.values():
        assert param.kind is inspect.Parameter.KEYWORD_ONLY, f"_calls.{builder}: {param.name} must be keyword-only"
        if param.name == "stream":
            lines.append(f"stream: {stream},")
            continue
        default = "" if param.default is inspect.Parameter.empty else f" = {param.default!r}"
        lines.append(f"{param.name}: {_qualified(str(param.annotation))}{default},")
    return lines


def render(method: Method) -> list[str]:
    """The three overloads and the implementation of one method, indented for its class."""
    stream_type = f"{'AsyncStream' if method.is_async else 'Stream'}[{method.chunk}]"
    define = "async def" if method.is_async else "def"
    out: list[str] = []
    for stream, returns in (("Literal[False] = False", method.result), ("Literal[True]", stream_type),
                            ("bool", f"{method.result} | {stream_type}")):
        out += ["    @overload", f"    {define} {method.name}(", "        self,", "        *,"]
        out += ["        " + line for line in _parameters(method.builder, stream)]
        out += [f"    ) -> {returns}: ...", ""]
    call = f"self._client._execute(_calls.{method.builder}(**kwargs))"
    out += [
        f"    @_same_signature_as(_calls.{method.builder})",
        f"    {define} {method.name}(self, **kwargs: Any) -> {method.result} | {stream_type}:",
        f"        return {'await ' if method.is_async else ''}{call}  # type: ignore[no-any-return]",
    ]
    return out


def regenerate(text: str) -> str:
    """``text`` with every generated region rewritten; fails if a method's region is missing."""
    lines = text.split("\n")
    out: list[str] = []
    seen: set[str] = set()
    i = 0
    while i < len(lines):
        line = lines[i]
        found = re.fullmatch(r"    # <generated (\w+)\.(\w+) from _calls\.(\w+): scripts/gen_resources\.py>", line)
        if not found:
            out.append(line)
            i += 1
            continue
        [method] = [m for m in METHODS if (m.owner, m.name, m.builder) == found.groups()]
        seen.add(f"{method.owner}.{method.name}")
        end = lines.index("    # </generated>", i)
        out += [line, *render(method), "    # </generated>"]
        i = end + 1
    missing = {f"{m.owner}.{m.name}" for m in METHODS} - seen
    assert not missing, f"no generated region for {sorted(missing)} in {TARGET}"
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report whether the file is up to date")
    args = parser.parse_args()
    current = TARGET.read_text()
    wanted = regenerate(current)
    if args.check:
        if wanted != current:
            print(f"{TARGET} is stale: run python scripts/gen_resources.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
