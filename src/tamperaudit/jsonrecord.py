"""Typed JSON records: dataclasses that write and read themselves, checked field by field.

A record is a dataclass whose class derives from ``Record``. Its fields' type hints say
what the JSON may hold, and the same hints give the JSON Schema (``json_schema``), so
the file format is written down once, in the types. Supported hints: ``int``, ``float``
(an int is a number too, and is kept as written), ``str``, ``bool``, ``None``, ``Literal``,
``list[T]``, ``tuple[T, ...]``, ``dict[str, T]``, unions (``A | B``), other records, and
``Scalar`` (any JSON scalar).

Field options, given through ``field(metadata=...)`` or the helpers below:

- ``doc``: what the field means; it becomes the schema's ``description``;
- ``omit_none``: the key is left out of the JSON when the value is None (and may be
  missing when read), for keys that only some records carry;
- ``digits``: floats are rounded to this many decimals when written.

``from_json`` rejects unknown keys, missing keys and values of the wrong type, naming
the path of the first bad value (``points[2].metrics.kl.mean: expected a number, got
'x'``), so a damaged or foreign file is caught when read, not deep inside a renderer.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

# Any JSON scalar: for values whose kind varies by design (a judge's identity pins).
Scalar = Union[str, int, float, bool, None]
_SCALAR_TYPES = (str, int, float, bool, type(None))

R = TypeVar("R", bound="Record")


class RecordError(ValueError):
    """A JSON value that does not fit its record type; the message names where."""


def field(doc: str, *, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING,
          omit_none: bool = False, digits: int | None = None) -> Any:
    """A record field with its documentation and JSON options."""
    metadata = {"doc": doc, "omit_none": omit_none, "digits": digits}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def optional(doc: str, digits: int | None = None) -> Any:
    """A field that only some records carry: None, and absent from the JSON, when not given."""
    return field(doc, default=None, omit_none=True, digits=digits)


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fields(cls: type) -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(cls)


def _is_record(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, Record)


def _union_members(kind: Any) -> tuple[Any, ...] | None:
    if get_origin(kind) in (Union, types.UnionType):
        return get_args(kind)
    return None


class Record:
    """Base of every typed record; subclasses are dataclasses."""

    # For the schema: a title for the record's definition (the class name by default).
    schema_title: ClassVar[str | None] = None

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-ready values, keys in field order."""
        out: dict[str, Any] = {}
        for item in _fields(type(self)):
            value = getattr(self, item.name)
            if value is None and item.metadata.get("omit_none"):
                continue
            out[item.name] = _dump(value, item.metadata.get("digits"))
        return out

    @classmethod
    def from_json(cls: type[R], data: Any, where: str = "") -> R:
        """The record read from JSON values, every field checked against its type."""
        return _load_record(cls, data, where)


def _dump(value: Any, digits: int | None = None) -> Any:
    if isinstance(value, Record):
        return value.to_json()
    if isinstance(value, (list, tuple)):
        return [_dump(v, digits) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v, digits) for k, v in value.items()}
    if digits is not None and isinstance(value, float):
        return round(value, digits)
    return value


def _where(where: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else key


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _load_record(cls: type[R], data: Any, where: str) -> R:
    if not isinstance(data, dict):
        raise RecordError(f"{where or cls.__name__}: expected an object ({cls.__name__}), got {_describe(data)}")
    hints = _hints(cls)
    known = {item.name for item in _fields(cls)}
    unknown = [key for key in data if key not in known]
    if unknown:
        raise RecordError(f"{_where(where, unknown[0])}: unknown key in {cls.__name__}")
    values: dict[str, Any] = {}
    for item in _fields(cls):
        if item.name not in data:
            has_default = item.default is not dataclasses.MISSING or item.default_factory is not dataclasses.MISSING
            if not has_default:
                raise RecordError(f"{_where(where, item.name)}: missing from {cls.__name__}")
            continue
        values[item.name] = _load(hints[item.name], data[item.name], _where(where, item.name))
    return cls(**values)


def load(kind: Any, value: Any, where: str = "") -> Any:
    """``value`` read as ``kind`` (a record, a union of records, or any supported hint), checked."""
    return _load(kind, value, where)


def _load(kind: Any, value: Any, where: str) -> Any:
    """``value`` checked against ``kind`` (and records, lists and dicts built)."""
    if kind is Any:
        return value
    if _is_record(kind):
        return _load_record(kind, value, where)
    members = _union_members(kind)
    if members is not None:
        return _load_union(members, value, where)
    origin = get_origin(kind)
    if origin is Literal:
        if value not in get_args(kind) or isinstance(value, bool) != any(isinstance(a, bool) for a in get_args(kind)):
            choices = ", ".join(repr(a) for a in get_args(kind))
            raise RecordError(f"{where}: expected one of {choices}, got {_describe(value)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise RecordError(f"{where}: expected a list, got {_describe(value)}")
        item = get_args(kind)[0]
        loaded = [_load(item, v, _where(where, i)) for i, v in enumerate(value)]
        return loaded if origin is list else tuple(loaded)
    if origin is dict:
        if not isinstance(value, dict):
            raise RecordError(f"{where}: expected an object, got {_describe(value)}")
        _, item = get_args(kind)
        return {str(k): _load(item, v, _where(where, str(k))) for k, v in value.items()}
    return _load_scalar(kind, value, where)


def _load_union(members: tuple[Any, ...], value: Any, where: str) -> Any:
    if value is None and type(None) in members:
        return None
    candidates = [m for m in members if m is not type(None)]
    errors = []
    for member in _by_discriminator(candidates, value):
        try:
            return _load(member, value, where)
        except RecordError as error:
            errors.append(error)
    if errors:
        raise errors[0]
    raise RecordError(f"{where}: expected {' or '.join(_type_name(m) for m in members)}, got {_describe(value)}")


def _by_discriminator(candidates: list[Any], value: Any) -> list[Any]:
    """Records whose Literal-typed fields match ``value`` first, so that the error reported
    for a bad value is the one of the record it was meant to be."""
    if not isinstance(value, dict):
        return candidates

    def matches(member: Any) -> bool:
        if not _is_record(member):
            return False
        for name, hint in _hints(member).items():
            if get_origin(hint) is Literal and name in value and value[name] not in get_args(hint):
                return False
        return True

    return sorted(candidates, key=lambda m: not matches(m))


def _load_scalar(kind: Any, value: Any, where: str) -> Any:
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind is str:
        ok = isinstance(value, str)
    elif kind is type(None):
        ok = value is None
    else:
        raise TypeError(f"unsupported type {kind!r} at {where}")
    if not ok:
        raise RecordError(f"{where}: expected {_type_name(kind)}, got {_describe(value)}")
    return value


def _type_name(kind: Any) -> str:
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "text", type(None): "null"}
    if kind in names:
        return names[kind]
    if _is_record(kind):
        return f"an object ({kind.__name__})"
    return str(kind)


# --- JSON Schema ---------------------------------------------------------------------------


def json_schema(root: type[Record] | Any, title: str, version: int | None = None) -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) of ``root`` (a record, or a union of records), with a
    definition per record class and each field's ``doc`` as its description."""
    definitions: dict[str, Any] = {}
    top = _schema(root, definitions)
    schema: dict[str, Any] = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": title}
    if version is not None:
        schema["version"] = version
    schema.update(top)
    schema["$defs"] = dict(sorted(definitions.items()))
    return schema


def _schema(kind: Any, definitions: dict[str, Any]) -> dict[str, Any]:
    if kind is Any:
        return {}
    if _is_record(kind):
        name = kind.schema_title or kind.__name__
        if name not in definitions:
            definitions[name] = {}  # placeholder against recursion
            definitions[name] = _record_schema(kind, definitions)
        return {"$ref": f"#/$defs/{name}"}
    members = _union_members(kind)
    if members is not None:
        if set(members) == set(_SCALAR_TYPES):
            return {"type": ["string", "integer", "number", "boolean", "null"]}
        schemas = [_schema(m, definitions) for m in members]
        simple = [s["type"] for s in schemas if set(s) == {"type"} and isinstance(s["type"], str)]
        if len(simple) == len(schemas):
            return {"type": simple}
        return {"anyOf": schemas}
    origin = get_origin(kind)
    if origin is Literal:
        return {"enum": list(get_args(kind))}
    if origin in (list, tuple):
        return {"type": "array", "items": _schema(get_args(kind)[0], definitions)}
    if origin is dict:
        return {"type": "object", "additionalProperties": _schema(get_args(kind)[1], definitions)}
    simple = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}
    if kind in simple:
        return {"type": simple[kind]}
    raise TypeError(f"no schema for {kind!r}")


def _record_schema(cls: type[Record], definitions: dict[str, Any]) -> dict[str, Any]:
    hints = _hints(cls)
    properties: dict[str, Any] = {}
    required = []
    for item in _fields(cls):
        schema = _schema(hints[item.name], definitions)
        if item.metadata.get("choices"):  # of the value, or of each element of a list
            if schema.get("type") == "array":
                schema = {**schema, "items": {**schema["items"], "enum": list(item.metadata["choices"])}}
            else:
                schema = {**schema, "enum": list(item.metadata["choices"])}
        doc = item.metadata.get("doc")
        if doc:
            schema = {"description": doc, **schema} if "$ref" not in schema else {"description": doc, "allOf": [schema]}
        properties[item.name] = schema
        has_default = item.default is not dataclasses.MISSING or item.default_factory is not dataclasses.MISSING
        if not (item.metadata.get("omit_none") or has_default):
            required.append(item.name)
    out: dict[str, Any] = {"type": "object"}
    if cls.__doc__ and not cls.__doc__.startswith(f"{cls.__name__}("):  # not dataclass's generated signature
        out["description"] = " ".join(cls.__doc__.split())
    out.update({"properties": properties, "required": required, "additionalProperties": False})
    return out
