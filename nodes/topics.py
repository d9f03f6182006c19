"""MQTT topics <-> NATS subjects, as nats-server's MQTT bridge maps them.

nats-server turns topic `a/b` into subject `a.b`, an empty level (leading `/`, or `a//b`) into a
`/` token, and a `.` inside a level into `//`; filters map `+` to `*` and `#` to `>`.
"""

from __future__ import annotations

from siot.errors import InvalidInput

# First subject tokens that belong to siot itself; an ingest filter over them would feed its own
# writes back to itself.
RESERVED_FIRST_TOKENS = frozenset(("p", "up", "nodes", "history", "siot", "_INBOX"))


def _level_to_token(level: str) -> str:
    if level == "":
        return "/"
    return {"+": "*", "#": ">"}.get(level, level.replace(".", "//"))


def topic_filter_to_subjects(topic: str) -> list[str]:
    """NATS subjects that together match what MQTT filter `topic` matches (`a/#` also matches `a`)."""
    if not topic:
        raise InvalidInput("empty MQTT topic filter")
    levels = topic.split("/")
    if "#" in levels[:-1]:
        raise InvalidInput(f"MQTT topic filter {topic!r}: '#' must be the last level")
    for level in levels:
        if level not in ("+", "#") and ("+" in level or "#" in level):
            raise InvalidInput(f"MQTT topic filter {topic!r}: '+' and '#' must fill a whole level")
        if any(c in level for c in " \t\r\n*>"):
            raise InvalidInput(f"MQTT topic filter {topic!r}: illegal character in level {level!r}")
    subject = ".".join(_level_to_token(level) for level in levels)
    if levels[-1] == "#" and len(levels) > 1:
        return [subject, ".".join(_level_to_token(level) for level in levels[:-1])]
    return [subject]


def subject_to_levels(subject: str) -> list[str]:
    """The MQTT topic levels of a subject that came from MQTT (also fine for plain subjects)."""
    return ["" if token == "/" else token.replace("//", ".") for token in subject.split(".")]


def check_not_reserved(subject: str) -> str:
    """Refuse a filter that would match siot's own subjects (p.*, up.*, ...)."""
    first = subject.split(".", 1)[0]
    if first in ("*", ">") or first in RESERVED_FIRST_TOKENS:
        raise InvalidInput(
            f"filter {subject!r} overlaps siot's own subjects ({', '.join(sorted(RESERVED_FIRST_TOKENS))}); "
            "devices that speak siot points publish to p/<node> directly, without an ingest node"
        )
    return subject
