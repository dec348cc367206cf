"""Cron expressions for KFP recurring runs, checked before anything is sent to a server.

KFP's scheduler parses cron with robfig/cron and six fields, seconds first:
`SEC MIN HOUR DAY-OF-MONTH MONTH DAY-OF-WEEK` (e.g. `0 0 2 * * *`: every day at 02:00:00), plus the
descriptors @yearly, @annually, @monthly, @weekly, @daily, @midnight and @hourly. The usual
five-field form (`0 2 * * *`) is accepted too and given a seconds field of 0.
Each field is a comma list of `*`, `?` (day fields only), `N`, `N-M`, each optionally `/STEP`;
months and weekdays may be names (JAN..DEC, SUN..SAT).
"""

from __future__ import annotations

import re

from lethe.errors import LetheError


class CronError(LetheError):
    """A cron expression KFP would refuse."""


DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_MONTHS = {m: i for i, m in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split(), 1)}
_DAYS = {d: i for i, d in enumerate("SUN MON TUE WED THU FRI SAT".split())}
# name, low, high, names, '?' allowed
_FIELDS = (
    ("second", 0, 59, {}, False),
    ("minute", 0, 59, {}, False),
    ("hour", 0, 23, {}, False),
    ("day of month", 1, 31, {}, True),
    ("month", 1, 12, _MONTHS, False),
    ("day of week", 0, 6, _DAYS, True),
)
_ITEM = re.compile(r"^(?P<range>\*|\?|[A-Za-z0-9]+(?:-[A-Za-z0-9]+)?)(?:/(?P<step>\d+))?$")


def _value(token: str, field: str, lo: int, hi: int, names: dict[str, int], expr: str) -> int:
    t = token.upper()
    if t in names:
        return names[t]
    if not t.isdigit():
        raise CronError(f"cron {field} has an unknown value {token!r}", expected=f"{lo}-{hi}", seen=expr)
    v = int(t)
    if not lo <= v <= hi:
        raise CronError(f"cron {field} value {v} is out of range", expected=f"{lo}-{hi}", seen=expr)
    return v


def _check_field(text: str, spec: tuple, expr: str) -> None:
    field, lo, hi, names, question = spec
    for item in text.split(","):
        m = _ITEM.match(item)
        if not m:
            raise CronError(f"cron {field} field is malformed: {item!r}", seen=expr)
        rng, step = m["range"], m["step"]
        if step is not None and int(step) == 0:
            raise CronError(f"cron {field} step must be positive", seen=expr)
        if rng == "?":
            if not question:
                raise CronError(f"cron '?' is only allowed in the day fields, not in {field}", seen=expr)
            continue
        if rng == "*":
            continue
        a, _, b = rng.partition("-")
        first = _value(a, field, lo, hi, names, expr)
        if b:
            last = _value(b, field, lo, hi, names, expr)
            if last < first:
                raise CronError(f"cron {field} range {rng} runs backwards", seen=expr)


def to_kfp_cron(expr: str) -> str:
    """Validate `expr` and return it in KFP's six-field form (descriptors unchanged)."""
    text = " ".join(str(expr).split())
    if not text:
        raise CronError("empty cron expression", expected="e.g. '0 0 2 * * *' (daily at 02:00)")
    if text.startswith("@"):
        if text.lower() not in DESCRIPTORS:
            raise CronError("unknown cron descriptor", expected=", ".join(DESCRIPTORS), seen=text)
        return text.lower()
    parts = text.split(" ")
    if len(parts) == 5:
        parts = ["0", *parts]
    if len(parts) != 6:
        raise CronError(
            f"cron expression has {len(parts)} fields",
            expected="6 fields 'SEC MIN HOUR DOM MONTH DOW' (or the usual 5 without seconds)",
            seen=text,
        )
    for part, spec in zip(parts, _FIELDS, strict=True):
        _check_field(part, spec, text)
    return " ".join(parts)


__all__ = ["CronError", "DESCRIPTORS", "to_kfp_cron"]
