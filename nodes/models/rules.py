"""A data model: the point types a device may send, each with a value type, unit and range.

Why here and not in pydantic: the check runs on the API's hot path for every batch sent to a
device that references a model, so it is a plain lookup plus a few comparisons per point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from siot.errors import InvalidPoint
from siot.points import Point

# Point types a device may always carry, model or not: its own metadata and what siot records.
SYSTEM_TYPES = frozenset(("description", "model", "rejected", "error", "tag", "disabled"))


class ValueType(StrEnum):
    NUMBER = "number"
    INT = "int"
    BOOL = "bool"
    TEXT = "text"


@dataclass(slots=True, frozen=True)
class FieldRule:
    """What one point type must look like. `min`/`max` apply to number and int values."""

    value_type: ValueType | None = None
    unit: str = ""
    min: float | None = None
    max: float | None = None


@dataclass(slots=True, frozen=True)
class Model:
    """A compiled `model` node. `name` is its description (devices may reference it by name)."""

    id: str
    name: str
    fields: dict[str, FieldRule] = field(default_factory=dict)
    allow_other: bool = False
    record_rejected: bool = True

    @property
    def label(self) -> str:
        return self.name or self.id

    def check(self, points: list[Point]) -> None:
        """Raise `InvalidPoint` (naming point index, field and the broken rule) for the first
        point that breaks the model. Deleted points and system types always pass."""
        for index, point in enumerate(points):
            if point.deleted or point.type in SYSTEM_TYPES:
                continue
            rule = self.fields.get(point.type)
            if rule is None:
                if self.allow_other:
                    continue
                allowed = ", ".join(sorted(self.fields)) or "none"
                raise InvalidPoint(
                    f"'{point.type}' is not a point type of model '{self.label}' (allowed: {allowed})",
                    index=index,
                    field="type",
                )
            problem = _break(rule, point.value)
            if problem:
                raise InvalidPoint(
                    f"{point.type}={point.value!r} breaks rule {problem} of model '{self.label}'",
                    index=index,
                    field="value",
                )


def _break(rule: FieldRule, value: Any) -> str:
    """The rule `value` breaks, as `name=limit` text, or "" when it passes."""
    kind = rule.value_type
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    # An int too large for a float (JSON has no limit) is an int, and never a finite number.
    integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    finite = isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))
    if kind is ValueType.BOOL and not isinstance(value, bool):
        return "valueType=bool"
    if kind is ValueType.TEXT and not isinstance(value, str):
        return "valueType=text"
    if kind is ValueType.INT and not (is_number and integral):
        return "valueType=int"
    if kind is ValueType.NUMBER and not (is_number and finite):
        return "valueType=number"
    if is_number:
        if rule.min is not None and value < rule.min:
            return f"min={_num(rule.min)}"
        if rule.max is not None and value > rule.max:
            return f"max={_num(rule.max)}"
    return ""


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _bool(value: Any, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _float(value: Any) -> float | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return None if math.isnan(number) else number


def compile_model(model_id: str, points: list[Point]) -> tuple[Model, list[str]]:
    """Build a `Model` from a model node's points; also return the problems found in them
    (unknown value types, bad limits), which the caller reports on the model node.

    Keyed points define fields: `valueType`/`unit`/`min`/`max` with key = the point type."""
    problems: list[str] = []
    name = ""
    allow_other: Any = None
    record_rejected: Any = None
    specs: dict[str, dict[str, Any]] = {}
    for p in points:
        if p.deleted:
            continue
        if p.type == "description":
            name = str(p.value or "")
        elif p.type == "allowOther":
            allow_other = p.value
        elif p.type == "recordRejected":
            record_rejected = p.value
        elif p.type in ("valueType", "unit", "min", "max") and p.key != "0":
            specs.setdefault(p.key, {})[p.type] = p.value
    fields: dict[str, FieldRule] = {}
    for ptype, spec in sorted(specs.items()):
        value_type = None
        raw_type = spec.get("valueType")
        if raw_type not in (None, ""):
            try:
                value_type = ValueType(str(raw_type).lower())
            except ValueError:
                problems.append(
                    f"{ptype}: valueType {raw_type!r} is not one of {', '.join(v.value for v in ValueType)}"
                )
        low, high = _float(spec.get("min")), _float(spec.get("max"))
        for limit in ("min", "max"):
            if spec.get(limit) not in (None, "") and _float(spec.get(limit)) is None:
                problems.append(f"{ptype}: {limit} {spec[limit]!r} is not a number")
        if low is not None and high is not None and low > high:
            problems.append(f"{ptype}: min {_num(low)} > max {_num(high)}")
        fields[ptype] = FieldRule(value_type, str(spec.get("unit") or ""), low, high)
    model = Model(
        id=model_id,
        name=name,
        fields=fields,
        allow_other=_bool(allow_other, False),
        record_rejected=_bool(record_rejected, True),
    )
    return model, problems
