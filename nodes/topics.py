"""MQTT topics <-> NATS subjects, as nats-server's MQTT bridge maps them.

nats-server turns topic `a/b` into subject `a.b`, an empty level (leading `/`, or `a//b`) into a
`/` token, and a `.` inside a level into `//`; filters map `+` to `*` and `#` to `>`.
"""

from __future__ import annotations

from siot.errors import InvalidInput

# First subject tokens that belong to siot itself (siot/subjects.py, sync/protocol.py), and why:
# an ingest filter over them would take siot's own traffic for device messages, feed its own
# writes back to itself, or answer requests meant for the API or for sync (as the edge's peer).
SIOT_FIRST_TOKENS = {
    "p": "points written to nodes (p.<node>; a device that speaks siot points publishes there "
    "directly, without an ingest node)",
    "up": "committed changes fanned out to ancestors (up.<ancestor>.<node>)",
    "nodes": "node reads (nodes.<parent>.<node>)",
    "history": "history reads (history.<node>)",
    "siot": "instance requests (siot.stats, siot.sync.status)",
    "sync": "sync between instances (sync.hello/up/pull/digest/state/notify.<edge>)",
}
RESERVED_FIRST_TOKENS = frozenset(SIOT_FIRST_TOKENS)
# First tokens nats-server and NATS clients use for themselves: every `$`-prefixed one ($MQTT,
# $JS, $SYS, $KV, $O, $SRV, $G, ...) and every `_`-prefixed one (_INBOX request replies, _R_ and
# _GR_ service and gateway replies, ...).
BROKER_PREFIXES = ("$", "_")


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


def reserved_reason(subject: str) -> str | None:
    """Why filter `subject` could match a subject of siot or of the broker, or None if it cannot.
    Every such subject is told apart by its first token, so the first token decides: a wildcard
    there (`>`, `*`, `*.x`) matches them all."""
    first = subject.split(".", 1)[0]
    if first in ("*", ">"):
        return f"a wildcard first token ({first!r}) also matches siot's and the broker's own subjects"
    if first in SIOT_FIRST_TOKENS:
        return f"{first!r} subjects are siot's own: {SIOT_FIRST_TOKENS[first]}"
    if first.startswith(BROKER_PREFIXES):
        return (
            f"subjects starting with {first[0]!r} ({first}) are NATS's internal ones "
            "(the broker's, and request replies)"
        )
    return None


def check_not_reserved(subject: str, topic: str = "") -> str:
    """Refuse a filter that could match siot's own subjects (p.*, up.*, sync.*, ...) or the
    broker's (`$MQTT.>`, `$JS.>`, `_INBOX.>`, ...). `topic`: the MQTT filter it came from."""
    reason = reserved_reason(subject)
    if reason is not None:
        source = f"MQTT topic {topic!r} (subject {subject!r})" if topic else f"subject {subject!r}"
        raise InvalidInput(f"filter {source} is refused: {reason}")
    return subject
