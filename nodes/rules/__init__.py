"""Rules: `rule` nodes with `condition`, `action` and `actionInactive` children (docs/rules.md).

The package exports the pure engine. The node client lives in `siot.nodes.rules.manager`, which
`siot serve` imports (and which imports the notify package, which imports these configs).
"""

from siot.nodes.rules.build import NodePoints, build_rule
from siot.nodes.rules.clock import Clock, ManualClock, SystemClock
from siot.nodes.rules.conditions import RollingStats, compare
from siot.nodes.rules.config import ActionConfig, ConditionConfig, RuleConfig
from siot.nodes.rules.rule import ActionRun, Outcome, RuleRuntime
from siot.nodes.rules.schedule import Schedule

__all__ = [
    "ActionConfig",
    "ActionRun",
    "Clock",
    "ConditionConfig",
    "ManualClock",
    "NodePoints",
    "Outcome",
    "RollingStats",
    "RuleConfig",
    "RuleRuntime",
    "Schedule",
    "SystemClock",
    "build_rule",
    "compare",
]
