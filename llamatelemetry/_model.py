"""A tiny typed-record base: attribute access over llama-server's JSON, built once per class.

Why not pydantic: parsing a chat completion must cost microseconds (per-request overhead
is a feature we measure), and llama-server adds fields often. Each record is a slotted
dataclass; unknown fields are kept in ``extra`` and remain reachable as attributes.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Callable, ClassVar, TypeVar

T = TypeVar("T", bound="Record")
_Converter = Callable[[Any], Any]


def _converter_for(hint: Any) -> _Converter | None:
    """Return a function that turns raw JSON into ``hint``'s type, or None for plain values."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _converter_for(options[0]) if len(options) == 1 else None
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        inner = _converter_for(item)
        if inner is None:
            return None
        return lambda value: [inner(v) for v in value] if isinstance(value, list) else value
    if isinstance(hint, type) and issubclass(hint, Record):
        return lambda value: hint.from_dict(value) if isinstance(value, dict) else value
    return None


@dataclasses.dataclass(slots=True, kw_only=True)
class Record:
    """Base of every response type. ``from_dict`` parses, ``to_dict`` gives JSON back."""

    extra: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)
    _converters: ClassVar[dict[str, _Converter | None]]

    @classmethod
    def _field_converters(cls) -> dict[str, _Converter | None]:
        # Computed once per class (not per response), on first use so forward references resolve.
        converters = cls.__dict__.get("_converters_cache")
        if converters is None:
            hints = typing.get_type_hints(cls)
            converters = {f.name: _converter_for(hints[f.name]) for f in dataclasses.fields(cls) if f.name != "extra"}
            type.__setattr__(cls, "_converters_cache", converters)
        return converters

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        converters = cls._field_converters()
        known: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in data.items():
            if key in converters:
                convert = converters[key]
                known[key] = convert(value) if convert is not None and value is not None else value
            else:
                extra[key] = value
        return cls(extra=extra, **known)

    def to_dict(self) -> dict[str, Any]:
        """Return the record as JSON-compatible data (unknown fields included)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = _to_json(value)
        out.update(self.extra)
        return out

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not fields: expose llama-server's extra fields.
        try:
            return object.__getattribute__(self, "extra")[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}") from None


def _to_json(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    return value
