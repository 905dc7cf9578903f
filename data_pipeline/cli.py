"""Command lines from dataclasses, for every CLI of the project (`tyro`).

A CLI is a dataclass; a nested dataclass is a group of flags ``--group.field`` (``--optim.dense_lr``;
``tyro.conf.OmitArgPrefixes`` drops the prefix), and each field's docstring is its ``--help``. On top
of tyro's own conventions, `parse` keeps the spellings the project's command lines have always used:

* ``--a-b`` and ``--a_b`` are the same flag (tyro);
* a boolean is ``--flag`` / ``--no-flag``, or, in a group marked ``tyro.conf.FlagConversionOff``, takes
  a value: ``--logging.progress false`` (true/false, yes/no, on/off, 1/0);
* a tuple of ints is a comma list (``--model.mlp_dims 64,32``), a ``dict[str, int]`` is
  ``NAME=INT,NAME=INT`` (``--vocab-sizes C3=100000,C12=50000``);
* ``renames`` maps a flag's old spelling to its field's (``{"--all-rows": "--no-positives-only"}``).

Errors: a flag tyro cannot parse (unknown, missing, not a number) is printed with the flag, the value
and the expected type, and the process exits with code 2 (tyro, as argparse did). A well-formed value
that breaks a rule is a `ConfigError` naming the flag, the value and the rule; every CLI exits with
code 2 on it too.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, TypeVar, get_args

import tyro
from tyro.constructors import ConstructorRegistry, PrimitiveConstructorSpec, PrimitiveTypeInfo

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad flag or config-file value. The message names the flag, the value and the rule."""


REGISTRY = ConstructorRegistry()
"""How the project's CLIs read booleans given as values, int tuples and dict flags."""

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _bool_from(args: list[str]) -> bool:
    word = args[0].strip().lower()
    if word in _TRUE + _FALSE:
        return word in _TRUE
    raise ValueError(f"expected true or false, got {args[0]!r}")


def _ints_from(args: list[str]) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in args[0].replace(" ", "").split(",") if x)
    except ValueError:
        raise ValueError(f"expected a comma-separated list of ints, got {args[0]!r}") from None


def _counts_from(args: list[str]) -> dict[str, int]:
    out = {}
    for part in filter(None, (p.strip() for p in args[0].split(","))):
        name, _, value = part.partition("=")
        try:
            out[name.strip()] = int(value)
        except ValueError:
            raise ValueError(f"expected NAME=INT pairs separated by commas, got {part!r}") from None
    return out


@REGISTRY.primitive_rule
def _bool_rule(info: PrimitiveTypeInfo) -> PrimitiveConstructorSpec | None:
    """A boolean that takes a value (tyro makes the others ``--flag/--no-flag``)."""
    if info.type is not bool:
        return None
    return PrimitiveConstructorSpec(
        nargs=1,
        metavar="{true,false}",
        instance_from_str=_bool_from,
        is_instance=lambda x: isinstance(x, bool),
        str_from_instance=lambda x: [str(x).lower()],
    )


@REGISTRY.primitive_rule
def _int_tuple_rule(info: PrimitiveTypeInfo) -> PrimitiveConstructorSpec | None:
    if info.type_origin is not tuple or get_args(info.type) != (int, ...):
        return None
    return PrimitiveConstructorSpec(
        nargs=1,
        metavar="INT,INT,...",
        instance_from_str=_ints_from,
        is_instance=lambda x: isinstance(x, tuple) and all(isinstance(i, int) for i in x),
        str_from_instance=lambda x: [",".join(map(str, x))],
    )


@REGISTRY.primitive_rule
def _str_int_dict_rule(info: PrimitiveTypeInfo) -> PrimitiveConstructorSpec | None:
    if info.type_origin is not dict or get_args(info.type) != (str, int):
        return None
    return PrimitiveConstructorSpec(
        nargs=1,
        metavar="NAME=INT,...",
        instance_from_str=_counts_from,
        is_instance=lambda x: isinstance(x, dict),
        str_from_instance=lambda x: [",".join(f"{k}={v}" for k, v in x.items())],
    )


def parse(
    cls: type[T],
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str | None = None,
    default: T | None = None,
    renames: dict[str, str] | None = None,
) -> T:
    """argv (None: sys.argv[1:]) -> an instance of the dataclass ``cls``, fields not given from
    ``default`` (else the dataclass defaults). Exits with code 2 on a flag it cannot parse."""
    args = list(sys.argv[1:] if argv is None else argv)
    if renames:
        args = [_rename(a, renames) for a in args]
    kwargs: dict[str, Any] = {"default": default} if default is not None else {}
    return tyro.cli(cls, args=args, prog=prog, description=description, registry=REGISTRY, **kwargs)


def _rename(arg: str, renames: dict[str, str]) -> str:
    flag, eq, value = arg.partition("=")
    return renames.get(flag, flag) + eq + value if flag.startswith("--") else arg
