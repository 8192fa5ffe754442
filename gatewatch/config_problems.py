"""Config problems in the user's terms: pydantic's validation errors turned into `field.path: message` lines.

pydantic speaks about Python types ("Input should be a valid tuple", "Input tag 'ratelimit' found using 'type'
does not match any of the expected tags"); the file's author wrote YAML. Each error becomes one line that names
the field by its path in the file, says what was expected and what was found in YAML words (a mapping, a list,
a string), and, for a misspelt key or value, suggests the closest valid one ("unknown key; did you mean
'timeouts'?"). A union's branches (`issuer: str | list`) are reported as one problem, not one per branch.

Primitives: `pydantic_problems(err, root) -> list[str]` (the lines, in pydantic's order), `format_path(parts)`
(`edge.routes[0].timeouts`; a key that is not a plain word is quoted: `set["X Y"]`), `describe(value)` (a
value as the user wrote it: "the string 'x'", "a list"), `closest(word, choices)` (the "did you mean").
"""

from __future__ import annotations

import difflib
import math
import re
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from gatewatch.schema import NAME_PATTERN

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")
_QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'")
# Error types that say only "this is not the right kind of value": on a union branch, the input took another one.
_SHAPES = {"string_type": "a string", "int_type": "an integer", "int_parsing": "an integer",
           "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false",
           "bool_parsing": "true or false", "tuple_type": "a list", "list_type": "a list", "set_type": "a list",
           "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
           "literal_error": "", "enum": "", "none_required": "null"}


def describe(value: Any) -> str:
    """A value as the YAML author wrote it."""
    if value is None:
        return "null (an empty value)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"the number {value}" if len(str(value)) <= 40 else "a very long number"
    if isinstance(value, str):
        return f"the string {value[:60]!r}" + ("..." if len(value) > 60 else "")
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__} ({str(value)[:40]})"  # YAML dates and timestamps


def format_path(parts: list[Any]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        elif isinstance(part, str) and _PLAIN_KEY.fullmatch(part):
            out += ("." if out else "") + part
        else:
            text = part if isinstance(part, str) else str(part)
            out += '["' + text.replace("\\", "\\\\").replace('"', '\\"')[:60] + '"]'
    return out or "(root)"


def closest(word: Any, choices: list[str]) -> str | None:
    """The choice `word` most likely misspells (difflib's ratio at least 0.6), or None."""
    if not isinstance(word, str) or not choices:
        return None
    found = difflib.get_close_matches(word, choices, n=1, cutoff=0.6) or \
        difflib.get_close_matches(word.lower().replace("-", "_"), choices, n=1, cutoff=0.6)
    if found:
        return found[0]
    starts = [c for c in choices if len(word) >= 3 and c.lower().startswith(word.lower())]  # 'http' → 'http/protobuf'
    return starts[0] if len(starts) == 1 else None


# --- where an error's location points in the model -----------------------------------------------------------

def _unwrap(tp: Any) -> tuple[Any, list[Any] | None, str | None]:
    """(the type, its union members or None, the union's discriminator) with Annotated and `| None` removed."""
    discriminator = None
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp, *meta = get_args(tp)
            discriminator = next((m.discriminator for m in meta if getattr(m, "discriminator", None)), discriminator)
            continue
        if origin is Union or origin is types.UnionType:
            members = [m for m in get_args(tp) if m is not type(None)]
            if len(members) == 1:
                tp = members[0]
                continue
            return tp, members, discriminator
        return tp, None, None


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _keys(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _field_type(model: type[BaseModel], key: Any) -> Any:
    for name, f in model.model_fields.items():
        if key in (name, f.alias):
            return Annotated[f.annotation, f] if f.discriminator else f.annotation
    return None


def _tag_of(tag: str) -> str:
    """pydantic names a union branch by its type (`str`, `tuple[str, ...]`, `M`, `function-after[f(), float]`)."""
    if tag.startswith("function-"):
        tag = tag.rsplit("), ", 1)[-1].rstrip("]")
    return tag.split("[", 1)[0].lower()


def _branch(members: list[Any], tag: str) -> Any:
    want = _tag_of(tag)
    for m in members:
        base, _, _ = _unwrap(m)
        origin = get_origin(base)
        name = "literal" if origin is Literal else getattr(origin or base, "__name__", "")
        if name.lower() == want:
            return m
    return None


def _tag_values(member: Any, discriminator: str | None) -> tuple[Any, ...]:
    base, _, _ = _unwrap(member)
    f = base.model_fields.get(discriminator) if _is_model(base) and discriminator else None
    return get_args(f.annotation) if f is not None else ()


def _tagged(members: list[Any], discriminator: str, tag: Any) -> Any:
    return next((m for m in members if tag in _tag_values(m, discriminator)), None)


class _Where:
    """An error's location read against the model: the path shown, the model owning its last key, and the
    union it went through (the loc up to the branch's tag), if any."""

    def __init__(self, root: type[BaseModel], loc: tuple[Any, ...]):
        self.parts: list[Any] = []
        self.owner: type[BaseModel] | None = None
        self.union: tuple[Any, ...] | None = None
        self.branch_depth = 0  # loc parts after the branch's tag
        tp: Any = root
        for i, part in enumerate(loc):
            if self.union is not None:
                self.branch_depth += 1
            base, members, discriminator = _unwrap(tp) if tp is not None else (None, None, None)
            if members is not None and discriminator:
                tp = _tagged(members, discriminator, part)
                self.parts.append(part)  # kept: names the type (`policies[0].jwt.issuer`)
                continue
            if members is not None:
                if self.union is None:
                    self.union, self.branch_depth = loc[:i], 0
                tp = _branch(members, part) if isinstance(part, str) else None
                continue
            if isinstance(part, str) and part.startswith("function-"):  # a validator's wrapper, not a key
                continue
            self.parts.append(part)
            if _is_model(base):
                self.owner = base
                tp = _field_type(base, part)
            elif get_origin(base) in (tuple, list) and isinstance(part, int):
                args = [a for a in get_args(base) if a is not Ellipsis]
                tp = args[0] if args else None
            elif get_origin(base) is dict:
                args = get_args(base)
                tp = args[1] if len(args) == 2 else None
            else:
                tp = None

        self.type = tp  # what the last part points at (None: not in the model)

    @property
    def path(self) -> str:
        return format_path(self.parts)


# --- one message per error -----------------------------------------------------------------------------------

def _yaml_hint(value: Any, expected: list[str] | None = None) -> str:
    if isinstance(value, bool):
        return " (YAML reads unquoted yes/no/on/off/true/false as a boolean: quote it)"
    if isinstance(value, (int, float)) and expected is not None and str(value) in expected:
        return f" (YAML reads it as a number: quote it, '{value}')"
    if expected is None and value is not None and not isinstance(value, (str, list, tuple, dict)):
        return " (quote it)"  # a number, or a YAML date or timestamp
    return ""


def _choices(expected: str) -> list[str]:
    return [c.replace("\\'", "'") for c in _QUOTED.findall(expected)]


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return describe(value) if isinstance(value, str) else str(value)


def _bound(value: Any, relation: str, limit: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return f"expected a finite number, got {value}"
    return f"must be {relation} {_number(limit)}, got {_number(value)}"


def _message(e: dict, where: _Where) -> str:
    """One branch per pydantic error type (a flat table); anything unlisted keeps pydantic's text."""
    kind, ctx, value = e["type"], e.get("ctx") or {}, e.get("input")
    if kind == "extra_forbidden":
        known = _keys(where.owner) if where.owner else []
        hint = closest(where.parts[-1] if where.parts else None, known)
        if hint:
            return f"unknown key; did you mean {hint!r}?"
        return "unknown key" + (f" (valid keys here: {', '.join(known)})" if known else "")
    if kind == "missing":
        return "missing required key"
    if kind == "union_tag_invalid":
        choices = _choices(ctx.get("expected_tags", ""))
        tag = value.get(ctx.get("discriminator", "").strip("'")) if isinstance(value, dict) else ctx.get("tag")
        hint = closest(tag, choices)
        if not isinstance(tag, str):
            return f"expected one of: {', '.join(choices)}; got {describe(tag)}"
        return f"unknown type {tag!r}" + (
            f"; did you mean {hint!r}?" if hint else f" (known types: {', '.join(choices)})")
    if kind == "union_tag_not_found":
        _, members, discriminator = _unwrap(where.type) if where.type is not None else (None, None, None)
        tags = [t for m in members or () for t in _tag_values(m, discriminator)]
        return "missing required key" + (f" (one of: {', '.join(tags)})" if tags else "")
    if kind in ("literal_error", "enum"):
        choices = _choices(ctx.get("expected", ""))
        hint = closest(value, choices) if isinstance(value, str) else None
        return f"expected {ctx.get('expected', '?')}, got {describe(value)}" + \
            (f"; did you mean {hint!r}?" if hint and hint != value else _yaml_hint(value, choices))
    if kind in ("tuple_type", "list_type", "set_type"):
        hint = " (write each item on its own line starting with '- ')" if isinstance(value, dict) else \
            f" (write it as a list: [{value}])" if isinstance(value, str) and value and "\n" not in value else ""
        return f"expected a list, got {describe(value)}{hint}"
    if kind in ("dict_type", "model_type", "model_attributes_type", "dataclass_type"):
        hint = " (its items are mappings: remove the '- ' before the keys)" if isinstance(value, list) and value \
            and all(isinstance(v, dict) for v in value) else ""
        return f"expected a mapping (key: value), got {describe(value)}{hint}"
    if _SHAPES.get(kind):
        return f"expected {_SHAPES[kind]}, got {describe(value)}" + (
            _yaml_hint(value) if kind == "string_type" else "")
    if kind == "int_from_float":
        return f"expected a whole number, got {value}"
    if kind == "finite_number":
        return f"expected a finite number, got {value}"
    if kind == "greater_than":
        return _bound(value, "greater than", ctx.get("gt"))
    if kind == "greater_than_equal":
        return _bound(value, "greater than or equal to", ctx.get("ge"))
    if kind == "less_than":
        return _bound(value, "less than", ctx.get("lt"))
    if kind == "less_than_equal":
        return _bound(value, "less than or equal to", ctx.get("le"))
    if kind == "too_short":
        n = ctx.get("min_length", 1)
        return "must not be empty" if n == 1 else f"must have at least {n} items"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} items, got {ctx.get('actual_length')}"
    if kind == "string_too_short":
        n = ctx.get("min_length", 1)
        return "must not be empty" if n == 1 else f"must be at least {n} characters"
    if kind == "string_too_long":
        got = f", got {len(value)}" if isinstance(value, str) else ""
        return f"must be at most {ctx.get('max_length')} characters{got}"
    if kind == "string_pattern_mismatch":
        if ctx.get("pattern") == NAME_PATTERN:
            return (f"{value!r} is not a valid name: 1 to 63 letters, digits, '_', '.' or '-', starting with a "
                    "letter or digit (names become metric labels)")
        return f"{value!r} should match pattern {ctx.get('pattern')!r}"
    if kind == "value_error":
        return str(ctx.get("error") or e["msg"].removeprefix("Value error, "))
    if kind == "assertion_error":
        return e["msg"].removeprefix("Assertion failed, ")
    msg = e["msg"]
    return msg[:1].lower() + msg[1:]


# --- the whole list -----------------------------------------------------------------------------------------

def _merge(items: list[tuple[dict, _Where]]) -> list[str]:
    """A value that fits no branch of a union gives one error per branch. Keep the branch the value took (its
    errors are inside it, or are not about the value's shape); if it took none, one line says what fits."""
    took = [(e, w) for e, w in items if w.branch_depth > 0 or e["type"] not in _SHAPES]
    if took:
        return [f"{w.path}: {_message(e, w)}" for e, w in took]
    shapes: list[str] = []
    for e, _ in items:
        shape = _SHAPES[e["type"]] or (e.get("ctx") or {}).get("expected", "")
        if shape and shape not in shapes:
            shapes.append(shape)
    e, w = items[0]
    expected = ", ".join(shapes[:-1]) + " or " + shapes[-1] if len(shapes) > 1 else shapes[0] if shapes else "?"
    return [f"{w.path}: expected {expected}, got {describe(e.get('input'))}"]


def pydantic_problems(err: ValidationError, root: type[BaseModel]) -> list[str]:
    """One line per problem, `path: message`, in pydantic's order (a union's branches merged where the first
    of them stood)."""
    errors = err.errors(include_url=False)
    # A list whose only items are invalid is also reported "too short" (its valid items count 0): noise that
    # would tell the user an item is missing when it is present but broken. Keep the item's own error.
    locs = [tuple(e["loc"]) for e in errors]
    errors = [e for e in errors if not (e["type"] == "too_short" and any(
        len(loc) > len(e["loc"]) and loc[:len(e["loc"])] == tuple(e["loc"]) for loc in locs))]
    lines: list[str | tuple[Any, ...]] = []  # a problem, or the key of a union's group (filled in below)
    unions: dict[tuple[Any, ...], list[tuple[dict, _Where]]] = {}
    for e in errors:
        loc = tuple(e["loc"])
        if e["type"] == "invalid_key" or loc[-1:] == ("[key]",):  # a mapping's key, not its value, is wrong
            loc = loc[:-1] if e["type"] == "invalid_key" else loc[:-2]
            key = e["loc"][-1] if e["type"] == "invalid_key" else e.get("input")
            what = f"is not a string: quote it ('{key}')" if e["type"] in ("invalid_key", "string_type") \
                else f"is not valid: {e['msg']}"  # every mapping in the file has string keys: not seen
            lines.append(f"{_Where(root, loc).path}: the key {key} {what}")
            continue
        where = _Where(root, loc)
        if e["type"] in ("union_tag_invalid", "union_tag_not_found"):
            where.parts.append(str((e.get("ctx") or {}).get("discriminator", "type")).strip("'"))
        if where.union is None:
            lines.append(f"{where.path}: {_message(e, where)}")
            continue
        if where.union not in unions:
            unions[where.union] = []
            lines.append(where.union)
        unions[where.union].append((e, where))
    problems: list[str] = []
    for line in lines:
        problems.extend([line] if isinstance(line, str) else _merge(unions[line]))
    return list(dict.fromkeys(problems))
