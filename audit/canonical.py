"""Canonical JSON: the one byte form of a value that the ledger hashes.

Sorted keys, no insignificant whitespace, UTF-8, no NaN or infinities, integers within the I-JSON safe
range (RFC 7493 §2.2) and floats written in Python's shortest round-trip form. The verifier never
re-serialises: it hashes the text the database returns, so the form only has to be stable and valid.

Speed (an append canonicalises every payload): the text always comes from the standard library's C
encoder, and the domain checks that encoder does not make (integers beyond ±(2**53 - 1), non-string
keys, lone surrogates) are left to one ``orjson`` pass in strict-integer mode, which rejects exactly
those. orjson's own output is not used: it writes some floats differently (``1.5e-05`` as
``0.000015``) and NaN as ``null``. Anything either refuses goes through the walking checker, which
names where the bad value sits. ``tests/unit/test_audit_canonical.py`` holds the fast path to the
checker's output with hypothesis.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any

import orjson

MAX_SAFE_INTEGER = 2**53 - 1


class NotCanonicalizable(ValueError):
    """A value cannot be put into the ledger as canonical JSON; the message names where it sits."""


_ENCODER = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False)
_encode_string = encode_basestring  # the C implementation when available: '"' + escaped + '"'


_ONE_SHOT = (
    None
    if c_make_encoder is None
    else c_make_encoder(None, _ENCODER.default, encode_basestring, None, ":", ",", True, False, False)
)
"""The C encoder ``JSONEncoder.encode`` builds on every call, built once (same arguments as _ENCODER).
Without its circular-reference markers: a cycle never gets here, orjson or the checker refuses it."""


def _encode(value: Any) -> str:
    if _ONE_SHOT is None:
        return _ENCODER.encode(value)
    return "".join(_ONE_SHOT(value, 0))


_STRICT = orjson.OPT_STRICT_INTEGER
_orjson_dumps = orjson.dumps


def canonical_json(value: Any) -> str:
    """Return the canonical JSON text of ``value`` (a JSON-like tree of dict/list/str/int/float/bool/None)."""
    try:
        _orjson_dumps(value, option=_STRICT)  # raises on big ints, non-str keys, lone surrogates
        return _encode(value)  # raises on NaN, infinities and types outside JSON
    except (TypeError, ValueError):  # orjson.JSONEncodeError is a TypeError
        return canonical_json_checked(value)


def canonical_json_checked(value: Any) -> str:
    """``canonical_json`` by walking the value first: slower, but its errors say where the problem is.

    Also the reference the fast path is tested against, and the path for non-dict ``Mapping`` values.
    """
    return _encode(_checked(value, "$"))


def json_string(value: str | None) -> str:
    """One JSON string (or ``null``) in canonical form, for building the entry envelope by hand."""
    return "null" if value is None else _encode_string(value)


def _checked(value: Any, path: str) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise NotCanonicalizable(f"{path}: string is not valid Unicode (lone surrogate)") from exc
        return value
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise NotCanonicalizable(f"{path}: integer outside ±(2**53 - 1); store it as a string")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotCanonicalizable(f"{path}: NaN and infinities have no JSON form")
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise NotCanonicalizable(f"{path}: object key of type {type(key).__name__}, expected str")
            out[key] = _checked(item, f"{path}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [_checked(item, f"{path}[{i}]") for i, item in enumerate(value)]
    raise NotCanonicalizable(f"{path}: {type(value).__name__} has no canonical JSON form")
