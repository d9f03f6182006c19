"""What a notification says: built once from the rule, the triggering point and the node's name,
then rendered as an email or a webhook body."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

NS_PER_S = 1_000_000_000


class _Blank(dict[str, Any]):
    """format_map source that leaves unknown {fields} visible instead of raising."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


@dataclass(slots=True, frozen=True)
class Notification:
    rule: str
    rule_description: str
    node: str
    node_description: str
    point: str
    key: str
    value: Any
    time_ns: int
    template: str = ""
    reminder: bool = False
    inactive: bool = False

    @property
    def time_text(self) -> str:
        return datetime.fromtimestamp(self.time_ns / NS_PER_S, UTC).isoformat(timespec="seconds")

    @property
    def text(self) -> str:
        """The message body: the action's template if it has one, else a sentence naming the
        rule, the node (by description), the point and its value."""
        fields = _Blank(
            rule=self.rule_description or self.rule,
            node=self.node_description or self.node,
            point=self.point,
            key=self.key,
            value=self.value,
            time=self.time_text,
        )
        if self.template:
            return self.template.format_map(fields)
        state = "no longer active" if self.inactive else "still active" if self.reminder else "active"
        if not self.point:
            return "{rule} is {state} at {time}".format_map(_Blank(fields, state=state))
        return "{rule} is {state}: {node} {point} = {value} at {time}".format_map(_Blank(fields, state=state))

    @property
    def subject(self) -> str:
        return f"[siot] {self.text.splitlines()[0][:150]}"

    def to_json(self) -> dict[str, Any]:
        """The webhook body (documented in docs/rules.md)."""
        return {
            "rule": self.rule,
            "ruleDescription": self.rule_description,
            "node": self.node,
            "nodeDescription": self.node_description,
            "point": self.point,
            "key": self.key,
            "value": self.value,
            "time": self.time_ns,
            "message": self.text,
            "reminder": self.reminder,
            "inactive": self.inactive,
        }
