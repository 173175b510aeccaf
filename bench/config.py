"""One config style for every CLI of the project: a dataclass whose fields carry their help text.

``option(default, help, choices=...)`` declares a field; ``add_arguments(parser, Config)`` turns the fields into
``--field-name`` options (booleans as ``--flag / --no-flag``); ``from_namespace(Config, args)`` builds the config
back. ``bench.run``, ``bench.sweep_lambda`` and ``distill.train`` all follow it, so a config is saved, compared and
printed the same way everywhere (``dataclasses.asdict``).
"""

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable

from bench.errors import UserError


def option(default, help: str, **metadata):
    """A dataclass field with its command-line help (and optional ``choices``, ``required``)."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def add_arguments(parser: argparse.ArgumentParser, cls, skip: Iterable[str] = ()) -> None:
    """One ``--field-name`` per dataclass field of ``cls`` (except ``skip``), help and choices from its metadata."""
    hints = typing.get_type_hints(cls)
    for spec in dataclasses.fields(cls):
        if spec.name in skip:
            continue
        flag, kind = "--" + spec.name.replace("_", "-"), hints[spec.name]
        text = spec.metadata.get("help", "")
        if isinstance(kind, types.UnionType):  # "X | None": the value type is X
            kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=spec.default, help=text)
            continue
        shown = " (default: %(default)s)" if spec.default is not None else ""
        parser.add_argument(flag, type=kind, default=spec.default, choices=spec.metadata.get("choices"),
                            required=spec.metadata.get("required", False), help=text + shown)


def from_namespace(cls, namespace: argparse.Namespace):
    """The dataclass ``cls`` from parsed arguments (fields missing from the namespace keep their defaults)."""
    return cls(**{spec.name: getattr(namespace, spec.name) for spec in dataclasses.fields(cls)
                  if hasattr(namespace, spec.name)})


def changed_from_default(config, names: Iterable[str]) -> list[str]:
    """The ``--options`` among ``names`` whose value differs from the field's default."""
    defaults = {spec.name: spec.default for spec in dataclasses.fields(config)}
    return ["--" + name.replace("_", "-") for name in names if getattr(config, name) != defaults[name]]


def refuse_unused(config, names: Iterable[str], why: str) -> None:
    """An option the run would silently ignore is an error: the user believes it applied."""
    if used := changed_from_default(config, names):
        raise UserError(f"{', '.join(used)} {why}")
