"""JSON numbers read and written exactly, and each array element's own bytes."""

from __future__ import annotations

from decimal import Decimal

import pytest

from schemas import exact_json
from schemas.exact_json import JsonError


def test_numbers_keep_their_value():
    doc = exact_json.loads(b'{"a": 1180591620717411303424, "b": 12345678901234567.89, "c": 1e400,'
                           b' "d": -0.0, "e": 0.1}')
    assert doc == {"a": 2**70, "b": Decimal("12345678901234567.89"), "c": Decimal("1e400"),
                   "d": Decimal("-0.0"), "e": Decimal("0.1")}
    assert all(type(doc[k]) is Decimal for k in "abcde")
    assert type(exact_json.loads(b"999999999999999999")) is int
    assert exact_json.dumps(doc) == b'{"a":1180591620717411303424,"b":12345678901234567.89,"c":1E+400,' \
                                    b'"d":-0.0,"e":0.1}'
    assert exact_json.loads(exact_json.dumps(doc)) == doc
    assert exact_json.dumps({"b": 1, "a": Decimal("2.50")}, sort_keys=True) == b'{"a":2.50,"b":1}'
    with pytest.raises(TypeError):
        exact_json.dumps({"x": Decimal("NaN")})


def test_numbers_as_written_keep_their_text_too():
    written = ["1e400", "-0", "1.50", "0.0000001", "100000000000000000000001", "7", "-0.0"]
    doc = exact_json.loads(f"[{', '.join(written)}]", as_written=True)
    assert [str(n) for n in doc] == written
    assert doc == [Decimal("1e400"), 0, Decimal("1.5"), Decimal("1E-7"), 10**23 + 1, 7, 0]
    assert exact_json.dumps(doc) == b"[1e400,-0,1.50,0.0000001,100000000000000000000001,7,-0.0]"


def test_each_element_keeps_its_own_bytes():
    body = '[ {"a": 1.10,\n "b": "caf\\u00e9 ☕"} ,2e0,"x"  ,[1, [2]]\n]'.encode()
    doc, texts = exact_json.loads_with_text(body)
    assert doc == [{"a": Decimal("1.10"), "b": "café ☕"}, Decimal("2"), "x", [1, [2]]]
    assert texts == ['{"a": 1.10,\n "b": "caf\\u00e9 ☕"}'.encode(), b"2e0", b'"x"', b"[1, [2]]"]
    assert exact_json.loads_with_text(b" [ ] ") == ([], [])
    assert exact_json.loads_with_text(b'\n {"a": 1} \n') == ({"a": 1}, [b'{"a": 1}'])


@pytest.mark.parametrize("body, problem", [
    (b"", "Expecting value"), (b"[1 2]", "delimiter"), (b"[1,]", "Expecting value"), (b"[1", "delimiter"),
    (b'{"a": 1} x', "Extra data"), (b"[1] [2]", "Extra data"), (b'{"a": NaN}', "NaN is not a JSON value"),
    (b"[Infinity]", "Infinity"), (b'"\xff"', "UTF-8"), (b"[" * 100_000, "nests too deep"),
    # lone UTF-16 surrogates, as a value, a key, a second high one, a low one alone
    (b'{"id": "x\\ud800"}', "lone UTF-16 surrogate"), (b'[{"a": {"\\udfff": 1}}]', "lone UTF-16 surrogate"),
    (b'["\\uD800\\uD800"]', "lone UTF-16 surrogate"), (b'"\\udc00"', "lone UTF-16 surrogate"),
])
def test_what_is_not_json_is_refused(body, problem):
    with pytest.raises(JsonError, match=problem):
        exact_json.loads_with_text(body)
    with pytest.raises(JsonError, match=problem):
        exact_json.loads(body)


def test_escapes_that_are_unicode_text_are_read():
    """A surrogate pair is one code point, and an escaped backslash before `ud800` is no escape."""
    assert exact_json.loads(b'["\\ud83d\\ude00", "\\\\ud800"]') == ["\U0001f600", "\\ud800"]
    assert exact_json.loads_with_text(b'["\\udbff\\udfff"]') == (["\U0010ffff"], [b'"\\udbff\\udfff"'])
