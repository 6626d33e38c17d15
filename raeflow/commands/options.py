"""Click options generated from settings dataclasses: one source of truth for names, types, defaults, help.

    @click.command("embed")
    @settings_options(EmbedConfig)
    def embed(**options):
        config = settings_from(EmbedConfig, options)

Every field of the dataclass becomes `--field-name` (its one-line docstring is the help, its
default the default, its type the option's type); a nested settings dataclass (`run: RunOptions`)
contributes its own fields, with the defaults of the parent's default instance (denoise's batch
size is not embed's). `OptionSpec` renames a field's option, adds choices or aliases, or turns it
into an argument. Fields typed `tuple[int, int]` take `H` or `HxW` (`--image-size 32x48`).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import click

from raeflow import console
from raeflow.train.config import parse_image_size  # the one parser of H[xW] sizes

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


@dataclass(frozen=True)
class OptionSpec:
    """How one settings field differs from the generated `--field-name` option."""

    names: tuple[str, ...] = ()
    """Option names to use instead of `--field-name` (the first is the one help shows first)."""
    argument: bool = False
    """A positional argument (named by `metavar`) instead of an option."""
    choices: tuple[str, ...] = ()
    """The only values accepted."""
    metavar: str | None = None
    """What the value looks like in the help (URI, N, H[xW])."""
    multiple: bool = False
    """The option may be given several times (the field receives a tuple, or what `parse` makes)."""
    parse: Callable[[Any], Any] | None = None
    """Turns the parsed value into the field's value (raising `ConfigError` for a bad one)."""
    help: str | None = None
    """Help text instead of the field's docstring."""
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Further `click.option` arguments."""


def field_help(cls: type) -> dict[str, str]:
    """The docstring under each field of dataclass `cls`, by field name, as one line."""
    return dict(_field_help(cls))


@cache
def _field_help(cls: type) -> tuple[tuple[str, str], ...]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = []
    for node, following in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs.append((node.target.id, " ".join(following.value.value.split())))
    return tuple(docs)


def option_name(name: str) -> str:
    """`batch_size` -> `--batch-size`."""
    return "--" + name.replace("_", "-")


def _nested(hint: Any) -> type | None:
    """The settings dataclass a field holds, if it holds one."""
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def _plain_type(hint: Any) -> Any:
    """`int | None` -> int; other hints unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _default_of(owner: Any, cls: type, f: dataclasses.Field) -> Any:
    """The default of field `f`: from `owner` (the parent's default instance) when given."""
    if owner is not None:
        return getattr(owner, f.name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _fields(
    cls: type, skip: Iterable[str], owner: Any = None
) -> list[tuple[dataclasses.Field, Any, Any, type]]:
    """(field, type hint, default, owning class) of every option-bearing field, nested ones flattened."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        hint = hints[f.name]
        default = _default_of(owner, cls, f)
        nested = _nested(hint)
        if nested is not None:
            rows += _fields(nested, skip, default if default is not dataclasses.MISSING else None)
        else:
            rows.append((f, hint, default, cls))
    return rows


def _make_option(f: dataclasses.Field, hint: Any, default: Any, owner: type, spec: OptionSpec) -> Decorator:
    """One click option (or argument) for one field."""
    kind = _plain_type(hint)
    help_text = spec.help or field_help(owner).get(f.name, "")
    kwargs: dict[str, Any] = dict(spec.kwargs)
    if spec.metavar:
        kwargs["metavar"] = spec.metavar
    required = default is dataclasses.MISSING
    callback: Callable[[Any], Any] | None = None
    if spec.choices:
        kwargs["type"] = click.Choice(spec.choices)
    elif kind is bool:
        kwargs["is_flag"] = True
    elif typing.get_origin(kind) is tuple and typing.get_args(kind) == (int, int):  # an H[xW] size
        kwargs.setdefault("metavar", "H[xW]")
        default = None if default in (None, dataclasses.MISSING) else "x".join(str(v) for v in default)
        callback = parse_image_size
    elif kind in (int, float, str):
        kwargs["type"] = kind
    if spec.parse is not None:
        callback = spec.parse
    if spec.multiple:
        kwargs["multiple"] = True
        default = ()
    if callback is not None:
        parse = callback
        kwargs["callback"] = lambda _ctx, _param, value: parse(value)
    if spec.argument:
        kwargs.setdefault("metavar", f.name.upper())
        return click.argument(f.name, **kwargs)
    if required:
        kwargs["required"] = True
    elif default is not dataclasses.MISSING:
        # An empty tuple default of a single-valued option means "not given" (click would pass "()").
        kwargs["default"] = None if default == () and not spec.multiple else default
        if default not in (None, False, ()):
            kwargs["show_default"] = True
    names = spec.names or (option_name(f.name),)
    return click.option(*names, f.name, help=help_text, **kwargs)


def settings_options(
    cls: type, *, skip: Iterable[str] = (), specs: Mapping[str, OptionSpec] | None = None
) -> Decorator:
    """A decorator adding one option per field of settings dataclass `cls` (nested ones included)."""
    specs = specs or {}
    decorators = [
        _make_option(f, hint, default, owner, specs.get(f.name, OptionSpec()))
        for f, hint, default, owner in _fields(cls, tuple(skip))
    ]

    def apply(func: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


def settings_from(cls: type, options: Mapping[str, Any], *, owner: Any = None, **fixed: Any) -> Any:
    """Build `cls` from parsed options (fields without an option keep their default; `fixed` wins)."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        nested = _nested(hints[f.name])
        if f.name in fixed:
            kwargs[f.name] = fixed[f.name]
        elif nested is not None:
            default = _default_of(owner, cls, f)
            inner = default if default is not dataclasses.MISSING else None
            kwargs[f.name] = settings_from(nested, options, owner=inner, **fixed)
        elif f.name in options:
            kwargs[f.name] = options[f.name]
        elif owner is not None:
            kwargs[f.name] = getattr(owner, f.name)
    return cls(**kwargs)


def _set_level(level: console.Level) -> Callable[[click.Context, click.Parameter, bool], None]:
    def callback(ctx: click.Context, _param: click.Parameter, on: bool) -> None:
        if not on:
            return
        other = ctx.meta.get("raeflow.console")
        if other and other != level:
            raise click.UsageError("--quiet and --verbose exclude each other")
        ctx.meta["raeflow.console"] = level
        console.set_level(level)

    return callback


VERBOSE_HELP = (
    "Also show Ray's own log lines. Without it they stay in Ray's log folder: the session's logs/ "
    "folder (/tmp/ray/session_latest/logs for a local Ray; raeflow-driver.log holds this command's)."
)


def console_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """`--quiet` (summary and errors only) and `--verbose` (Ray's log lines too) for a long command."""
    func = click.option(
        "--verbose", "-v", is_flag=True, expose_value=False, callback=_set_level("verbose"), help=VERBOSE_HELP
    )(func)
    return click.option(
        "--quiet",
        "-q",
        is_flag=True,
        expose_value=False,
        callback=_set_level("quiet"),
        help="Show only the summary and errors (no progress).",
    )(func)
