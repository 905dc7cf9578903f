"""Command lines from dataclasses, for every CLI of the project (`tyro`).

A CLI is a dataclass; a nested dataclass is a group of flags ``--group.field`` (``--optim.dense_lr``;
``tyro.conf.OmitArgPrefixes`` drops the prefix), and each field's docstring is its ``--help``. On top
of tyro's own conventions, `parse` keeps the spellings the project's command lines have always used:

* ``--a-b`` and ``--a_b`` are the same flag (tyro);
* a boolean is ``--flag`` / ``--no-flag``, or, in a group marked ``tyro.conf.FlagConversionOff``, takes
  a value: ``--logging.progress false`` (true/false, yes/no, on/off, 1/0);
* a tuple of ints is a comma list (``--model.mlp_dims 64,32``), a ``dict[str, int]`` is
  ``NAME=INT,NAME=INT`` (``--vocab-sizes C3=100000,C12=50000``);
* ``renames`` maps a flag's old spelling to its field's (``{"--all-rows": "--no-positives-only"}``);
* ``config_flag`` (``--config FILE``) reads a JSON file written by `write_config` (``asdict`` of the
  dataclass) as the defaults, and the flags given beside it override them: how one stage hands another
  its whole configuration (``launch.compare`` -> ``store.tokenizer``).

Errors: a flag tyro cannot parse (unknown, missing, not a number) is printed with the flag, the value
and the expected type, and the process exits with code 2 (tyro, as argparse did). A well-formed value
that breaks a rule is a `ConfigError` naming the flag, the value and the rule; every CLI exits with
code 2 on it too, as on a config file that cannot be read or names an unknown key.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

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
    config_flag: str | None = None,
) -> T:
    """argv (None: sys.argv[1:]) -> an instance of the dataclass ``cls``, fields not given from
    ``default`` (else the dataclass defaults). With ``config_flag`` (a field of ``cls`` spelled as a flag,
    ``--config``) the JSON file it names gives the defaults instead. Exits with code 2 on a flag it
    cannot parse or a config file it cannot read."""
    args = list(sys.argv[1:] if argv is None else argv)
    if renames:
        args = [_rename(a, renames) for a in args]
    path = _flag_value(args, config_flag) if config_flag else None
    if path is not None:
        try:
            default = read_config(cls, path, config_flag or "")
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
    kwargs: dict[str, Any] = {"default": default} if default is not None else {}
    return tyro.cli(cls, args=args, prog=prog, description=description, registry=REGISTRY, **kwargs)


def _rename(arg: str, renames: dict[str, str]) -> str:
    flag, eq, value = arg.partition("=")
    return renames.get(flag, flag) + eq + value if flag.startswith("--") else arg


def _flag_value(args: list[str], flag: str) -> str | None:
    """The value of ``flag`` in ``args`` (``--flag V`` or ``--flag=V``; the last one wins), else None."""
    value = None
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg[len(flag) + 1 :]
    return value


def write_config(obj: Any, path: str | Path) -> Path:
    """The dataclass ``obj`` as a JSON file that ``parse(..., config_flag=...)`` reads back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataclasses.asdict(obj), indent=2) + "\n")
    return path


def read_config(cls: type[T], path: str | Path, flag: str = "--config") -> T:
    """The dataclass ``cls`` from a JSON file written by `write_config`: ConfigError naming ``flag``,
    the file and the key when it cannot be read or does not fit ``cls``."""
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{flag} {path}: cannot read a JSON config ({e})") from None
    return from_dict(cls, values, f"{flag} {path}")


def from_dict(cls: type[T], values: Any, where: str) -> T:
    """A dataclass ``cls`` from a JSON object as ``dataclasses.asdict`` wrote it (nested dataclasses from
    nested objects, tuples from lists; a missing key keeps its default). ConfigError naming ``where``
    and the key for an unknown key or a missing required field."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected an object, got {type(values).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown key {key!r}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            value = from_dict(hint, value, f"{where}: {key}")
        elif get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None
