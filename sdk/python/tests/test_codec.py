"""The JSON mapping: bytes, serde's wording, tagged payloads."""

import dataclasses
import enum
from typing import Any, Dict, List, Optional

import pytest

from kiln_sdk import U32, U64, DecodeError
from kiln_sdk import codec


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass
class Inner:
    name: str


@dataclasses.dataclass
class Everything:
    count: int
    ratio: float
    label: str
    flag: bool
    color: Color
    inner: Inner
    tags: List[str]
    extra: Dict[str, int]
    maybe: Optional[int]
    small: U32 = U32(0)
    big: U64 = U64(0)
    anything: Any = None
    with_default: int = 7
    with_factory: List[int] = dataclasses.field(default_factory=list)


def decode(annotation: Any, text: str) -> Any:
    return codec.from_json(annotation, codec.parse_json(text.encode()))


def message(annotation: Any, text: str) -> str:
    with pytest.raises(DecodeError) as caught:
        decode(annotation, text)
    return caught.value.message


def test_dumps_is_compact_utf8_in_field_order() -> None:
    value = Everything(
        count=1, ratio=0.5, label="é\"\n", flag=True, color=Color.BLUE, inner=Inner("x"),
        tags=["a"], extra={"k": 1}, maybe=None,
    )
    assert codec.dumps(value) == (
        '{"count":1,"ratio":0.5,"label":"é\\"\\n","flag":true,"color":"blue",'
        '"inner":{"name":"x"},"tags":["a"],"extra":{"k":1},"maybe":null,"small":0,"big":0,'
        '"anything":null,"with_default":7,"with_factory":[]}'
    ).encode("utf-8")
    assert codec.dumps({"b": 1, "a": {"d": 1, "c": 2}}, sort_keys=True) == b'{"a":{"c":2,"d":1},"b":1}'


def test_dumps_refuses_what_json_cannot_hold() -> None:
    with pytest.raises(TypeError):
        codec.dumps({1: "x"})
    with pytest.raises(TypeError):
        codec.dumps(object())
    with pytest.raises(ValueError):
        codec.dumps(float("nan"))


def test_round_trip_of_every_annotation() -> None:
    text = (
        '{"count": -3, "ratio": 2, "label": "x", "flag": false, "color": "red",'
        ' "inner": {"name": "n", "unknown": 1}, "tags": ["a", "b"], "extra": {"k": 2},'
        ' "small": 4294967295, "big": 18446744073709551615, "anything": [1, {"a": null}],'
        ' "ignored": true}'
    )
    value = decode(Everything, text)
    assert value == Everything(
        count=-3, ratio=2.0, label="x", flag=False, color=Color.RED, inner=Inner("n"),
        tags=["a", "b"], extra={"k": 2}, maybe=None, small=U32(4294967295),
        big=U64(18446744073709551615), anything=[1, {"a": None}],
    )
    assert decode(Everything, codec.dumps(value).decode()) == value


@pytest.mark.parametrize(
    "annotation, text, expected",
    [
        (int, '"5"', 'invalid type: string "5", expected i64'),
        (int, "1.5", "invalid type: floating point `1.5`, expected i64"),
        (int, "true", "invalid type: boolean `true`, expected i64"),
        (int, "null", "invalid type: null, expected i64"),
        (int, "9223372036854775808", "invalid value: integer `9223372036854775808`, expected i64"),
        (int, "-9223372036854775809", "invalid type: floating point `-9223372036854776000.0`, expected i64"),
        (int, "99999999999999999999", "invalid type: floating point `100000000000000000000.0`, expected i64"),
        (int, "[1]", "invalid type: sequence, expected i64"),
        (int, '{"a": 1}', "invalid type: map, expected i64"),
        (U32, "-1", "invalid value: integer `-1`, expected u32"),
        (str, "7", "invalid type: integer `7`, expected a string"),
        (bool, '"yes"', 'invalid type: string "yes", expected a boolean'),
        (float, '"1"', 'invalid type: string "1", expected f64'),
        (List[int], "{}", "invalid type: map, expected a sequence"),
        (Dict[str, int], "[]", "invalid type: sequence, expected a map"),
        (Color, '"green"', "unknown variant `green`, expected `red` or `blue`"),
        (Color, "1", "invalid type: integer `1`, expected variant identifier"),
        (Inner, "{}", "missing field `name`"),
        (Inner, "3", "invalid type: integer `3`, expected struct Inner"),
        (Inner, '{"name": 1e2}', "invalid type: floating point `100.0`, expected a string"),
    ],
)
def test_mismatches_use_serdes_words(annotation: Any, text: str, expected: str) -> None:
    assert message(annotation, text) == expected


@pytest.mark.parametrize(
    "data, expected",
    [
        (b'{"amount": 5', "data is not valid JSON: Expecting ',' delimiter at line 1 column 13"),
        (b'{"amount": 5}, "x": 1', "data is not valid JSON: Extra data at line 1 column 14"),
        (b"NaN", "data is not valid JSON: expected value: `NaN` is not JSON"),
        (b"1e400", "data is not valid JSON: number out of range"),
        (b"\xff", "data is not valid JSON: invalid UTF-8 at byte 0"),
        (b"[" * 5000, "data is not valid JSON: recursion limit exceeded"),
    ],
)
def test_what_is_not_json(data: bytes, expected: str) -> None:
    with pytest.raises(DecodeError) as caught:
        codec.parse_json(data)
    assert caught.value.message == expected


def test_rust_float_display() -> None:
    assert codec.rust_float(1.5) == "1.5"
    assert codec.rust_float(1e20) == "100000000000000000000.0"
    assert codec.rust_float(1e-7) == "0.0000001"
    assert codec.rust_float(-2.0) == "-2.0"


def test_one_of_follows_serde() -> None:
    assert codec.one_of([]) == "nothing"
    assert codec.one_of(["A"]) == "`A`"
    assert codec.one_of(["A", "B"]) == "`A` or `B`"
    assert codec.one_of(["A", "B", "C"]) == "one of `A`, `B`, `C`"


@dataclasses.dataclass
class Deposit:
    amount: int


@dataclasses.dataclass
class Close:
    pass


CLASSES = codec.registry([Deposit, Close], "commands")


@pytest.mark.parametrize("data", [b"", b"null", b"{}", b" { } ", b"  ", b"\n"])
def test_fieldless_payloads_accept_every_spelling_of_no_data(data: bytes) -> None:
    assert codec.decode_tagged(CLASSES, "Close", data) == Close()


@dataclasses.dataclass
class Move:
    to: Inner
    via: List[Inner] = dataclasses.field(default_factory=list)
    note: Optional[Inner] = None
    labels: Dict[str, Inner] = dataclasses.field(default_factory=dict)
    extra: Any = None


def strict_message(annotation: Any, text: str) -> str:
    with pytest.raises(DecodeError) as caught:
        codec.from_json(annotation, codec.parse_json(text.encode()), allow_unknown_fields=False)
    return caught.value.message


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"to": {"name": "a", "zip": 1}}', "unknown field `zip`"),
        ('{"to": {"name": "a"}, "via": [{"name": "b"}, {"nmae": "c"}]}', "unknown field `nmae`"),
        ('{"to": {"name": "a"}, "note": {"name": "b", "x": []}}', "unknown field `x`"),
        ('{"to": {"name": "a"}, "labels": {"k": {"name": "b", "y": 1}}}', "unknown field `y`"),
        # A misspelled field is also a missing one: the unknown field is reported.
        ('{"ot": {"name": "a"}}', "unknown field `ot`"),
        # The first problem in document order.
        ('{"x": 1, "to": 5}', "unknown field `x`"),
        ('{"to": 5, "x": 1}', "invalid type: integer `5`, expected struct Inner"),
    ],
)
def test_unknown_fields_are_refused_at_any_depth_when_asked(text: str, expected: str) -> None:
    assert strict_message(Move, text) == expected


def test_refusing_unknown_fields_leaves_maps_and_any_alone() -> None:
    text = '{"to": {"name": "a"}, "labels": {"any": {"name": "b"}}, "extra": {"any": {"thing": 1}}}'
    value = codec.from_json(Move, codec.parse_json(text.encode()), allow_unknown_fields=False)
    assert value.labels == {"any": Inner("b")}
    assert value.extra == {"any": {"thing": 1}}


def test_tagged_payloads() -> None:
    assert codec.decode_tagged(CLASSES, "Deposit", b'{"amount": 5, "note": "x"}') == Deposit(5)
    with pytest.raises(DecodeError, match="^unknown field `note`$"):
        codec.decode_tagged(CLASSES, "Deposit", b'{"amount": 5, "note": "x"}', allow_unknown_fields=False)
    with pytest.raises(DecodeError, match="^unknown field `x`$"):
        codec.decode_tagged(CLASSES, "Close", b'{"x": 1}', allow_unknown_fields=False)
    with pytest.raises(DecodeError, match="^missing field `amount`$"):
        codec.decode_tagged(CLASSES, "Deposit", b"")
    with pytest.raises(DecodeError, match="^unknown variant `Explode`, expected `Deposit` or `Close`$"):
        codec.decode_tagged(CLASSES, "Explode", b"{}")
    # Data that is not JSON is reported before the type.
    with pytest.raises(DecodeError, match="^data is not valid JSON"):
        codec.decode_tagged(CLASSES, "Explode", b"{")
    assert codec.encode_tagged(CLASSES, Deposit(3), "events") == ("Deposit", b'{"amount":3}')
    assert codec.encode_tagged(CLASSES, Close(), "events") == ("Close", b"{}")
    with pytest.raises(TypeError, match="not one of the events"):
        codec.encode_tagged(CLASSES, Inner("x"), "events")


def test_registry_refuses_non_dataclasses_and_duplicates() -> None:
    with pytest.raises(TypeError, match="must be dataclasses"):
        codec.registry([dict], "events")
    with pytest.raises(TypeError, match="two events are named `Close`"):
        codec.registry([Close, Close], "events")
