"""The rules node client: finds `rule` nodes, keeps their runtimes loaded, feeds them the committed
points they depend on, runs their timers and their actions.

Event flow. The engine subscribes only to what its rules depend on, so the rest of the
system's traffic never reaches it (see `_wanted_for`): `up.<root>.*.*` for edge changes (rules
created, moved, deleted), `up.<rule>.>` per rule for its own and its children's config,
`up.<node>.<node>` per node a condition names, and `up.<node>.>` per subtree a condition watches
(blank nodeID, offline). At most one subscription matches any subject, so a change arrives once
per ancestor it is published to, and the subject says which watchers it is for. A point
therefore reaches only the conditions that depend on it, through dict lookups.

A subscription is always live (flushed) before the store is read for what it covers (a rule's
children, a watched node's current points), so nothing committed in between is missed. One that
is no longer needed is drained, not dropped: nats-py discards the messages still pending on an
unsubscribed subscription.

One consumer task owns all rule state. NATS callbacks, timer ticks and finished actions are put
on one queue and handled in order, so two evaluations of a rule never interleave and the state
points they write are published in the order they were computed. Config reloads run inside the
consumer too: events that arrive while a rule is (re)loading wait in the queue and reach the new
runtime, after it has been seeded from the store, so nothing falls between old and new.

Writes are published, not requested: NATS keeps the order of one connection and the store
commits in arrival order, so the engine never waits on a commit. A setValue is published by the
consumer itself, before the rule's state write that records its `lastRun`, so a committed
`lastRun` implies a committed setValue (a crash in between re-runs it: at-least-once); its reply
comes back on the manager's inbox and only sets or clears the action's `error` point. Notify
actions run in their own tasks (a webhook may retry for minutes) and report back through the
queue. All writes go through the NATS API with `origin` = the writing node's id.

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
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from siot import subjects
from siot.app import AppContext, register_node_client
from siot.client import Client, NodeInfo, TreeNode
from siot.codec import decode_reply, decode_trusted_points, encode_points
from siot.errors import SiotError
from siot.nodes.notify import Notification, Notifier
from siot.nodes.rules.build import ACTION, ACTION_INACTIVE, CONDITION, RULE, NodePoints, build_rule
from siot.nodes.rules.clock import Clock, SystemClock
from siot.nodes.rules.conditions import Anomaly, Offline, Watch
from siot.nodes.rules.config import ActionType
from siot.nodes.rules.loops import LOOP_PREFIX, LoopGuard
from siot.nodes.rules.rule import ERROR, ActionRun, ConditionRuntime, Outcome, RuleRuntime
from siot.nodes.rules.schedule import NS_PER_S
from siot.outbox import Outbox
from siot.points import NODE_TYPE, Point

logger = logging.getLogger(__name__)

RULE_TYPES = frozenset((RULE, CONDITION, ACTION, ACTION_INACTIVE))
ENGINE_TYPES = RULE_TYPES | {"msgService", "user"}
DEFAULT_QUEUE_SIZE = 100_000
# A config change is applied once the queue is drained, or after this long under steady load.
RELOAD_DELAY_NS = 200_000_000
STOP_TIMEOUT_S = 10.0
MAX_EVENTS_PER_SEND = 256
# Far above any burst: a subscription that hits nats-py's limit drops messages (slow consumer).
PENDING_MSGS_LIMIT = 1_000_000
RULES_ENV = "SIOT_RULES"
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
    are loaded and evaluated and every subscription is live (`ready`); leaving stops the tasks and
    waits (bounded) for running actions. The client's connection is borrowed, not closed."""

    def __init__(
        self,
        client: Client,
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
        self._owner: dict[str, str] = {}  # rule and child node id -> rule id
        # Every node ever seen with nodeType rule (an undelete's edge change carries no type), and
        # those seen by the NATS callback that the consumer has not (re)loaded yet.
        self._known_rules: set[str] = set()
        self._pending_rules: set[str] = set()
        self._exact: dict[str, list[tuple[RuleRuntime, ConditionRuntime]]] = {}
        self._subtree: dict[str, list[tuple[RuleRuntime, ConditionRuntime]]] = {}
        self._subs: dict[str, Subscription] = {}  # subject -> subscription
        self._subs_lock = asyncio.Lock()
        self._inbox = ""
        self._reply_sub: Subscription | None = None
        self._queue: asyncio.Queue[_Event] = asyncio.Queue(maxsize=DEFAULT_QUEUE_SIZE)
        self._outbox = Outbox(client.nc)
        self._deadlines: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._tick_queued = False
        self._errors: dict[str, str] = {}
        self._warned: dict[str, str] = {}  # node -> the error last logged for it
        self._dirty: dict[str, str | None] = {}  # rule id -> parent hint
        self._dirty_since_ns = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._actions: set[asyncio.Task[None]] = set()
        self._loops: dict[str, LoopGuard] = {}  # rule id -> its loop guard (loops.py)
        self._retry: set[str] = set()  # broken rules whose `_deadlines` entry is a reload

    # ---- lifecycle ----

    async def __aenter__(self) -> RulesManager:
        self._root = await self.client.load_root()
        self._inbox = self.client.nc.new_inbox()
        self._reply_sub = await self.client.nc.subscribe(f"{self._inbox}.*", cb=self._on_reply)
        # Subscribe before loading, so a change committed during the load is queued, not lost:
        # edges first (rules created meanwhile), then every rule's subtree, then read the rules.
        await self._sync_subscriptions([self._root])
        tree = await self.client.tree(self._root)
        # Added to, not replaced: the edge callback may already have seen rules created after
        # the read, and replacing would forget them (and drain their subscriptions).
        found = {node.id for node in _walk(tree) if node.type == RULE}
        self._known_rules |= found
        self._pending_rules |= found
        await self._sync_subscriptions(found)
        for node in _walk(tree):
            if node.type == RULE:
                await self._load_guarded(node.id, node.parent)
        await self._outbox.send()
        self._spawn(self._consume(), "consume")
        self._spawn(self._timers(), "timers")
        self.ready.set()
        logger.info("rules: %d rule(s) loaded under %s", len(self.rules), self._root)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for sub in self._subs.values():
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()
        if self._actions:
            _, pending = await asyncio.wait(self._actions, timeout=STOP_TIMEOUT_S)
            if pending:
                logger.warning("rules: %d action(s) still running at shutdown; cancelled", len(pending))
        for task in (*self._tasks, *self._actions):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._actions, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._outbox.send()  # what the cancelled consumer had not sent yet
            await self.client.nc.flush()
        if self._reply_sub is not None:
            with contextlib.suppress(Exception):
                await self._reply_sub.unsubscribe()

    def _spawn(self, coro: Any, name: str, bucket: set[asyncio.Task[None]] | None = None) -> None:
        bucket = self._tasks if bucket is None else bucket
        task = asyncio.create_task(coro, name=f"rules {name}")
        bucket.add(task)
        task.add_done_callback(bucket.discard)

    def _wanted_for(self, node: str) -> set[str]:
        """The subjects the current rules need for `node` (module doc). A node needing both its
        own points and its subtree gets the subtree only, which includes `up.<node>.<node>`."""
        if node in self._subtree or node in self.rules or node in self._pending_rules:
            return {subjects.up_all(node)}
        wanted = {subjects.up(node, node)} if node in self._exact else set()
        if node == self._root:
            wanted.add(subjects.up(node, "*", "*"))
        return wanted

    def _subjects_of(self, node: str) -> tuple[str, ...]:
        """Every subject the engine may subscribe to for `node`."""
        own = (subjects.up_all(node), subjects.up(node, node))
        return (*own, subjects.up(node, "*", "*")) if node == self._root else own

    async def _sync_subscriptions(self, nodes: Iterable[str]) -> None:
        """For each of `nodes` (those whose needs may have changed), subscribe to what is wanted
        and not yet subscribed (live when this returns) and drain what is no longer wanted. Per
        node, not over every rule, so loading N rules stays O(N). Runs from the consumer and
        from the edge callback, hence the lock."""
        async with self._subs_lock:
            new, stale = [], []
            for node in set(nodes):
                wanted = self._wanted_for(node)
                for subject in self._subjects_of(node):
                    if subject in wanted and subject not in self._subs:
                        new.append(subject)
                    elif subject not in wanted and subject in self._subs:
                        stale.append(subject)
            for subject in new:
                self._subs[subject] = await self.client.nc.subscribe(
                    subject, cb=self._on_msg, pending_msgs_limit=PENDING_MSGS_LIMIT
                )
            if new:
                await self.client.nc.flush()
            # Only now: a node's narrow subscription swapped for a wide one leaves no gap.
            for subject in stale:
                self._spawn(_drain(self._subs.pop(subject)), f"drain {subject}")

    async def _on_msg(self, msg: Msg) -> None:
        tokens = msg.subject.split(".")
        ancestor, node = tokens[1], tokens[2]
        parent = tokens[3] if len(tokens) > 3 else None
        points = decode_trusted_points(msg.data)
        if (
            parent is not None
            and ancestor == self._root
            and (node in self._known_rules or any(p.type == NODE_TYPE and p.value == RULE for p in points))
        ):
            # Subscribe to the rule's subtree before its change is queued: the reload it causes
            # then reads the children after the subscription is live, so no child point is lost.
            self._known_rules.add(node)
            self._pending_rules.add(node)
            await self._sync_subscriptions([node])
        await self._queue.put(_Changed(ancestor, node, parent, points))

    async def _on_reply(self, msg: Msg) -> None:
        """The store's answer to a setValue (subject `<inbox>.<action id>`): queue an error change
        only if the action's error state changes, so the usual success costs no write."""
        action = msg.subject.rpartition(".")[2]
        try:
            error = str(decode_reply(msg.data).get("error", ""))
        except SiotError as exc:
            error = f"bad reply from the store: {exc}"
        if self._errors.get(action, "") != error:
            await self._queue.put(_ActionError(action, error))

    # ---- the consumer: the only code that touches rule state after start ----

    async def _consume(self) -> None:
        """Handle every event queued so far, then send what they wrote in one go: under load one
        socket write carries the setValues and state points of many evaluations."""
        queue = self._queue
        while True:
            await self._handle(await queue.get())
            for _ in range(min(queue.qsize(), MAX_EVENTS_PER_SEND)):
                await self._handle(queue.get_nowait())
            count = len(self._outbox)
            try:
                await self._outbox.send()
            except Exception:
                logger.exception("rules: could not send %d write(s)", count)

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
                    self._set_error(event.action, event.error)
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
            for rule, cond in self._exact.get(event.node, ()):
                for point in event.points:
                    await self._on_rule_point(rule, cond, event.node, point, now)
        if event.node in self._owner:
            return
        for rule, cond in self._subtree.get(event.ancestor, ()):
            for point in event.points:
                # The engine's own writes (setValue) are not the device speaking.
                if isinstance(cond.evaluator, Offline) and point.origin in self._owner:
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
        cause = self._owner.get(point.origin)  # the rule whose write this is, if the engine's
        if self._held(rule, cause):
            return  # the condition has taken the point; the rule evaluates when it resumes
        await self._evaluate(rule, partial(rule.evaluate, now), cause)

    def _feeds_dirty_rule(self, event: _Changed) -> bool:
        watchers = [*self._subtree.get(event.ancestor, ())]
        if event.ancestor == event.node:
            watchers += self._exact.get(event.node, ())
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
        rule = self._owner.get(node)
        if rule is None and ancestor != node and (ancestor in self.rules or ancestor in self._pending_rules):
            rule = ancestor
        # Points the engine wrote (state, errors, notifications) carry an owned node as origin.
        if rule is not None and not all(p.origin in self._owner for p in event.points):
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
                if self._errors.get(rule_id, "").startswith(LOOP_PREFIX):
                    self._set_error(rule_id, "")
            await self._evaluate(rule, partial(rule.evaluate, now))

    async def _on_action_done(self, event: _ActionDone) -> None:
        run = event.run
        rule = self.rules.get(run.rule.id, run.rule)
        last_run = rule.action_done(run.action.id, run.run_ns)
        if last_run is not None:
            self._publish(rule.id, [last_run])
        self._set_error(run.action.id, event.error)
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
        self._set_error(
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
        self._owner[rule_id] = rule_id  # its own error write is not a config change
        self._pending_rules.add(rule_id)
        self._set_error(rule_id, message)
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
        for run in outcome.runs:
            if run.action.config.action is ActionType.SET_VALUE:
                self._set_value(run)
                done = rule.action_done(run.action.id, run.run_ns)
                if done is not None:
                    last_runs.append(done)
        for node, points in outcome.writes:
            if node == rule.id:
                points, last_runs = points + last_runs, []
            self._publish(node, points)
        if last_runs:
            self._publish(rule.id, last_runs)
        for run in outcome.runs:
            if run.action.config.action is not ActionType.SET_VALUE:
                self._spawn(self._run_action(run), f"action {run.action.id}", self._actions)
        self._schedule(rule)

    def _publish(self, node: str, points: list[Point]) -> None:
        """Fire-and-forget write, queued in the outbox that the consumer sends after each batch of
        events: NATS keeps the order per connection and the store commits in arrival order, so
        state points land in the order they were computed."""
        self._outbox.add(subjects.points(node), encode_points(points))

    async def _timers(self) -> None:
        """Sleep until the earliest rule deadline (schedule edge, hold expiry, reminder), then queue
        a tick; the consumer evaluates the rules that are due."""
        while True:
            self._wake.clear()
            deadline = min(self._deadlines.values(), default=None)
            if deadline is not None and deadline <= self.clock.now_ns():
                if not self._tick_queued:
                    self._tick_queued = True
                    await self._queue.put(_Tick())
                deadline = None  # the consumer will set new deadlines and wake us
            await self.clock.wait_until(deadline, self._wake)

    def _set_value(self, run: ActionRun) -> None:
        """Publish the action's point; the reply goes to `_on_reply`, nobody waits for it."""
        config = run.action.config
        target = config.node_id or run.rule.parent
        point = Point(config.point_type, config.value, key=config.point_key, origin=run.action.id)
        self._outbox.add(
            subjects.points(target), encode_points([point]), reply=f"{self._inbox}.{run.action.id}"
        )

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
        await self._queue.put(_ActionDone(run, error))

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

    def _set_error(self, node: str, message: str, *, log: bool = True) -> None:
        """Write (or clear, with a tombstone) a node's `error` point, only when it changes; a new
        error is logged as a WARNING naming the node."""
        if self._errors.get(node, "") == message:
            return
        self._errors[node] = message
        if log:
            self._warn(node, message)
        self._publish(node, [Point(ERROR, message, origin=node, tombstone=0 if message else 1)])

    def _warn(self, node: str, message: str, rule: str = "") -> None:
        """Log a node's new error as a WARNING naming it: once per error and process, so a
        restart says it again but reloads do not repeat it."""
        if self._warned.get(node, "") == message:
            return
        self._warned[node] = message
        if message:
            rule = rule or self._owner.get(node, "")
            if rule and rule != node:
                where = f"rule {rule}: child {node}"
            else:
                where = f"rule {node}" if rule or node in self._known_rules else f"node {node}"
            logger.warning("rules: %s: %s", where, message)

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
            await self._sync_subscriptions({rule_id, *_watched(old)})
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
            self._errors.setdefault(node.id, str(node.value(ERROR, default="") or ""))
        fresh = runtime.adopt(old) if old is not None else runtime.conditions
        self._unload(rule_id)  # also re-arms the loop guard: a changed rule starts afresh
        self.rules[rule_id] = runtime
        self._owner[rule_id] = rule_id
        for child in children:
            self._owner[child.id] = rule_id
        for cond in runtime.conditions:
            if cond.watch.node:
                index = self._subtree if cond.watch.subtree else self._exact
                index.setdefault(cond.watch.node, []).append((runtime, cond))
        # After indexing, so a watch the old runtime had and the new one keeps is not drained;
        # before seeding, so what is committed after the seed's read arrives as a change.
        self._pending_rules.discard(rule_id)
        await self._sync_subscriptions({rule_id, *_watched(old), *_watched(runtime)})
        trees: dict[str, TreeNode] = {}
        for cond in fresh:
            await self._seed(cond, now, trees)
        fresh_nodes = {n.id for n in (info, *children) if not n.points}
        for node, message in errors.items():
            # A node whose points have not arrived yet (create_node sends the edge first) is not
            # misconfigured, only young: its points will trigger another reload.
            if node not in fresh_nodes:
                self._warn(node, message, rule_id)  # also when the point was there before a restart
                self._set_error(node, message, log=False)
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
        self._owner.pop(rule_id, None)
        if old is None:
            return
        for node in [n for n, r in self._owner.items() if r == rule_id]:
            del self._owner[node]
        for index in (self._exact, self._subtree):
            for key in list(index):
                index[key] = [(r, c) for r, c in index[key] if r is not old]
                if not index[key]:
                    del index[key]

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


async def _drain(subscription: Subscription) -> None:
    """Stop a subscription after handing its pending messages to the callback (the engine is
    done with it; a closed connection has nothing left to hand over)."""
    with contextlib.suppress(Exception):
        await subscription.drain()


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


@register_node_client
@contextlib.asynccontextmanager
async def rules_node_client(ctx: AppContext) -> AsyncIterator[RulesManager | None]:
    """The factory `siot serve` registers. `SIOT_RULES=off` leaves rules to an external manager
    (tests drive one with a manual clock; a cloud may run rules on a dedicated instance)."""
    if os.environ.get(RULES_ENV, "on").strip().lower() in ("off", "0", "false", "no"):
        logger.info("rules: disabled by %s", RULES_ENV)
        yield None
        return
    async with RulesManager(ctx.client, manages=ctx.manages) as manager:
        yield manager
