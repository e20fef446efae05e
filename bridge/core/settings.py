"""How a setting is declared: once, on its struct field, with its environment name and bounds.

A subsystem's settings struct annotates each field as
``Annotated[int, Setting("BRIDGE_X", positive=True)]``. From that one declaration come the parser
of the environment string, the bound checks with their messages, ``check``'s listing and the
README table's names and defaults; msgspec ignores the annotation and keeps typing the field.
Pure: no environment, no files.
"""

from __future__ import annotations

import functools
import math
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal, get_args, get_origin

import msgspec

from bridge.core.outcome import parse_statuses
from bridge.core.secrets import Secret
from bridge.errors import ConfigError

__all__ = [
    "Declared",
    "Parser",
    "Setting",
    "check_bounds",
    "declared",
    "parse_env",
    "parse_name",
    "parse_names",
    "parse_secret",
    "parse_statuses_setting",
]

Parser = Callable[[str, str], Any]


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting's environment name, bounds and display, annotated on its struct field.

    ``positive``, ``ge`` and ``le`` are the bounds (``ge`` with ``le`` reads ``must be A..B``);
    ``note`` explains a ``>= 0``, ``at most`` or range bound; ``echo`` adds ``, got <value>`` to
    the ``positive`` and ``at least`` messages. ``parse`` replaces the parser the field's type
    implies; ``sees_blank`` makes a blank value reach it instead of meaning "unset".
    ``readme_default`` is the README's default cell when it is not the literal default (a
    computed or a descriptive one); ``redact`` hides URL credentials in ``check``.
    """

    env: str
    positive: bool = False
    ge: float | None = None
    le: float | None = None
    note: str = ""
    echo: bool = True
    parse: Parser | None = None
    sees_blank: bool = False
    readme_default: str | None = None
    redact: bool = False


@dataclass(frozen=True, slots=True)
class Declared:
    """A settings field with its declaration, its parser and its default."""

    field: str
    setting: Setting
    parser: Parser
    default: object

    def readme_default(self) -> str:
        """Return the README's default cell: the declared text, else the literal default."""
        if self.setting.readme_default is not None:
            return self.setting.readme_default
        value = self.default
        if value is None or value in ("", []):
            return ""
        if isinstance(value, bool):
            shown = str(value).lower()
        elif isinstance(value, float):
            shown = f"{value:g}"
        else:
            shown = str(value)
        return f"`{shown}`"


def parse_bool(variable: str, raw: str) -> bool:
    """Read true/false (1/0, yes/no, on/off), any case."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{variable} must be true or false, got {raw!r}", variable=variable)


def parse_int(variable: str, raw: str) -> int:
    """Read an integer, surrounding whitespace allowed."""
    try:
        return int(raw.strip())
    except ValueError:
        raise ConfigError(
            f"{variable} must be an integer, got {raw!r}", variable=variable
        ) from None


def parse_float(variable: str, raw: str) -> float:
    """Read a finite number, surrounding whitespace allowed."""
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{variable} must be a number, got {raw!r}", variable=variable) from None
    if not math.isfinite(value):
        raise ConfigError(f"{variable} must be a finite number, got {raw!r}", variable=variable)
    return value


def parse_str(variable: str, raw: str) -> str:
    """Keep text exactly as written: the loader refuses edge whitespace from every source."""
    del variable
    return raw


def parse_optional(variable: str, raw: str) -> str | None:
    """Keep text as written; empty means unset."""
    del variable
    return raw or None


def parse_secret(variable: str, raw: str) -> Secret:
    """Wrap the secret at once so it never travels as plain text."""
    del variable
    return Secret(raw.encode())


def parse_name(variable: str, raw: str) -> str:
    """Read a stream, group or consumer name; set but empty is refused, never defaulted."""
    if not raw.strip():
        raise ConfigError(
            f"{variable} is set but empty: give a name, or unset it to use the default",
            variable=variable,
        )
    return raw


def parse_names(variable: str, raw: str) -> list[str]:
    """Read a comma-separated list of names (a stray comma is fine); no name at all is refused."""
    names = [part.strip() for part in raw.split(",") if part.strip()]
    if not names:
        raise ConfigError(
            f"{variable} is set but lists no stream: list them, or unset it", variable=variable
        )
    return names


def parse_statuses_setting(variable: str, raw: str) -> list[int]:
    """Read an OUTBOUND_*_STATUSES list (``200-299,304,4xx``), naming the variable on error."""
    try:
        return parse_statuses(raw)
    except ValueError as exc:
        raise ConfigError(f"{variable}: {exc}", variable=variable) from None


_PARSERS: Final[dict[object, Parser]] = {
    bool: parse_bool,
    int: parse_int,
    float: parse_float,
    str: parse_str,
    str | None: parse_optional,
}


def _parser_for(field: str, kind: object, setting: Setting) -> Parser:
    """Return the parser a setting declares, or the one its type implies."""
    if setting.parse is not None:
        return setting.parse
    if get_origin(kind) is Literal:
        return parse_str
    parser = _PARSERS.get(kind)
    if parser is None:
        raise TypeError(f"{field}: no parser for {kind}; declare Setting(parse=...)")
    return parser


@functools.cache
def declared(struct: type[msgspec.Struct]) -> tuple[Declared, ...]:
    """Return the declared settings of a struct, in field order (undeclared fields skipped)."""
    hints = typing.get_type_hints(struct, include_extras=True)
    defaults = _defaults(struct)
    found: list[Declared] = []
    for field in struct.__struct_fields__:
        hint = hints[field]
        if get_origin(hint) is not Annotated:
            continue
        kind, *extras = get_args(hint)
        for setting in extras:
            if isinstance(setting, Setting):
                parser = _parser_for(field, kind, setting)
                found.append(Declared(field, setting, parser, defaults[field]))
    return tuple(found)


def _defaults(struct: type[msgspec.Struct]) -> dict[str, object]:
    """Each field's default value (a default factory is called once)."""
    fields = struct.__struct_fields__
    values: tuple[object, ...] = struct.__struct_defaults__
    padded = (None,) * (len(fields) - len(values)) + values
    result: dict[str, object] = {}
    for field, value in zip(fields, padded, strict=True):
        factory = getattr(value, "factory", None)
        result[field] = factory() if callable(factory) else value
    return result


def parse_env(
    struct: type[msgspec.Struct], environ: Mapping[str, str]
) -> Iterator[tuple[str, Any]]:
    """Yield (field, value) for each setting of ``struct`` set in ``environ``.

    A blank value means "unset" (compose's ``${VAR:-}``) unless the setting sees blanks (names
    refuse them, the secret is checked later).
    """
    for item in declared(struct):
        raw = environ.get(item.setting.env)
        if raw is not None and (raw.strip() or item.setting.sees_blank):
            yield item.field, item.parser(item.setting.env, raw)


def check_bounds(settings: msgspec.Struct) -> None:
    """Refuse a value outside its declared bounds, with the declared message; fields in order.

    A value that is not a finite number is left to the loader, which names it as such.
    """
    for item in declared(type(settings)):
        value = getattr(settings, item.field)
        if isinstance(value, int | float) and math.isfinite(value):
            _check_bound(item.setting, value)


def _check_bound(setting: Setting, value: float) -> None:
    """Raise ConfigError naming the setting when ``value`` breaks one of its bounds."""
    variable = setting.env
    note = f" ({setting.note})" if setting.note else ""
    got = f", got {value:g}" if setting.echo else ""
    message = ""
    if setting.positive and value <= 0:
        message = f"{variable} must be positive{got}"
    elif setting.ge is not None and setting.le is not None:
        if not setting.ge <= value <= setting.le:
            message = f"{variable} must be {_number(setting.ge)}..{_number(setting.le)}{note}"
    elif setting.ge is not None and value < setting.ge:
        at_least = f"{variable} must be at least {_number(setting.ge)}{got}"
        message = f"{variable} must be >= 0{note}" if setting.ge == 0 else at_least
    elif setting.le is not None and value > setting.le:
        message = f"{variable} must be at most {_number(setting.le)}{note}"
    if message:
        raise ConfigError(message, variable=variable)


def _number(bound: float) -> str:
    """Write a bound as operators do: ``5``, ``300``, ``0.5``."""
    return str(int(bound)) if bound == int(bound) else f"{bound:g}"
