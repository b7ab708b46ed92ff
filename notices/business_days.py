"""Business days: Monday to Friday, less US federal holidays (observed dates).

Used for the DMCA counter-notice window (17 U.S.C. §512(g)(2)(C)): the host
restores the material not less than 10 and not more than 14 business days
after it receives the counter-notice, unless the sender files suit first.
"""

from __future__ import annotations

from datetime import date, timedelta
from functools import lru_cache

__all__ = ["add_business_days", "is_business_day", "us_federal_holidays"]


def _nth_weekday(year: int, month: int, weekday: int, n: int) -> date:
    d = date(year, month, 1)
    d += timedelta(days=(weekday - d.weekday()) % 7)
    return d + timedelta(weeks=n - 1)


def _last_weekday(year: int, month: int, weekday: int) -> date:
    d = date(year, month + 1, 1) - timedelta(days=1) if month < 12 else date(year, 12, 31)
    return d - timedelta(days=(d.weekday() - weekday) % 7)


def _observed(d: date) -> date:
    if d.weekday() == 5:
        return d - timedelta(days=1)
    if d.weekday() == 6:
        return d + timedelta(days=1)
    return d


@lru_cache(maxsize=64)
def us_federal_holidays(year: int) -> frozenset[date]:
    fixed = [date(year, 1, 1), date(year, 6, 19), date(year, 7, 4), date(year, 11, 11), date(year, 12, 25)]
    days = {_observed(d) for d in fixed}
    days |= {
        _nth_weekday(year, 1, 0, 3),   # Martin Luther King Jr. Day
        _nth_weekday(year, 2, 0, 3),   # Washington's Birthday
        _last_weekday(year, 5, 0),     # Memorial Day
        _nth_weekday(year, 9, 0, 1),   # Labor Day
        _nth_weekday(year, 10, 0, 2),  # Columbus Day
        _nth_weekday(year, 11, 3, 4),  # Thanksgiving
    }
    # New Year's Day of next year observed on Friday 31 December.
    if date(year + 1, 1, 1).weekday() == 5:
        days.add(date(year, 12, 31))
    return frozenset(days)


def is_business_day(d: date) -> bool:
    return d.weekday() < 5 and d not in us_federal_holidays(d.year)


def add_business_days(start: date, n: int) -> date:
    """The n-th business day after ``start`` (``start`` itself is not counted)."""
    d = start
    left = n
    while left > 0:
        d += timedelta(days=1)
        if is_business_day(d):
            left -= 1
    return d
