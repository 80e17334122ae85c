"""Argument dataclasses as command lines: each option is stated once.

A job's arguments are a dataclass whose fields carry their help, allowed range and flag (`option(...)`).
`add_arguments` turns the fields into argparse flags (`--learning-rate` for `learning_rate`, the range's parser
as the type, the default shown in the help), `from_namespace` builds the dataclass from the parsed flags, and
`check_ranges` holds a dataclass built in Python to the same ranges. A new option is one field.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any

from .ranges import Range


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    range: Range | None = None,
    choices: tuple | None = None,
    flag: str | None = None,
    aliases: tuple[str, ...] = (),
    positional: bool = False,
    nargs: str | None = None,
    metavar: str | None = None,
    repeated: Callable[[list[str]], Any] | None = None,
    required: bool = False,
    optional: bool = False,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field that is also a command-line option.

    flag: its name on the command line (default: `--` and the field name in kebab case); aliases: more names.
    positional / nargs / metavar: as argparse has them. repeated: the flag may be given many times, and this
    turns the list of its values into the field's value (e.g. NAME=VALUE pairs into a dict). required: the
    command line must give it, though Python callers get the default. optional: None passes the range check
    (as it does for fields whose default is None).
    """
    metadata = {"help": help, "range": range, "choices": choices, "flag": flag, "aliases": aliases,
                "positional": positional, "nargs": nargs, "metavar": metavar, "repeated": repeated,
                "required": required, "optional": optional}  # fmt: skip
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"option": metadata})


def options_of(cls) -> list[tuple[dataclasses.Field, dict]]:
    return [(f, f.metadata["option"]) for f in dataclasses.fields(cls) if "option" in f.metadata]


def default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else dataclasses.MISSING


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """One argparse argument per `option` field of the dataclass `cls`: its own fields first, then those it shares
    with other commands through its bases (which --help then lists last)."""
    own = vars(cls).get("__annotations__", {})
    for field, meta in sorted(options_of(cls), key=lambda item: item[0].name not in own):
        default = default_of(field)
        kwargs: dict[str, Any] = {"help": meta["help"]}
        if meta["positional"]:
            parser.add_argument(field.name, nargs=meta["nargs"], metavar=meta["metavar"], **kwargs)
            continue
        names = [meta["flag"] or "--" + field.name.replace("_", "-"), *meta["aliases"]]
        if isinstance(default, bool):
            parser.add_argument(*names, dest=field.name, action="store_true", **kwargs)
            continue
        if meta["repeated"] is not None:
            kwargs.update(action="append", default=[])
        elif default is dataclasses.MISSING or meta["required"]:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
            if default is not None and not isinstance(default, (list, dict)):
                kwargs["help"] += f" (default: {default})"
        if meta["range"] is not None:
            kwargs["type"] = meta["range"].parse
        metavar = meta["metavar"] or (meta["flag"].lstrip("-").upper().replace("-", "_") if meta["flag"] else None)
        parser.add_argument(*names, dest=field.name, choices=meta["choices"], metavar=metavar, **kwargs)


def from_namespace(cls, namespace: argparse.Namespace, **values):
    """The dataclass `cls` from parsed flags (`values` for fields set otherwise)."""
    for field, meta in options_of(cls):
        if field.name in values or not hasattr(namespace, field.name):
            continue
        value = getattr(namespace, field.name)
        values[field.name] = meta["repeated"](value) if meta["repeated"] is not None else value
    return cls(**values)


def check_ranges(arguments) -> None:
    """ValueError naming the first field whose value is outside its range (None passes where None is the default)."""
    for field, meta in options_of(type(arguments)):
        value, optional = getattr(arguments, field.name), meta["optional"] or default_of(field) is None
        if meta["range"] is not None:
            meta["range"].check(field.name, value, optional=optional)
        if meta["choices"] is not None and value not in meta["choices"] and not (optional and value is None):
            raise ValueError(f"{field.name} must be one of {meta['choices']}, got {value!r}")
