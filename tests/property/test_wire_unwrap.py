"""cas.torch.wire.unwrap reads a torch value's base64 without a JSON pass over it when the
value begins as torch writes it (``_wrapper``). It must read every value exactly as
json.loads + base64.b64decode(validate=True) did: the same blob and metadata, or an error
of the same class, for torch's own values and for anything a client may SET instead."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cas.torch import wire


def _reference(kind: str, value: bytes) -> tuple[bytes, dict[str, Any]]:
    """What unwrap read from a wrapped kind's value before the shortcut (`9c88643`): one
    json.loads of all of it, then the standard library's strict decode of its data."""
    doc = json.loads(value)
    try:
        blob = base64.b64decode(doc["data"], validate=True)
    except (KeyError, TypeError, binascii.Error) as exc:
        raise ValueError(f"unexpected {kind} cache value") from exc
    return blob, {"time_taken_ms": int(doc["time_taken_ms"])} if "time_taken_ms" in doc else {}


def _outcome(read: Any, value: bytes) -> tuple[Any, ...]:
    try:
        return ("ok", *read("inductor", value))
    except (ValueError, TypeError, OverflowError) as exc:  # the class a caller tells apart
        return (next(c for c in (ValueError, TypeError, OverflowError) if isinstance(exc, c)).__name__,)


def torch_value(raw: bytes, ms: Any) -> bytes:
    return json.dumps({"data": base64.b64encode(raw).decode(), "time_taken_ms": ms}).encode()


_TIMES = st.one_of(
    st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=4), st.none(), st.booleans(),
    st.just({"nested": 1}), st.just([1, 2]),
)
#: Pieces a hostile or odd client puts where torch's value has its parts.
_PIECES = [
    b"\\", b"\\/", b'"', b"data", b'"data"', b'"d\\u0061ta"', b", ", b"}", b"{", b"=", b"==", b"\n", b" ",
    b"\x00", b"\xc3\xa9", b"\xff", b"A", b"+", b"/", b'"data": ""', b'"data": "QQ=="', b", \"data\": \"\"",
    b"NaN", b"Infinity", b"1e999",
]


@st.composite
def values(draw: st.DrawFn) -> bytes:
    value = torch_value(draw(st.binary(max_size=300)), draw(_TIMES))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(value)))
        how = draw(st.sampled_from(["insert", "delete", "replace", "cut"]))
        piece = draw(st.sampled_from(_PIECES))
        if how == "insert":
            value = value[:at] + piece + value[at:]
        elif how == "delete":
            value = value[:at] + value[at + draw(st.integers(1, 4)):]
        elif how == "replace":
            value = value[:at] + piece + value[at + len(piece):]
        else:
            value = value[:at]
    return value


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    """Valid JSON most of the time, beginning as torch's does: the data string with and
    without escapes or odd padding, then fields that may repeat or spell ``data``."""
    b64 = base64.b64encode(draw(st.binary(max_size=64)))
    data = draw(st.sampled_from([b64, b64.replace(b"/", b"\\/"), b64.replace(b"A", b"\\u0041"), b64 + b"=",
                                 b64[:-1], b"", b"QQ==\\n"]))
    fields = [b'"data": "' + data + b'"']
    for _ in range(draw(st.integers(0, 3))):
        k = draw(st.sampled_from([b'"data"', b'"d\\u0061ta"', b'"time_taken_ms"', b'"x"', b'"metadata"']))
        v = draw(st.sampled_from([b'""', b'"QQ=="', b"7", b"1.5", b"null", b'{"a": 1}', b"[1]", b'"\\/"',
                                  b"1e999", b"true"]))
        fields.append(k + draw(st.sampled_from([b": ", b":"])) + v)
    return b"{" + draw(st.sampled_from([b", ", b","])).join(fields) + b"}"


@settings(max_examples=3000, deadline=None)
@given(st.one_of(values(), documents()))
def test_unwrap_reads_every_value_as_json_and_base64_did(value: bytes) -> None:
    assert _outcome(wire.unwrap, value) == _outcome(_reference, value)


def test_the_shortcut_is_taken_for_torch_values_and_reads_them_whole() -> None:
    raw = bytes(range(256)) * 400
    value = torch_value(raw, 1234)
    doc, data = wire._wrapper(value)
    assert data is not None and doc == {"data": "", "time_taken_ms": 1234}
    assert wire.unwrap("inductor", value) == (raw, {"time_taken_ms": 1234})
    # A second "data" key: json.loads keeps the last one, and so does unwrap.
    twice = value[:-1] + b', "data": "QQ=="}'
    assert wire._wrapper(twice)[1] is None
    assert wire.unwrap("inductor", twice) == (b"A", {"time_taken_ms": 1234})
    # An escaped "/" in the data: JSON reads it as "/", so unwrap does too.
    escaped = b'{"data": "' + base64.b64encode(b"\xff\xff\xff").replace(b"/", b"\\/") + b'"}'
    assert wire.unwrap("inductor", escaped) == (b"\xff\xff\xff", {})


_B64ISH = st.text(alphabet="ABCabc0189+/=\n -_é", max_size=40)


@settings(max_examples=5000, deadline=None)
@given(_B64ISH, st.booleans())
def test_the_decode_accepts_and_refuses_exactly_what_the_standard_library_does(text: str, as_bytes: bool) -> None:
    data: str | bytes = text.encode() if as_bytes else text

    def read(decode: Any) -> tuple[Any, ...]:
        try:
            return ("ok", decode(data))
        except ValueError:  # binascii.Error, or a str that is not ASCII
            return ("refused",)

    assert read(wire._b64decode) == read(lambda d: base64.b64decode(d, validate=True))
