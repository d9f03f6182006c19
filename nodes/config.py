"""What every node client's config shares: the pydantic base, the one decoder from points, and
bounded value types.

Why here, once: a node's config comes from points anyone with the NATS port may write, and a
value the code cannot use (a duration of `1e300` s whose nanoseconds do not fit in an int, NaN,
infinity, a repeat interval of 1e-4 s) must be refused by the validator, where it becomes an
`error` point on that node, instead of raising later in the middle of loading, evaluating or
acting on it. So every config class derives from `NodeConfig` (no NaN or infinity in any float
field) and every duration field is a `Duration` with explicit bounds (docs/limits.md).
"""

from __future__ import annotations

import functools
import math
import typing
from collections.abc import Collection
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from siot.errors import InvalidInput
from siot.points import DEFAULT_KEY, Point

# The longest duration any node config may hold (a hold, a timeout, a window, an interval): a
# year and a day. Its nanoseconds (3.2e16) added to any timestamp of this century fit in int64.
MAX_DURATION_S = 366 * 86_400.0
# The shortest interval between repeated runs (an action's `repeatInterval`): anything faster is
# a flood, not a reminder.
MIN_INTERVAL_S = 1.0


class NodeConfig(BaseModel):
    """Base of every node type's typed config. Point names are aliases (camelCase), unknown
    points are ignored, configs are immutable, and no float field takes NaN or infinity."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True, allow_inf_nan=False)


ConfigT = TypeVar("ConfigT", bound=BaseModel)


class ConfigError(InvalidInput):
    """A node's points do not make a valid config; the message names each bad field."""


def point_fields(points: Collection[Point], keyed: Collection[str] = ()) -> dict[str, Any]:
    """Fold a node's points into a field map: types in `keyed` become `{key: value}` (Simple
    IoT's arrays and maps, e.g. `weekday` key "1" = Monday); the others take key "0". Deleted
    points are left out, so tombstoning a point restores the field's default."""
    fields: dict[str, Any] = {}
    for p in points:
        if p.deleted:
            continue
        if p.type in keyed:
            fields.setdefault(p.type, {})[p.key] = p.value
        elif p.key == DEFAULT_KEY:
            fields[p.type] = p.value
    return fields


@functools.cache
def keyed_points(model: type[BaseModel]) -> frozenset[str]:
    """The point types that fill a map field of `model` (by alias and by name)."""
    names: set[str] = set()
    for name, info in model.model_fields.items():
        if typing.get_origin(info.annotation) is dict:
            names.add(name)
            if info.alias:
                names.add(info.alias)
    return frozenset(names)


def decode_config(model: type[ConfigT], points: Collection[Point], **known: Any) -> ConfigT:
    """Build a node's typed config from its points (the one decoder of every node type);
    `known` adds what comes from the tree (id, parent). Raises `ConfigError` naming each bad
    field, also for a validator that raised something other than a ValueError."""
    try:
        return model.model_validate({**known, **point_fields(points, keyed_points(model))})
    except ValidationError as exc:
        raise ConfigError("; ".join(_describe(err) for err in exc.errors())) from None
    except Exception as exc:
        raise ConfigError(f"invalid config: {type(exc).__name__}: {exc}") from exc


def try_decode_config(model: type[ConfigT], points: Collection[Point]) -> tuple[ConfigT | None, str]:
    """`decode_config` for callers that keep going with an error message: (config, "") or
    (None, message)."""
    try:
        return decode_config(model, points), ""
    except ConfigError as exc:
        return None, str(exc)


def _describe(err: Any) -> str:
    where = ".".join(str(part) for part in err.get("loc", ()) if part != "__root__")
    message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def _num(value: float) -> str:
    value = float(value)  # pydantic hands a float field's validator an int as it came
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:g}"


def _seconds(value: float) -> str:
    text = f"{_num(value)} s"
    if value >= 86_400:
        text += f" ({_num(value / 86_400)} days)"
    return text


def Duration(
    min_s: float = 0.0,
    max_s: float = MAX_DURATION_S,
    *,
    exclusive_min: bool = False,
    zero_means_off: bool = False,
) -> Any:
    """A float of seconds within [min_s, max_s] (or (min_s, max_s] with `exclusive_min`), as an
    annotated type for a config field. With `zero_means_off`, 0 is accepted too (a feature that
    is off), and the minimum applies to every other value."""

    def check(value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"{value} is not a finite number of seconds")
        if zero_means_off and value == 0:
            return value
        too_low = value <= min_s if exclusive_min else value < min_s
        if too_low or value > max_s:
            low = f"more than {_seconds(min_s)}" if exclusive_min else f"at least {_seconds(min_s)}"
            off = "0 (off) or " if zero_means_off else ""
            raise ValueError(
                f"{_num(value)} s is out of range: must be {off}{low} and at most {_seconds(max_s)}"
            )
        return value

    return Annotated[float, AfterValidator(check)]


def Bounded(low: float, high: float, unit: str = "") -> Any:
    """A finite float within [low, high] (for values that are not seconds, such as days)."""
    suffix = f" {unit}" if unit else ""

    def check(value: float) -> float:
        if not (math.isfinite(value) and low <= value <= high):
            raise ValueError(
                f"{_num(value)}{suffix} is out of range: must be {_num(low)}..{_num(high)}{suffix}"
            )
        return value

    return Annotated[float, AfterValidator(check)]
