"""Schedule windows in local time of an IANA zone, correct across DST changes and midnight.

Why compute with local dates and convert each window edge to UTC (instead of adding 24 h to a
UTC instant): on a DST change day a 22:00 start is 23 h or 25 h after the previous one, and only
a local-date computation lands on 22:00 local both times.

Conventions (documented in docs/rules.md): a window belongs to the local date it starts on, so
weekday and date filters apply to that date; start > end spans midnight; start == end (or both
blank) is the whole day. A local start/end that DST skips (02:30 on a spring-forward night) maps
to the instant with the pre-change offset, i.e. 03:30 local; an ambiguous one (fall back) takes
its first occurrence.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from siot.nodes.rules.config import ConditionConfig, parse_clock_time

NS_PER_S = 1_000_000_000
LOOKAHEAD_DAYS = 8  # far enough to reach the next allowed weekday from any day
MIDNIGHT = time(0, 0)


def _ns(local: datetime) -> int:
    return int(local.timestamp()) * NS_PER_S + local.microsecond * 1000


def _go_weekday(day: date) -> int:
    """Weekday numbered as in Go and Simple IoT: 0 = Sunday .. 6 = Saturday."""
    return (day.weekday() + 1) % 7


@dataclass(slots=True, frozen=True)
class Schedule:
    """An evaluated schedule condition: `active(now)` and the next instant that may change it."""

    zone: ZoneInfo
    start: time
    end: time
    weekdays: frozenset[int]
    dates: frozenset[date]

    @classmethod
    def from_config(cls, config: ConditionConfig) -> Schedule:
        """Build from a validated config (the validator has already checked every field)."""
        return cls(
            zone=ZoneInfo(config.tz),
            start=parse_clock_time(config.start) if config.start else MIDNIGHT,
            end=parse_clock_time(config.end) if config.end else MIDNIGHT,
            weekdays=frozenset(int(k) for k, on in config.weekday.items() if on),
            dates=frozenset(date.fromisoformat(v) for v in config.date.values() if v),
        )

    def _day_allowed(self, day: date) -> bool:
        if self.dates and day not in self.dates:
            return False
        return not self.weekdays or _go_weekday(day) in self.weekdays

    def _window(self, day: date) -> tuple[int, int]:
        start = datetime.combine(day, self.start, self.zone)
        end_day = day if self.end > self.start else day + timedelta(days=1)
        end = datetime.combine(end_day, self.end, self.zone)
        return _ns(start), _ns(end)

    def _windows(self, now_ns: int) -> list[tuple[int, int]]:
        """Allowed windows that could contain or follow `now`: from yesterday (a midnight-spanning
        window may still be open) to LOOKAHEAD_DAYS ahead."""
        today = datetime.fromtimestamp(now_ns / NS_PER_S, self.zone).date()
        days = (today + timedelta(days=offset) for offset in range(-1, LOOKAHEAD_DAYS))
        return [self._window(day) for day in days if self._day_allowed(day)]

    def active(self, now_ns: int) -> bool:
        return any(start <= now_ns < end for start, end in self._windows(now_ns))

    def next_change_ns(self, now_ns: int) -> int | None:
        """The first window edge after `now`; None when no window lies ahead (only past dates).

        With no date list there is always a next edge within LOOKAHEAD_DAYS; adjacent whole-day
        windows make some edges no-ops, which only costs one needless evaluation.
        """
        edges = [edge for window in self._windows(now_ns) for edge in window if edge > now_ns]
        if edges:
            return min(edges)
        if self.dates and max(self.dates) > datetime.fromtimestamp(now_ns / NS_PER_S, self.zone).date():
            # A listed date beyond the lookahead: wake at the lookahead horizon and look again.
            return now_ns + LOOKAHEAD_DAYS * 86_400 * NS_PER_S
        return None
