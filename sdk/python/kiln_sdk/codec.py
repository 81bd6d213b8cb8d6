"""The JSON mapping between the WIT payloads (bytes) and Python values.

It follows the Rust SDK (serde and serde_json) closely, so that a Python
plugin and a Rust plugin of the same contract read and write the same bytes
and report bad input with the same words:

- JSON is written compact (``{"a":1}``), as UTF-8 without ``\\u`` escapes for
  non-ASCII text. Dataclasses are written in field order (the state, view
  rows); event payloads are written with sorted keys, as the Rust SDK does.
- Payload classes are dataclasses whose annotations say what a field holds:
  ``int`` (an i64, or one of :data:`I32`, :data:`U32`, :data:`U64`), ``float``,
  ``str``, ``bool``, ``Optional[...]``, ``list[...]``, ``dict[str, ...]``, an
  :class:`enum.Enum`, another dataclass, or ``Any``. A field with a default
  may be missing; an ``Optional`` field without a default defaults to
  ``None``. Unknown fields are ignored, serde's default, unless the caller
  says ``allow_unknown_fields=False`` (a command's payload, by default):
  then the first one is ``unknown field `name``` (the Rust SDK's words, which
  are serde's without the list of expected fields). As in serde, the first
  problem in document order is reported, and a missing field is noticed
  after the object's last key.
- A value that does not fit raises :class:`DecodeError` with serde's wording,
  e.g. ``missing field `amount``` or
  ``invalid type: string "5", expected i64``.
"""

import collections.abc
import dataclasses
import decimal
import enum
import json
import types
import typing
from typing import Any, Dict, Iterable, List, NewType, Optional, Sequence, Tuple

#: Integer annotations with a range other than i64 (plain ``int`` is an i64).
I32 = NewType("I32", int)
U32 = NewType("U32", int)
I64 = NewType("I64", int)
U64 = NewType("U64", int)

I64_MIN = -(2**63)
I64_MAX = 2**63 - 1
U64_MAX = 2**64 - 1

# The name serde gives each integer type, and its range.
_INT_RANGES = {
    int: ("i64", I64_MIN, I64_MAX),
    I64: ("i64", I64_MIN, I64_MAX),
    I32: ("i32", -(2**31), 2**31 - 1),
    U32: ("u32", 0, 2**32 - 1),
    U64: ("u64", 0, U64_MAX),
}


class DecodeError(ValueError):
    """A payload that does not decode; ``message`` is serde's wording."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# ---------------------------------------------------------------------------
# Bytes <-> JSON values


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON (and serde_json) does not.
    raise DecodeError(f"expected value: `{name}` is not JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise DecodeError("number out of range")
    return value


def parse_json(data: bytes) -> Any:
    """One JSON value from ``data``; :class:`DecodeError` when it is not JSON."""
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as error:
        raise DecodeError(f"data is not valid JSON: invalid UTF-8 at byte {error.start}") from None
    try:
        return json.loads(text, parse_float=_parse_float, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise DecodeError(
            f"data is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    except DecodeError as error:
        raise DecodeError(f"data is not valid JSON: {error.message}") from None
    except RecursionError:
        raise DecodeError("data is not valid JSON: recursion limit exceeded") from None
    except ValueError as error:  # e.g. an integer with more digits than Python converts
        raise DecodeError(f"data is not valid JSON: {error}") from None


def dumps(value: Any, *, sort_keys: bool = False) -> bytes:
    """``value`` (plain JSON or anything :func:`to_json` takes) as compact UTF-8 JSON."""
    return json.dumps(
        to_json(value),
        ensure_ascii=False,
        separators=(",", ":"),
        sort_keys=sort_keys,
        allow_nan=False,
    ).encode("utf-8")


def to_json(value: Any) -> Any:
    """``value`` as plain JSON values: dataclasses become objects (in field
    order), enums their value, tuples lists."""
    if isinstance(value, enum.Enum):
        return to_json(value.value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if isinstance(key, enum.Enum):
                key = key.value
            if not isinstance(key, str):
                raise TypeError(f"a JSON object needs string keys, got {key!r}")
            out[key] = to_json(item)
        return out
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    raise TypeError(f"cannot write a {type(value).__name__} as JSON: {value!r}")


# ---------------------------------------------------------------------------
# JSON values -> typed values, with serde's messages


def rust_float(value: float) -> str:
    """``value`` as Rust's ``Display`` (and so serde) writes it: no exponent,
    and ``.0`` when it has no fraction."""
    text = format(decimal.Decimal(repr(value)), "f")
    return text if "." in text else text + ".0"


def unexpected(value: Any) -> str:
    """How serde names a JSON value it did not expect."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{'true' if value else 'false'}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{rust_float(value)}`"
    if isinstance(value, str):
        return "string " + json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "sequence"
    if isinstance(value, dict):
        return "map"
    return type(value).__name__


def one_of(names: Sequence[str]) -> str:
    """serde's list of expected names: `a`, `a` or `b`, one of `a`, `b`, `c`."""
    quoted = [f"`{name}`" for name in names]
    if not quoted:
        return "nothing"
    if len(quoted) == 1:
        return quoted[0]
    if len(quoted) == 2:
        return f"{quoted[0]} or {quoted[1]}"
    return "one of " + ", ".join(quoted)


def _invalid_type(value: Any, expected: str) -> DecodeError:
    return DecodeError(f"invalid type: {unexpected(value)}, expected {expected}")


@dataclasses.dataclass(frozen=True)
class _Field:
    name: str
    annotation: Any
    # Set when the field may be missing: makes its value.
    default: Optional[typing.Callable[[], Any]]


_FIELDS: Dict[type, List[_Field]] = {}
_FIELDS_BY_NAME: Dict[type, Dict[str, _Field]] = {}


def _fields(cls: type) -> List[_Field]:
    """The fields of dataclass ``cls`` with their resolved annotations (cached)."""
    cached = _FIELDS.get(cls)
    if cached is not None:
        return cached
    hints = typing.get_type_hints(cls)
    fields = []
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        annotation = hints.get(field.name, Any)
        default: Optional[typing.Callable[[], Any]] = None
        if field.default is not dataclasses.MISSING:
            default = (lambda value: lambda: value)(field.default)
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory
        elif _optional_inner(annotation) is not None:
            # serde: a missing `Option` field is `None`.
            default = lambda: None  # noqa: E731
        fields.append(_Field(field.name, annotation, default))
    _FIELDS[cls] = fields
    _FIELDS_BY_NAME[cls] = {field.name: field for field in fields}
    return fields


def _fields_by_name(cls: type) -> Dict[str, _Field]:
    """The fields of dataclass ``cls`` by name (cached)."""
    found = _FIELDS_BY_NAME.get(cls)
    if found is None:
        _fields(cls)
        found = _FIELDS_BY_NAME[cls]
    return found


def prepare(annotation: Any, _seen: Optional[set] = None) -> None:
    """Resolve the annotations of ``annotation`` and of every dataclass it
    reaches, ahead of the first decode. The component adapter calls it while
    componentize-py pre-initializes the component, so that any module these
    steps import is loaded then, and calls start with warm caches."""
    seen = set() if _seen is None else _seen
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        if annotation in seen:
            return
        seen.add(annotation)
        for field in _fields(annotation):
            prepare(field.annotation, seen)
        return
    for argument in typing.get_args(annotation):
        prepare(argument, seen)


def _optional_inner(annotation: Any) -> Any:
    """``T`` for ``Optional[T]`` (``T | None``); ``None`` for anything else."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0]
    return None


def expected_name(annotation: Any) -> str:
    """How serde describes what ``annotation`` expects."""
    if annotation in _INT_RANGES:
        return _INT_RANGES[annotation][0]
    if annotation is float:
        return "f64"
    if annotation is str:
        return "a string"
    if annotation is bool:
        return "a boolean"
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return f"struct {annotation.__name__}"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return f"enum {annotation.__name__}"
    origin = typing.get_origin(annotation)
    if origin in (list, collections.abc.Sequence) or annotation is list:
        return "a sequence"
    if origin in (dict, collections.abc.Mapping) or annotation is dict:
        return "a map"
    inner = _optional_inner(annotation)
    if inner is not None:
        return f"option of {expected_name(inner)}"
    return "a value"


def from_json(annotation: Any, value: Any, allow_unknown_fields: bool = True) -> Any:
    """``value`` (plain JSON) as ``annotation`` says; :class:`DecodeError` when
    it does not fit. A field that a dataclass does not have, at any depth, is
    ignored, or refused when not ``allow_unknown_fields``."""
    if annotation is Any or annotation is object:
        return value
    inner = _optional_inner(annotation)
    if inner is not None:
        return None if value is None else from_json(inner, value, allow_unknown_fields)
    if annotation in _INT_RANGES:
        name, low, high = _INT_RANGES[annotation]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _invalid_type(value, name)
        if isinstance(value, float):
            raise _invalid_type(value, name)
        if value < I64_MIN or value > U64_MAX:
            # serde_json reads integers beyond i64/u64 as floats.
            raise _invalid_type(float(value), name)
        if not low <= value <= high:
            raise DecodeError(f"invalid value: integer `{value}`, expected {name}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _invalid_type(value, "f64")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise _invalid_type(value, "a string")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise _invalid_type(value, "a boolean")
        return value
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return _enum_from_json(annotation, value)
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return struct_from_json(annotation, value, allow_unknown_fields)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (list, collections.abc.Sequence) or annotation is list:
        if not isinstance(value, list):
            raise _invalid_type(value, "a sequence")
        item = args[0] if args else Any
        return [from_json(item, element, allow_unknown_fields) for element in value]
    if origin in (dict, collections.abc.Mapping) or annotation is dict:
        if not isinstance(value, dict):
            raise _invalid_type(value, "a map")
        item = args[1] if len(args) == 2 else Any
        return {
            key: from_json(item, element, allow_unknown_fields) for key, element in value.items()
        }
    raise TypeError(f"kiln_sdk cannot decode JSON into the annotation {annotation!r}")


def _enum_from_json(cls: type, value: Any) -> Any:
    for member in cls:
        if member.value == value and type(member.value) is type(value):
            return member
    names = [str(member.value) for member in cls]
    if isinstance(value, str):
        raise DecodeError(f"unknown variant `{value}`, expected {one_of(names)}")
    raise _invalid_type(value, "variant identifier")


def struct_from_json(cls: type, value: Any, allow_unknown_fields: bool = True) -> Any:
    """An instance of dataclass ``cls`` from a JSON object; a key that is not
    one of its fields is ignored, or refused when not ``allow_unknown_fields``."""
    if not isinstance(value, dict):
        raise _invalid_type(value, f"struct {cls.__name__}")
    by_name = _fields_by_name(cls)
    kwargs = {}
    # The object's keys in document order, as serde reads them.
    for key, item in value.items():
        field = by_name.get(key)
        if field is None:
            if allow_unknown_fields:
                continue
            raise DecodeError(f"unknown field `{key}`")
        kwargs[key] = from_json(field.annotation, item, allow_unknown_fields)
    for field in _fields(cls):
        if field.name in kwargs:
            continue
        if field.default is None:
            raise DecodeError(f"missing field `{field.name}`")
        kwargs[field.name] = field.default()
    return cls(**kwargs)


# ---------------------------------------------------------------------------
# Tagged payloads: a command or an event is a type name plus data


def type_name(cls: type) -> str:
    """The command or event type of payload class ``cls``: its name."""
    return cls.__name__


def registry(classes: Iterable[type], what: str) -> Dict[str, type]:
    """Payload classes by type name; ``TypeError`` for a class that is not a
    dataclass or a name given twice (a bug in the plugin)."""
    by_name: Dict[str, type] = {}
    for cls in classes:
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise TypeError(f"{what} must be dataclasses, got {cls!r}")
        name = type_name(cls)
        if name in by_name:
            raise TypeError(f"two {what} are named `{name}`")
        by_name[name] = cls
    return by_name


def payload_value(data: bytes) -> Any:
    """The JSON value of a payload; empty data and ``null`` are ``{}`` (no
    fields), as in the Rust SDK."""
    data = bytes(data).strip(b" \t\r\n")
    if not data:
        return {}
    value = parse_json(data)
    return {} if value is None else value


def decode_tagged(
    classes: Dict[str, type], tag: str, data: bytes, allow_unknown_fields: bool = True
) -> Any:
    """The payload of type ``tag`` with ``data``: an instance of
    ``classes[tag]``. :class:`DecodeError` when the data is not JSON (checked
    first, as the Rust SDK does), the type is unknown or the data does not fit
    (which includes an unknown field when not ``allow_unknown_fields``)."""
    value = payload_value(data)
    cls = classes.get(tag)
    if cls is None:
        raise DecodeError(f"unknown variant `{tag}`, expected {one_of(list(classes))}")
    return struct_from_json(cls, value, allow_unknown_fields)


def encode_tagged(classes: Dict[str, type], payload: Any, what: str) -> Tuple[str, bytes]:
    """``payload`` (an instance of one of ``classes``) as its type and its data:
    JSON with sorted keys, as serde_json writes an adjacently tagged enum's
    content. ``TypeError`` when it is not one of ``classes``."""
    cls = type(payload)
    name = type_name(cls)
    if classes.get(name) is not cls:
        known = ", ".join(classes) or "none"
        raise TypeError(f"{payload!r} is not one of the {what} (known: {known})")
    return name, dumps(payload, sort_keys=True)
