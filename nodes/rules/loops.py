"""The loop guard: a rule whose actions re-trigger it, directly (it writes a point it watches) or
through other rules (A writes what B watches, B writes what A watches), is paused.

Why count only what the engine's own writes cause: every such loop runs through setValue
writes, which carry the writing action as `origin`, while a fast device (or a benchmark) flipping
a rule a thousand times a second is not a loop and must not be throttled. So the manager tells
the guard, before each evaluation that a point written by the rules engine caused, whether the
rule may still evaluate, and after it how many transitions and action runs that evaluation made.
Past `loopLimit` of them within one second the rule is paused for `loopPause` seconds: its
evaluators still take the points they are shown (so nothing is missed), but it neither changes
state nor acts. It then resumes by itself; if the cause is still there it trips again within a
second, so a loop that nobody fixes makes at most `loopLimit` writes per pause. The rule's
`error` point says what happened (it starts with "loop:") and is deleted once the rule has run
a whole `loopPause` after resuming without tripping again. A change of the rule's config (or of
a child) reloads the rule, which re-arms it at once.

The rate is measured on the monotonic clock (it is about real throughput); the pause is on the
engine's clock, so that it runs through the same timers as holds and reminders.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NS_PER_S = 1_000_000_000
WINDOW_NS = NS_PER_S
LOOP_PREFIX = "loop:"


@dataclass(slots=True)
class LoopGuard:
    """One rule's count of engine-caused transitions and action runs in the current second,
    the rules whose writes caused them, and its pause."""

    window_start_ns: int = 0
    count: int = 0
    causes: set[str] = field(default_factory=set)
    paused_until_ns: int = 0  # engine clock; 0 = not paused
    clear_at_ns: int = 0  # engine clock; when a loop error may be deleted (0 = none pending)

    def admit(self, mono_ns: int, limit: int, cause: str) -> bool:
        """Before an evaluation caused by `cause`'s write: False if the rule has already made
        `limit` engine-caused transitions and runs in the current one-second window."""
        if mono_ns - self.window_start_ns >= WINDOW_NS:
            self.window_start_ns, self.count = mono_ns, 0
            self.causes.clear()
        self.causes.add(cause)
        return self.count < limit

    def record(self, events: int) -> None:
        self.count += events

    def trip(self, mono_ns: int, now_ns: int, pause_s: float) -> float:
        """Pause the rule; returns the seconds the counted events took."""
        self.paused_until_ns = now_ns + int(pause_s * NS_PER_S)
        self.clear_at_ns = 0
        return max(mono_ns - self.window_start_ns, 0) / NS_PER_S

    def resume(self, now_ns: int, pause_s: float) -> None:
        self.paused_until_ns = 0
        self.clear_at_ns = now_ns + int(pause_s * NS_PER_S)
        self.window_start_ns, self.count = 0, 0
        self.causes.clear()

    def deadline_ns(self) -> int | None:
        """When the manager must look at this guard again (resume, or delete the error)."""
        return self.paused_until_ns or self.clear_at_ns or None
