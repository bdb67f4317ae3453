"""The spec's field checkers: each validates one value and words the one-line error a bad value
gets (the field path, the bad value and what is allowed), raising `SpecError`. The spec's tables
attach them to their fields (orchestrator.spec); the CLI checks its own options with the same ones.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any


class SpecError(ValueError):
    """A spec problem: one line naming the field path, the bad value and what is allowed."""



def show(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (str, int, float, bool)) or v is None else repr(v)


# TOML integers are 64-bit; Python's tomllib reads any size, so a spec could carry a value that no
# other TOML reader (nor torch, nor Parquet) accepts.
INT64 = (-(2**63), 2**63 - 1)


def _out_of_int64(path, v) -> None:
    if isinstance(v, int) and not isinstance(v, bool) and not INT64[0] <= v <= INT64[1]:
        raise SpecError(f"{path}: {show(v)} is outside TOML's 64-bit integer range; give a smaller value")


def _int(path, v, lo=None, what="an integer"):
    _out_of_int64(path, v)
    if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo):
        raise SpecError(f"{path}: {show(v)} is not {what}")
    return v


def _float(path, v, lo=None, what="a number"):
    _out_of_int64(path, v)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (lo is not None and v < lo):
        raise SpecError(f"{path}: {show(v)} is not {what}")
    return float(v)


def did_you_mean(word, options) -> str:
    """"; did you mean X?" when `word` is a near miss of one of `options` (difflib), else ""."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def choice(options):
    def check(path, v):
        if not isinstance(v, str) or v not in options:
            raise SpecError(f"{path}: {show(v)} is not one of {', '.join(options)}{did_you_mean(v, options)}")
        return v
    return check


def positive_int(path, v):
    return _int(path, v, 1, "a positive integer")


def nonneg_int(path, v):
    return _int(path, v, 0, "a non-negative integer")


def nonneg_float(path, v):
    return _float(path, v, 0.0, "a non-negative number")


def open_fraction(path, v):
    v = _float(path, v, 0.0, "a fraction in (0, 1)")
    if not 0 < v < 1:
        raise SpecError(f"{path}: {show(v)} is not a fraction in (0, 1)")
    return v


def positive_float(path, v):
    v = _float(path, v, 0.0, "a positive number")
    if v <= 0:
        raise SpecError(f"{path}: {show(v)} is not a positive number")
    return v


def faithfulness(path, v):
    v = _float(path, v, what="a faithfulness in (0, 1]")
    if not 0 < v <= 1:
        raise SpecError(f"{path}: {show(v)} is not a faithfulness in (0, 1]")
    return v


# The patterns some strings must match, whole (the checkers below and the JSON Schema share them)
NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}"
TRACKING_URI = r"(https?|sqlite|file|databricks|postgresql|mysql)[+a-z0-9]*:.*|/.*"
HOST = r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*"
PUSHGATEWAY = r"(https?://)?[A-Za-z0-9.\-\[\]:]+(:[0-9]+)?/?"


def name(path, v):
    if not isinstance(v, str) or not re.fullmatch(NAME, v):
        raise SpecError(f"{path}: {show(v)} is not a name (letters, digits, '.', '-', '_'; up to 100)")
    return v


def string(path, v):
    if not isinstance(v, str):
        raise SpecError(f"{path}: {show(v)} is not a string")
    return v


def _empty_or_matching(pattern: str, what: str, flags=0):
    """A checker of a string that is "" or matches `pattern`; the error says `what` it must be."""
    def check(path, v):
        string(path, v)
        if v and not re.fullmatch(pattern, v, flags):
            raise SpecError(f"{path}: {show(v)} is not {what}")
        return v
    return check


tracking_uri = _empty_or_matching(TRACKING_URI, 'a tracking URI ("" for the embedded store, http://HOST:PORT, '
                                   "sqlite:///FILE, file:///DIR)", re.DOTALL)


def port(path, v):
    v = _int(path, v, -1, "a port (0 = any free port, -1 = no endpoint)")
    if v > 65535:
        raise SpecError(f"{path}: {v} is not a port (0 = any free port, -1 = no endpoint)")
    return v


def host(path, v):
    if not isinstance(v, str) or not re.fullmatch(HOST, v):
        raise SpecError(f"{path}: {show(v)} is not a host to bind (127.0.0.1, 0.0.0.0, ::, a host name)")
    return v


pushgateway = _empty_or_matching(PUSHGATEWAY, 'a Pushgateway address ("" for none, http://HOST:9091)')


def boolean(path, v):
    if not isinstance(v, bool):
        raise SpecError(f"{path}: {show(v)} is not true or false")
    return v


def selector(path, v):
    if not isinstance(v, str) or not v:
        raise SpecError(f"{path}: {show(v)} is not a job selector (\"train\", \"discover\" or a job label prefix)")
    return v
