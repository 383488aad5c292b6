"""What a config value may be, as a :class:`Rule` (a check and its words), and the rules that
``training.config_types.CONFIG_TYPES`` combines: ``integer``, ``number``, ``choice``, ``list_of``
and named ones (``PIXELS``, ``PROBABILITY``, ...). ``rule_a | rule_b`` accepts either."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeGuard

from omegaconf import ListConfig


class Rule:
    """What a value may be: ``ok(value)`` says whether it is; ``what`` says it in words."""

    def __init__(self, what: str, ok: Callable[[object], bool]) -> None:
        self.what, self.ok = what, ok

    def __or__(self, other: Rule) -> Rule:
        return Rule(f"{self.what}, or {other.what}", lambda v: self.ok(v) or other.ok(v))


def _is_int(value: object) -> TypeGuard[float]:
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, float) and math.isfinite(value) and value.is_integer()
    )


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def integer(low: int | None = None, high: int | None = None) -> Rule:
    """A whole number in [low, high] (an integral float like 4.0 too)."""
    span = f" >= {low}" if high is None else f" in [{low}, {high}]"
    what = "a positive integer" if (low, high) == (1, None) else "an integer" + ("" if low is None else span)
    return Rule(what, lambda v: _is_int(v) and (low is None or v >= low) and (high is None or v <= high))


def number(low: float | None = None, high: float | None = None, low_open: bool = False) -> Rule:
    """A finite number in [low, high] ((low, high] with ``low_open``)."""
    lower = "" if low is None else (f" > {low}" if low_open else f" >= {low}")
    upper = "" if high is None else f" <= {high}"
    what = "a finite number" + lower + ("," if lower and upper else "") + upper
    return Rule(
        "a positive finite number" if (low, high, low_open) == (0, None, True) else what,
        lambda v: (
            _is_number(v) and (low is None or (v > low if low_open else v >= low)) and (high is None or v <= high)
        ),
    )


def choice(*values: object) -> Rule:
    return Rule("one of " + ", ".join(map(str, values)), lambda v: not isinstance(v, bool) and v in values)


def list_of(rule: Rule, min_len: int = 1, max_len: int | None = None) -> Rule:
    size = {0: "a list", 1: "a non-empty list"}.get(min_len, f"a list of at least {min_len}")
    size = f"a list of {min_len}" if max_len == min_len else size
    return Rule(
        f"{size} of values each {rule.what}",
        lambda v: (
            isinstance(v, (list, tuple, ListConfig))
            and min_len <= len(v) <= (max_len or len(v))
            and all(rule.ok(x) for x in v)
        ),
    )


BOOL = Rule("true or false", lambda v: isinstance(v, bool))
NULL = Rule("null", lambda v: v is None)
TEXT = Rule("a non-empty string", lambda v: isinstance(v, str) and v.strip() != "")
PROBABILITY = number(0, 1)
COUNT = integer(0)
POSITIVE = integer(1)
PIXELS = Rule("a positive integer (at most 16384 pixels)", integer(1, 16384).ok)
SEED = integer(0, 2**32 - 1)  # numpy's seed range, which seed_everything uses
STEP_LIMIT = Rule("-1 (no limit) or a positive integer", lambda v: _is_int(v) and (v == -1 or v >= 1))
BATCH_LIMIT = Rule(
    "an integer >= 0 (batches) or a fraction in [0, 1]",
    lambda v: _is_int(v) and v >= 0 or isinstance(v, float) and 0 <= v <= 1,
)
INTERVAL = Rule(
    "an integer >= 1 (batches) or a fraction in (0, 1]",
    lambda v: _is_int(v) and v >= 1 or isinstance(v, float) and 0 < v <= 1,
)
DEVICES = Rule(
    "a positive integer, -1, 'auto', a digit string or a list of device indices",
    lambda v: (
        _is_int(v)
        and (v >= 1 or v == -1)
        or v == "auto"
        or isinstance(v, str)
        and v.isdigit()
        or isinstance(v, (list, ListConfig))
        and len(v) > 0
        and all(_is_int(x) and x >= 0 for x in v)
    ),
)
PRECISIONS = (
    "64-true",
    "64",
    "32-true",
    "32",
    "16-mixed",
    "16",
    "bf16-mixed",
    "bf16",
    "16-true",
    "bf16-true",
    "transformer-engine",
    "transformer-engine-float16",
    64,
    32,
    16,
)
ANCHORS = Rule(
    "auto or a list of per-level lists of sizes > 0",
    lambda v: v == "auto" or list_of(list_of(number(0, low_open=True))).ok(v),
)
SIZES = Rule(f"{PIXELS.what} or a non-empty list of them", (PIXELS | list_of(PIXELS)).ok)
