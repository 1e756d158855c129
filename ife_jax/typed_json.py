"""Dataclasses rebuilt from JSON with every field checked against its annotation.

Whatever a file says becomes an object only through :func:`from_json`: each value must have
the type its field is annotated with (``int``, ``float``, ``bool``, ``str``, ``None``,
``X | Y``, ``tuple[X, Y]``, ``tuple[X, ...]``, ``Sequence[X]``, a nested dataclass, or a dtype
for the networks' ``Dtype`` fields). Nothing read from the file is ever imported or called;
the class to build is always chosen by the caller.

Example:
  >>> from_json(NNUNetPlan, json.loads(text), where="plan.json")
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

import numpy as np

#: The dtypes a network's ``dtype``/``param_dtype`` field may name, written ``{"__dtype__": name}``.
DTYPES = ("float32", "float16", "bfloat16", "float64")

#: Dataclass fields a Flax module has that are not part of its configuration.
_NOT_CONFIG = ("parent", "name")


def config_fields(cls: type) -> dict[str, dataclasses.Field]:
    """The fields of a dataclass (or Flax module) that its constructor takes as configuration."""
    return {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in _NOT_CONFIG}


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    if hint is Any:
        return "a dtype"
    return getattr(hint, "__name__", None) or str(hint)


def _dtype(value: Any, where: str):
    import jax.numpy as jnp  # here: plans and configs are read without importing jax

    if not (
        isinstance(value, Mapping)
        and set(value) == {"__dtype__"}
        and isinstance(value["__dtype__"], str)
        and value["__dtype__"] in DTYPES
    ):
        raise ValueError(
            f"{where}: expected a dtype written {{'__dtype__': one of {list(DTYPES)}}}; "
            f"got {_show(value)}."
        )
    return jnp.dtype(value["__dtype__"]).type


def check(value: Any, hint: Any, where: str) -> Any:
    """``value`` converted to the Python form of ``hint`` (lists become tuples).

    Raises:
      ValueError: naming ``where``, the expected type and the value, if they do not match.
      TypeError: if ``hint`` is a type this module has no JSON form for (a programming error).
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return _dtype(value, where)
    if hint is bool:
        if isinstance(value, bool | np.bool_):
            return bool(value)
    elif hint is int:
        if isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_):
            return int(value)
    elif hint is float:
        if isinstance(value, int | float | np.integer | np.floating) and not isinstance(
            value, bool | np.bool_
        ):
            if not math.isfinite(value):
                raise ValueError(f"{where}: expected a finite number; got {_show(value)}.")
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is type(None):
        if value is None:
            return None
    elif origin in (typing.Union, types.UnionType):
        errors = []
        for option in args:
            try:
                return check(value, option, where)
            except ValueError as err:
                errors.append(err)
        names = " or ".join(_type_name(a) for a in args)
        raise ValueError(f"{where}: expected {names}; got {_show(value)}.")
    elif origin is tuple or origin is collections.abc.Sequence:
        if isinstance(value, list | tuple):
            if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
                if len(value) != len(args):
                    raise ValueError(
                        f"{where}: expected {len(args)} entries; got {len(value)} ({_show(value)})."
                    )
                pairs = zip(value, args, strict=True)
                return tuple(check(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(pairs))
            return tuple(check(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        raise ValueError(f"{where}: expected a list; got {_show(value)}.")
    elif isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_json(hint, value, where=where, _nested=True)
    else:
        raise TypeError(f"{where}: no JSON form for fields of type {hint!r}.")
    raise ValueError(f"{where}: expected {_type_name(hint)}; got {_show(value)}.")


def from_json(cls: type, data: Any, *, where: str, _nested: bool = False):
    """An instance of the dataclass ``cls`` from a JSON object, every field type-checked.

    Args:
      cls: the dataclass (or Flax module class) to build; chosen by the caller, never by ``data``.
      data: a mapping from field names to JSON values (lists for tuples and sequences).
      where: what ``data`` came from (a file name), the start of every error message.

    Returns:
      ``cls(**fields)``; fields missing from ``data`` keep their defaults.

    Raises:
      ValueError: ``data`` is not an object, names an unknown field, lacks a required one, or a
        value has the wrong type (the message names the field and the value); also whatever
        ``cls`` itself raises for a value out of range.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a JSON object for {cls.__name__}; got {_show(data)}.")
    fields = config_fields(cls)
    unknown = sorted(str(k) for k in data if k not in fields)
    if unknown:
        raise ValueError(
            f"{where}: unknown field(s) {', '.join(unknown)} for {cls.__name__} "
            f"(known: {', '.join(fields)})."
        )
    missing = [
        name
        for name, f in fields.items()
        if name not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ValueError(f"{where}: {cls.__name__} needs the field(s) {', '.join(missing)}.")
    hints = typing.get_type_hints(cls)
    sep = "." if _nested else ": "
    kwargs = {name: check(v, hints[name], f"{where}{sep}{name}") for name, v in data.items()}
    return cls(**kwargs)
