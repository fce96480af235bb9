"""Config errors: pydantic's ValidationErrors as one-line :class:`~relay.errors.ConfigError` text.

:func:`explain` turns each error into ``WHERE: WHAT``: the file (or the variable or
override the value came from), the key path as written in the file, what was
expected and, unless it may be a secret, what was found::

    relay.toml: destinations.convertr.campaign_id: expected an integer, got 'abc'
    environment: RELAY_PORT: expected an integer between 1 and 65535, got 'abc'

It walks the settings types to find bounds and allowed keys; the root model is
passed in (``relay.settings`` imports this module, not the other way round).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic.fields import FieldInfo

__all__ = ["dotted", "explain"]

#: What a pydantic error type (or its first word) expected: ``{number}`` comes from
#: the field's bounds, other ``{names}`` from the error's context.
_EXPECTED = {"int": "{number}", "float": "{number}", "greater": "{number}", "less": "{number}"}
_EXPECTED |= {"bool": "true or false", "string": "a string", "list": "a list", "dict": "a table"}
_EXPECTED |= {"model": "a table", "literal": "{expected}", "union": "one of {expected_tags}"}
_EXPECTED |= {"too_short": "at least {min_length} item(s)", "path": "a path"}
_SCALARS = (str, int, float, bool)


def explain(
    exc: ValidationError,
    label: str,
    origins: Mapping[tuple[str | int, ...], str],
    *,
    root: type[BaseModel],
    hidden: Collection[str] = (),
) -> str:
    """One line per pydantic error: where, what was expected, what was found.

    ``exc`` came from validating ``root``; ``label`` names the file for paths
    ``origins`` does not claim (``origins`` maps a key path to the variable or
    override it came from). ``hidden`` keys of ``root`` are never suggested.
    """
    lines = []
    for err in exc.errors(include_url=False):
        kind, ctx, found = err["type"], err.get("ctx", {}), err["input"]
        path, holder, tp, meta = _resolve(err["loc"], root)
        if kind.startswith("union_tag_"):  # reported on the table, not on its ``type`` key
            path.append(str(ctx["discriminator"]).strip("'"))
            found = ctx.get("tag")
        if kind in ("missing", "union_tag_not_found"):
            text = "required key is missing"
        elif kind == "extra_forbidden":
            allowed = set(holder.model_fields) - (set(hidden) if holder is root else set())
            text = f"unknown key (allowed: {', '.join(sorted(allowed))})"
        elif kind == "value_error":
            text = str(ctx["error"])  # our validators write the whole message
        elif template := _EXPECTED.get(kind) or _EXPECTED.get(kind.split("_")[0]):
            strings = {k: str(v).replace("'", "") for k, v in ctx.items()}
            text = "expected " + template.format(number=_number(tp, meta), **strings)
            if tp is not SecretStr and (  # never echo a secret, nor a table that may hold one
                isinstance(found, _SCALARS)
                or (isinstance(found, list) and all(isinstance(v, _SCALARS) for v in found))
            ):
                text += f", got {found!r}"[:120]
        else:
            text = err["msg"][:1].lower() + err["msg"][1:]
        where = label + (f": {dotted(path)}" if path else "")
        for n in range(len(path), 0, -1):  # a value that came from the environment or overrides
            if origin := origins.get(tuple(path[:n])):
                where = origin + dotted(path[n:], lead=True)
                break
        lines.append(f"{where}: {text}")
    return "\n".join(lines)


def dotted(keys: tuple[str | int, ...] | list[str | int], *, lead: bool = False) -> str:
    """``destinations.crm.events[0]``; with ``lead``, a leading dot too."""
    out = ""
    for key in keys:
        out += f"[{key}]" if isinstance(key, int) else f".{key}" if out or lead else key
    return out


def _resolve(
    loc: tuple[str | int, ...], root: type[BaseModel]
) -> tuple[list[str | int], type[BaseModel], Any, list[Any]]:
    """Walk ``loc`` through the types under ``root``.

    Gives the key path as written in the file (pydantic's union tags dropped),
    the model holding the last key, the type found there and its constraints.
    """
    path: list[str | int] = []
    tp: Any = root
    holder: type[BaseModel] = root
    meta: list[Any] = []
    for item in loc:
        tp, meta = _unwrap(tp, meta)
        origin = get_origin(tp)
        if origin in (Union, UnionType):  # the destination union: ``item`` is its ``type``
            tags = {get_args(m.model_fields["type"].annotation)[0]: m for m in get_args(tp)}
            tp = tags.get(item)
            continue
        path.append(item)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            holder, field = tp, tp.model_fields.get(str(item))
            tp, meta = (field.annotation, list(field.metadata)) if field else (None, [])
        else:
            tp, meta = (get_args(tp)[-1] if origin in (dict, list) else None), []
    return path, holder, *_unwrap(tp, meta)


def _unwrap(tp: Any, meta: list[Any]) -> tuple[Any, list[Any]]:
    """Strip ``Annotated`` (keeping its constraints) and ``| None``."""
    while True:
        args = get_args(tp)
        if get_origin(tp) is Annotated:
            tp = args[0]
            meta = meta + [
                x for m in args[1:] for x in (m.metadata if isinstance(m, FieldInfo) else [m])
            ]
        elif get_origin(tp) in (Union, UnionType) and len(args) == 2 and type(None) in args:
            tp = args[0] if args[1] is type(None) else args[1]
        else:
            return tp, meta


def _number(tp: Any, meta: list[Any]) -> str:
    """``an integer between 1 and 65535``, ``a number > 0 and <= 120``, ..."""
    bounds = {k: getattr(m, k) for m in meta for k in ("gt", "ge", "lt", "le") if hasattr(m, k)}
    noun = "an integer" if tp is int else "a number"
    if bounds.keys() == {"ge", "le"}:
        return f"{noun} between {bounds['ge']} and {bounds['le']}"
    ops = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    return " ".join([noun, " and ".join(f"{ops[k]} {v}" for k, v in bounds.items())]).strip()
