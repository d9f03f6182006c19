"""The rules node client: finds `rule` nodes, keeps their runtimes loaded, feeds them the committed
points they depend on, runs their timers and their actions.

Event flow. The engine runs in the daemon and watches committed changes in process (siot/bus.py,
DESIGN §1), only those its rules depend on, so the rest of the system's traffic never reaches it
(see `_wanted_for`): edge changes under the root (rules created, moved, deleted), each rule's
subtree for its own and its children's config, the own points of each node a condition names,
and the subtree of each node a condition watches (blank nodeID, offline). At most one watch
matches any change for a given ancestor, so a change arrives once per ancestor it is fanned out
to, and the ancestor says which watchers it is for. A point therefore reaches only the conditions
that depend on it, through dict lookups.

A watch is live before the store is read for what it covers (a rule's children, a watched node's
current points), so nothing committed in between is missed.

One consumer task owns all rule state. Changes, timer ticks and finished actions are put on one
queue and handled in order, so two evaluations of a rule never interleave and the state points
they write are submitted in the order they were computed. Config reloads run inside the consumer
too: events that arrive while a rule is (re)loading wait in the queue and reach the new runtime,
after it has been seeded from the store, so nothing falls between old and new.

Writes are submitted to the write path without waiting: the store commits in submission order,
so the engine never waits on a commit. A setValue is submitted by the consumer itself, before the
rule's state write that records its `lastRun`, so a committed `lastRun` implies a committed
setValue (a crash in between re-runs it: at-least-once); its outcome only sets or clears the
action's `error` point. Notify actions run in their own tasks (a webhook may retry for minutes)
and report back through the queue. Every write has `origin` = the writing node's id.

A rule's problem stays that rule's. Bad config is refused by the validators (bounded durations,
siot.nodes.config) and becomes an `error` point on the node. An exception while loading,
evaluating or acting on a rule unloads that rule only, writes an `error` point on it and one
WARNING naming it; it is loaded again after `RETRY_S` or when its config changes. A rule that
re-triggers itself through its own writes is paused by the loop guard (loops.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from siot import subjects
from siot.bus import Change, Scope
from siot.client import NodeInfo, TreeNode
from siot.errors import SiotError
from siot.local import LocalClient
from siot.nodes.notify import Notification, Notifier
from siot.nodes.rules.build import ACTION, ACTION_INACTIVE, CONDITION, RULE, NodePoints, build_rule
from siot.nodes.rules.clock import Clock, SystemClock
from siot.nodes.rules.conditions import Anomaly, Offline, Watch
from siot.nodes.rules.config import ActionType
from siot.nodes.rules.index import RuleIndex
from siot.nodes.rules.loops import LOOP_PREFIX, LoopGuard
from siot.nodes.rules.rule import ERROR, ActionRun, ConditionRuntime, Outcome, RuleRuntime
from siot.nodes.rules.schedule import NS_PER_S
from siot.nodes.rules.watches import RuleWatches
from siot.nodes.rules.writer import RuleWriter
from siot.points import NODE_TYPE, Point
from siot.runtime import AppContext

logger = logging.getLogger(__name__)

RULE_TYPES = frozenset((RULE, CONDITION, ACTION, ACTION_INACTIVE))
ENGINE_TYPES = RULE_TYPES | {"msgService", "user"}
DEFAULT_QUEUE_SIZE = 100_000
# A config change is applied once the queue is drained, or after this long under steady load.
RELOAD_DELAY_NS = 200_000_000
STOP_TIMEOUT_S = 10.0
# A rule that failed to load, or raised while evaluating or acting, is loaded again this much later
# (engine clock), or at once when its config changes.
RETRY_S = 30.0


@dataclass(slots=True, frozen=True)
class _Changed:
    ancestor: str
    node: str
    parent: str | None
    points: list[Point]


@dataclass(slots=True, frozen=True)
class _Tick:
    pass


@dataclass(slots=True, frozen=True)
class _ActionDone:
    run: ActionRun
    error: str


@dataclass(slots=True, frozen=True)
class _ActionError:
    """A setValue's reply changed the action's error state ("" = succeeded)."""

    action: str
    error: str


_Event = _Changed | _Tick | _ActionDone | _ActionError


class RulesManager:
    """Runs every rule of one instance. `async with RulesManager(client):` returns once all rules
    are loaded and evaluated and every watch is live (`ready`); leaving stops the tasks and waits
    (bounded) for running actions."""

    def __init__(
        self,
        client: LocalClient,
        *,
        clock: Clock | None = None,
        notifier: Notifier | None = None,
        manages: Callable[[str], bool] | None = None,
    ) -> None:
        self.client = client
        # Rules inside an edge's replicated subtree run on the edge, not here (AppContext.manages).
        self.manages = manages or (lambda node: True)
        self.clock: Clock = clock or SystemClock()
        self.notifier = notifier or Notifier(client)
        self.rules: dict[str, RuleRuntime] = {}
        self.ready = asyncio.Event()
        self._root = ""
        self.index = RuleIndex()
        # Every node ever seen with nodeType rule (an undelete's edge change carries no type), and
        # those seen by the NATS callback that the consumer has not (re)loaded yet.
        self._known_rules: set[str] = set()
        self._pending_rules: set[str] = set()
        self.watching = RuleWatches(client, self._wanted_for, self._on_change)
        self._queue: asyncio.Queue[_Event] = asyncio.Queue(maxsize=DEFAULT_QUEUE_SIZE)
        self.dropped_changes = 0
        # Counters for `siot.stats` (`rules`) and /metrics: evaluations of a loaded rule, and
        # actions started (setValue submitted, notify task spawned).
        self.evaluations = 0
        self.actions_run = 0
        self._deadlines: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._tick_queued = False
        self.writer = RuleWriter(client, self._describe, self._on_action_outcome)
        self._dirty: dict[str, str | None] = {}  # rule id -> parent hint
        self._dirty_since_ns = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._actions: set[asyncio.Task[None]] = set()
        self._loops: dict[str, LoopGuard] = {}  # rule id -> its loop guard (loops.py)
        self._retry: set[str] = set()  # broken rules whose `_deadlines` entry is a reload

    def stats(self) -> dict[str, int]:
        """Field `rules` of `siot.stats` (read by /metrics too)."""
        return {
            "loaded": len(self.rules),
            "evaluations": self.evaluations,
            "actionsRun": self.actions_run,
            "droppedChanges": self.dropped_changes,
            "notificationsSent": self.notifier.sent,
            "notificationsFailed": self.notifier.failed,
        }

    # ---- lifecycle ----

    async def __aenter__(self) -> RulesManager:
        self._root = await self.client.load_root()
        # Watch before loading, so a change committed during the load is queued, not lost:
        # edges first (rules created meanwhile), then every rule's subtree, then read the rules.
        self.watching.sync([self._root])
        tree = await self.client.tree(self._root)
        # Added to, not replaced: the edge callback may already have seen rules created after
        # the read, and replacing would forget them (and cancel their watches).
        found = {node.id for node in _walk(tree) if node.type == RULE}
        self._known_rules |= found
        self._pending_rules |= found
        self.watching.sync(found)
        for node in _walk(tree):
            if node.type == RULE:
                await self._load_guarded(node.id, node.parent)
        self._spawn(self._consume(), "consume")
        self._spawn(self._timers(), "timers")
        self.ready.set()
        logger.info("rules: %d rule(s) loaded under %s", len(self.rules), self._root)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.watching.cancel_all()
        if self._actions:
            _, pending = await asyncio.wait(self._actions, timeout=STOP_TIMEOUT_S)
            if pending:
                logger.warning("rules: %d action(s) still running at shutdown; cancelled", len(pending))
        for task in (*self._tasks, *self._actions):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._actions, return_exceptions=True)

    def _spawn(self, coro: Any, name: str, bucket: set[asyncio.Task[None]] | None = None) -> None:
        bucket = self._tasks if bucket is None else bucket
        task = asyncio.create_task(coro, name=f"rules {name}")
        bucket.add(task)
        task.add_done_callback(bucket.discard)

    def _wanted_for(self, node: str) -> set[Scope]:
        """The watches the current rules need for `node` (module doc). A node needing both its
        own points and its subtree gets the subtree only, which includes its own points."""
        if self.index.watches_subtree(node) or node in self.rules or node in self._pending_rules:
            return {Scope.SUBTREE}
        wanted = {Scope.OWN} if self.index.watches_node(node) else set()
        if node == self._root:
            wanted.add(Scope.EDGES)
        return wanted

    def _on_change(self, ancestor: str, change: Change) -> None:
        """A committed change one of the watches matched (called in the commit listener: no
        awaiting here, the consumer does the work)."""
        node, parent, points = change.node, change.parent, change.points
        if (
            parent is not None
            and ancestor == self._root
            and (node in self._known_rules or any(p.type == NODE_TYPE and p.value == RULE for p in points))
        ):
            # Watch the rule's subtree before its change is queued: the reload it causes then
            # reads the children after the watch is live, so no child point is lost.
            self._known_rules.add(node)
            self._pending_rules.add(node)
            self.watching.sync([node])
        self._put(_Changed(ancestor, node, parent, points))

    def _put(self, event: _Event) -> None:
        """Queue an event for the consumer; a consumer `DEFAULT_QUEUE_SIZE` events behind loses
        the newest, counted and logged (the engine is far behind the store then)."""
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped_changes += 1
            if self.dropped_changes % 10_000 == 1:
                logger.warning(
                    "rules: the engine is %d events behind; %d dropped so far",
                    self._queue.qsize(),
                    self.dropped_changes,
                )

    # ---- the consumer: the only code that touches rule state after start ----

    async def _consume(self) -> None:
        queue = self._queue
        while True:
            await self._handle(await queue.get())

    async def _handle(self, event: _Event) -> None:
        try:
            match event:
                case _Changed():
                    await self._on_changed(event)
                case _Tick():
                    self._tick_queued = False
                    await self._on_tick()
                case _ActionDone():
                    await self._on_action_done(event)
                case _ActionError():
                    self.writer.set_error(event.action, event.error)
            if self._dirty and (
                self._queue.empty() or time.monotonic_ns() - self._dirty_since_ns > RELOAD_DELAY_NS
            ):
                await self._reload_dirty()
        except Exception:
            logger.exception("rules: failed to handle %s", type(event).__name__)

    async def _on_changed(self, event: _Changed) -> None:
        now = self.clock.now_ns()
        if event.parent is not None:
            if event.ancestor == self._root:  # every edge change comes once with the root as ancestor
                self._note_edge_change(event)
            return
        self._note_point_change(event)
        if self._dirty and self._feeds_dirty_rule(event):
            # A config change of this rule is waiting for the queue to drain: apply it first, so
            # the point meets the config that was committed before it (not a half-built rule).
            await self._reload_dirty()
        if event.ancestor == event.node:
            for rule, cond in self.index.naming(event.node):
                for point in event.points:
                    await self._on_rule_point(rule, cond, event.node, point, now)
        for rule, cond in self.index.under(event.ancestor, event.node):
            for point in event.points:
                # The engine's own writes (setValue) are not the device speaking.
                if isinstance(cond.evaluator, Offline) and self.index.owned(point.origin):
                    continue
                await self._on_rule_point(rule, cond, event.node, point, now)

    async def _on_rule_point(
        self, rule: RuleRuntime, cond: ConditionRuntime, node: str, point: Point, now: int
    ) -> None:
        """Show a committed point to one condition and evaluate its rule, unless the loop guard
        holds the rule: then the condition still takes the point, for when the rule resumes."""
        if self.rules.get(rule.id) is not rule or cond.evaluator is None:
            return  # unloaded by an earlier point of this event, or a condition with bad config
        try:
            if not cond.evaluator.on_point(node, point, now):
                return  # not a point this condition is about
        except Exception as exc:
            self._break(rule.id, f"internal error: {_exception(exc)}")
            return
        cause = self.index.owner(point.origin)  # the rule whose write this is, if the engine's
        if self._held(rule, cause):
            return  # the condition has taken the point; the rule evaluates when it resumes
        await self._evaluate(rule, partial(rule.evaluate, now), cause)

    def _feeds_dirty_rule(self, event: _Changed) -> bool:
        watchers = self.index.depends_on(event.ancestor, event.node)
        return any(rule.id in self._dirty for rule, _ in watchers)

    def _note_edge_change(self, event: _Changed) -> None:
        """Mark the rules an edge change may alter (a rule added, moved or deleted, or a child of
        one); they reload when the queue is drained."""
        node, parent = event.node, event.parent
        if node in self._known_rules:
            self._mark_dirty(node, parent)
        if parent in self.rules or parent in self._dirty:
            self._mark_dirty(parent, None)

    def _note_point_change(self, event: _Changed) -> None:
        """Mark the rule whose config a point change may alter: a rule's, or a child's, including a
        child its rule has not loaded yet (it arrives through the rule's subtree)."""
        node, ancestor = event.node, event.ancestor
        rule = self.index.owner(node)
        if rule is None and ancestor != node and (ancestor in self.rules or ancestor in self._pending_rules):
            rule = ancestor
        # Points the engine wrote (state, errors, notifications) carry an owned node as origin.
        if rule is not None and not all(self.index.owned(p.origin) for p in event.points):
            self._mark_dirty(rule, None)

    def _mark_dirty(self, rule: str, parent: str | None) -> None:
        if not self._dirty:
            self._dirty_since_ns = time.monotonic_ns()
        if parent is not None or rule not in self._dirty:
            self._dirty[rule] = parent

    async def _reload_dirty(self) -> None:
        dirty, self._dirty = self._dirty, {}
        for rule, parent_hint in dirty.items():
            await self._load_guarded(rule, parent_hint)

    async def _on_tick(self) -> None:
        now = self.clock.now_ns()
        for rule_id, deadline in list(self._deadlines.items()):
            if deadline > now:
                continue
            rule = self.rules.get(rule_id)
            if rule is None:
                if rule_id in self._retry:  # a broken rule's time to be loaded again
                    self._retry.discard(rule_id)
                    self._deadlines.pop(rule_id, None)
                    self._mark_dirty(rule_id, None)
                continue
            guard = self._loops.get(rule_id)
            if guard is not None and guard.paused_until_ns:
                if now < guard.paused_until_ns:
                    self._schedule(rule)
                    continue
                guard.resume(now, rule.config.loop_pause_s)
                logger.info("rules: rule %s resumes after its loop pause", rule_id)
            elif guard is not None and guard.clear_at_ns and now >= guard.clear_at_ns:
                del self._loops[rule_id]
                if self.writer.errors.get(rule_id, "").startswith(LOOP_PREFIX):
                    self.writer.set_error(rule_id, "")
            await self._evaluate(rule, partial(rule.evaluate, now))

    async def _on_action_done(self, event: _ActionDone) -> None:
        run = event.run
        rule = self.rules.get(run.rule.id, run.rule)
        last_run = rule.action_done(run.action.id, run.run_ns)
        if last_run is not None:
            self.writer.write(rule.id, [last_run])
        self.writer.set_error(run.action.id, event.error)
        if not self._held(rule, None):
            await self._evaluate(rule, partial(rule.evaluate, self.clock.now_ns()))

    # ---- one rule's problems: errors and loops ----

    async def _evaluate(
        self, rule: RuleRuntime, compute: Callable[[], Outcome], cause: str | None = None
    ) -> None:
        """Compute an outcome of a loaded rule and apply it. `cause` is the rule whose write
        caused this evaluation (None: a device, a timer): what it makes counts for the loop
        guard. An exception unloads this rule only (`_break`)."""
        if self.rules.get(rule.id) is not rule:
            return
        self.evaluations += 1
        try:
            outcome = compute()
            guard = self._loops.get(rule.id) if cause is not None else None
            if guard is not None:
                guard.record(outcome.transitions + len(outcome.runs))
            await self._apply(rule, outcome)
        except Exception as exc:
            self._break(rule.id, f"internal error: {_exception(exc)}")

    def _held(self, rule: RuleRuntime, cause: str | None) -> bool:
        """Whether the rule must not evaluate now: it is paused by the loop guard, or this
        evaluation, caused by the engine's own write, would be one past its loop limit (which
        pauses it)."""
        guard = self._loops.get(rule.id)
        if guard is not None and guard.paused_until_ns:
            return True
        if cause is None:
            return False
        if guard is None:
            guard = self._loops[rule.id] = LoopGuard()
        if guard.admit(time.monotonic_ns(), rule.config.loop_limit, cause):
            return False
        self._trip(rule, guard)
        return True

    def _trip(self, rule: RuleRuntime, guard: LoopGuard) -> None:
        pause_s = rule.config.loop_pause_s
        took_s = guard.trip(time.monotonic_ns(), self.clock.now_ns(), pause_s)
        causes = ", ".join(
            "its own actions" if cause == rule.id else f"rule {cause}{self._described(cause)}"
            for cause in sorted(guard.causes, key=lambda c: (c != rule.id, c))
        )
        self.writer.set_error(
            rule.id,
            f"{LOOP_PREFIX} {guard.count} transitions and action runs in {took_s:.2f} s were caused "
            f"by the setValue writes of {causes}, past the limit of {rule.config.loop_limit} per "
            f"second (point loopLimit); paused for {pause_s:g} s (point loopPause), then it resumes; "
            "a change of the rule or of its children resumes it at once",
        )
        self._schedule(rule)

    def _described(self, rule_id: str) -> str:
        rule = self.rules.get(rule_id)
        return f" ({rule.config.description})" if rule is not None and rule.config.description else ""

    def _break(self, rule_id: str, message: str) -> None:
        """Unload a rule whose loading, evaluation or action raised, and say so on it; it is
        loaded again after `RETRY_S`, or at once when its config changes (its subscription stays)."""
        logger.debug("rules: rule %s failed", rule_id, exc_info=True)
        self._unload(rule_id)
        self.index.own(rule_id, rule_id)  # its own error write is not a config change
        self._pending_rules.add(rule_id)
        self.writer.set_error(rule_id, message)
        self._retry.add(rule_id)
        self._deadlines[rule_id] = self.clock.now_ns() + int(RETRY_S * NS_PER_S)
        self._wake.set()

    def _schedule(self, rule: RuleRuntime) -> None:
        """Set the rule's next timer: its own deadline (schedule edge, hold, reminder) and its
        loop guard's (resume, error cleanup); while paused, only the resume."""
        if self.rules.get(rule.id) is not rule:
            return
        guard = self._loops.get(rule.id)
        if guard is not None and guard.paused_until_ns:
            deadline: int | None = guard.paused_until_ns
        else:
            times = (rule.next_deadline_ns(self.clock.now_ns()), guard.deadline_ns() if guard else None)
            deadline = min((t for t in times if t is not None), default=None)
        if deadline is None:
            self._deadlines.pop(rule.id, None)
        else:
            self._deadlines[rule.id] = deadline
            self._wake.set()

    # ---- outcomes, timers, actions ----

    async def _apply(self, rule: RuleRuntime, outcome: Outcome) -> None:
        """Publish the setValues, then the state writes (one message per node, the rule's own
        carrying the setValues' `lastRun`), then start the notify tasks."""
        last_runs: list[Point] = []
        self.actions_run += len(outcome.runs)
        for run in outcome.runs:
            if run.action.config.action is ActionType.SET_VALUE:
                self.writer.set_value(run)
                done = rule.action_done(run.action.id, run.run_ns)
                if done is not None:
                    last_runs.append(done)
        for node, points in outcome.writes:
            if node == rule.id:
                points, last_runs = points + last_runs, []
            self.writer.write(node, points)
        if last_runs:
            self.writer.write(rule.id, last_runs)
        for run in outcome.runs:
            if run.action.config.action is not ActionType.SET_VALUE:
                self._spawn(self._run_action(run), f"action {run.action.id}", self._actions)
        self._schedule(rule)

    async def _timers(self) -> None:
        """Sleep until the earliest rule deadline (schedule edge, hold expiry, reminder), then queue
        a tick; the consumer evaluates the rules that are due."""
        while True:
            self._wake.clear()
            deadline = min(self._deadlines.values(), default=None)
            if deadline is not None and deadline <= self.clock.now_ns():
                if not self._tick_queued:
                    self._tick_queued = True
                    self._put(_Tick())
                deadline = None  # the consumer will set new deadlines and wake us
            await self.clock.wait_until(deadline, self._wake)

    def _on_action_outcome(self, action: str, error: str) -> None:
        self._put(_ActionError(action, error))

    def _describe(self, node: str) -> str:
        rule = self.index.owner(node) or ""
        if rule and rule != node:
            return f"rule {rule}: child {node}"
        return f"rule {node}" if rule or node in self._known_rules else f"node {node}"

    async def _run_action(self, run: ActionRun) -> None:
        """Run a notify action in its own task; the result comes back as `_ActionDone`."""
        error = ""
        try:
            await self._notify(run)
        except SiotError as exc:
            error = str(exc)
            logger.warning("rules: action %s of rule %s failed: %s", run.action.id, run.rule.id, exc)
        except Exception as exc:
            error = f"internal error: {_exception(exc)}"
            logger.debug("rules: action %s of rule %s failed", run.action.id, run.rule.id, exc_info=True)
            logger.warning("rules: action %s of rule %s failed: %s", run.action.id, run.rule.id, error)
        self._put(_ActionDone(run, error))

    async def _notify(self, run: ActionRun) -> None:
        trigger = run.trigger
        node_description = ""
        if trigger is not None:
            with contextlib.suppress(SiotError):
                node_description = (await self.client.get_node(trigger.node)).description
        note = Notification(
            rule=run.rule.id,
            rule_description=run.rule.config.description,
            node=trigger.node if trigger else "",
            node_description=node_description,
            point=trigger.point.type if trigger else "",
            key=trigger.point.key if trigger else "",
            value=trigger.point.value if trigger else None,
            time_ns=trigger.point.time if trigger else run.run_ns,
            template=run.action.config.value if isinstance(run.action.config.value, str) else "",
            reminder=run.reminder,
            inactive=run.action.inactive,
        )
        await self.notifier.send(
            rule=run.rule.id, origin=run.action.id, service_id=run.action.config.node_id, note=note
        )

    # ---- loading ----

    async def _load_guarded(self, rule_id: str, parent_hint: str | None) -> None:
        try:
            await self._load(rule_id, parent_hint)
        except Exception as exc:
            self._break(rule_id, f"failed to load: {_exception(exc)}")

    async def _load(self, rule_id: str, parent_hint: str | None) -> None:
        """(Re)load one rule from the store: find its live parent, build, adopt the old runtime's
        state, seed new conditions, index, evaluate. A rule without a live edge is unloaded."""
        old = self.rules.get(rule_id)
        parents = [n for n in await self.client.nodes(subjects.ALL, rule_id) if n.type == RULE]
        if not parents or not self.manages(rule_id):
            self._unload(rule_id)
            self._pending_rules.discard(rule_id)
            self.watching.sync({rule_id, *_watched(old)})
            return
        preferred = parent_hint or (old.parent if old else None)
        info = next((n for n in parents if n.parent == preferred), parents[0])
        children = [
            c for c in await self.client.children(rule_id) if c.type in (CONDITION, ACTION, ACTION_INACTIVE)
        ]
        now = self.clock.now_ns()
        runtime, errors = build_rule(
            NodePoints(info.id, info.type, info.points),
            info.parent,
            [NodePoints(c.id, c.type, c.points) for c in children],
            now,
        )
        for node in (info, *children):
            self.writer.know_error(node.id, str(node.value(ERROR, default="") or ""))
        fresh = runtime.adopt(old) if old is not None else runtime.conditions
        self._unload(rule_id)  # also re-arms the loop guard: a changed rule starts afresh
        self.rules[rule_id] = runtime
        self.index.add(runtime, (child.id for child in children))
        # After indexing, so a watch the old runtime had and the new one keeps is not drained;
        # before seeding, so what is committed after the seed's read arrives as a change.
        self._pending_rules.discard(rule_id)
        self.watching.sync({rule_id, *_watched(old), *_watched(runtime)})
        trees: dict[str, TreeNode] = {}
        for cond in fresh:
            await self._seed(cond, now, trees)
        fresh_nodes = {n.id for n in (info, *children) if not n.points}
        for node, message in errors.items():
            # A node whose points have not arrived yet (create_node sends the edge first) is not
            # misconfigured, only young: its points will trigger another reload.
            if node not in fresh_nodes:
                self.writer.warn(node, message)  # also when the point was there before a restart
                self.writer.set_error(node, message, log=False)
        logger.info(
            "rules: loaded rule %s (%s): %d condition(s), %d action(s)",
            rule_id,
            runtime.config.description,
            len(runtime.conditions),
            len(runtime.actions),
        )
        await self._apply(runtime, runtime.evaluate(self.clock.now_ns()))

    def _unload(self, rule_id: str) -> None:
        old = self.rules.pop(rule_id, None)
        self._deadlines.pop(rule_id, None)
        self._loops.pop(rule_id, None)
        self._retry.discard(rule_id)
        self.index.remove(rule_id, old)

    async def _seed(self, cond: ConditionRuntime, now: int, trees: dict[str, TreeNode]) -> None:
        """Show a new evaluator the current state of what it watches, read back from the store."""
        evaluator, watch = cond.evaluator, cond.watch
        if evaluator is None or not watch.node:
            return
        try:
            nodes = await self._watched_nodes(watch, trees)
        except SiotError as exc:
            logger.warning("rules: condition %s watches %s: %s", cond.id, watch.node, exc)
            return
        if isinstance(evaluator, Offline):
            seen = [p.time for n in nodes for p in n.points if p.time]
            evaluator.last_seen_ns = min(max(seen, default=now), now)
            return
        if isinstance(evaluator, Anomaly):
            start = now - int(cond.config.window_s * NS_PER_S)
            for n in nodes:
                for p in await self.client.history(
                    n.id, cond.config.point_type, cond.config.point_key, start_ns=start
                ):
                    evaluator.on_point(n.id, p, now)
            return
        for n in nodes:
            for p in n.points:
                evaluator.on_point(n.id, p, now)

    async def _watched_nodes(self, watch: Watch, trees: dict[str, TreeNode]) -> list[NodeInfo]:
        if not watch.subtree:
            return [await self.client.get_node(watch.node)]
        if watch.node not in trees:
            trees[watch.node] = await self.client.tree(watch.node)
        return [n for n in _walk(trees[watch.node]) if n.type not in ENGINE_TYPES]


def _exception(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _watched(runtime: RuleRuntime | None) -> set[str]:
    """The nodes a rule's conditions watch (by name or as a subtree)."""
    return {c.watch.node for c in runtime.conditions if c.watch.node} if runtime else set()


def _walk(tree: TreeNode) -> list[NodeInfo]:
    """Every live node of a fetched tree, parents first."""
    order: list[NodeInfo] = []
    stack = [tree]
    while stack:
        current = stack.pop()
        if not current.node.deleted:
            order.append(current.node)
            stack.extend(reversed(current.children))
    return order


@contextlib.asynccontextmanager
async def rules_client(ctx: AppContext, *, clock: Clock | None = None) -> AsyncIterator[RulesManager]:
    """The rules node client (siot/node_clients.py). `clock`: the engine's time (tests pass a
    `ManualClock` through `App(node_clients=...)`; default the system clock)."""
    async with RulesManager(ctx.client, clock=clock, manages=ctx.manages) as manager:
        remove_stats = ctx.api.add_stats("rules", manager.stats)
        try:
            yield manager
        finally:
            remove_stats()
