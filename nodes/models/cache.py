"""What the validator needs, in memory: every model compiled, and which model each device uses.

Why a store commit listener keeps it fresh (and not a subscription to `up.*`): the listener runs
right after each commit, before any later message is read off the socket, so a device whose
`model` point was just acknowledged is validated against that model from its very next batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from siot.errors import InvalidInput
from siot.nodes.models.rules import Model, compile_model
from siot.points import Point
from siot.store import Store, Write
from siot.store.writer import unpack_value

logger = logging.getLogger(__name__)

MODEL_NODE_TYPE = "model"
MODEL_POINT = "model"

# Called when a batch is refused: (device, model, points, error).
RejectListener = Callable[[str, Model, list[Point], InvalidInput], None]
# Called when a model's own points have problems (or no longer have any): (model id, problems).
ProblemListener = Callable[[str, list[str]], None]


class ModelCache:
    """Models by id and name, and device -> model reference, kept in step with the store."""

    def __init__(self, store: Store, on_reject: RejectListener, on_problems: ProblemListener) -> None:
        self.store = store
        self.on_reject = on_reject
        self.on_problems = on_problems
        self.models: dict[str, Model] = {}
        self._model_points: dict[str, dict[tuple[str, str], Point]] = {}
        self._problems: dict[str, list[str]] = {}
        self.device_model: dict[str, str] = {}

    async def load(self) -> None:
        """Read every model node's points and every device's `model` point from the store."""
        tree = self.store.tree
        model_ids = {node for (_p, node), s in tree.edges.items() if s.node_type == MODEL_NODE_TYPE}
        for model_id in model_ids:
            self._apply_model_points(model_id, await self.store.node_points(model_id))
        rows = await self.store.fetch(
            "SELECT node, value, tombstone FROM points WHERE type = ? AND key = '0'", (MODEL_POINT,)
        )
        for node, blob, tombstone in rows:
            self._set_device_model(node, None if tombstone % 2 else unpack_value(blob))
        logger.info(
            "models: %d model(s), %d device(s) with a model", len(self.models), len(self.device_model)
        )

    # ---- keeping up (store commit listener) ----

    async def on_commit(self, writes: list[Write]) -> None:
        tree = self.store.tree
        for write in writes:
            if write.error is not None or write.parent or not write.changed:
                continue
            for point in write.changed:
                if point.type == MODEL_POINT and point.key == "0":
                    self._set_device_model(write.node, None if point.deleted else point.value)
            if tree.node_type(write.node) == MODEL_NODE_TYPE:
                self._apply_model_points(write.node, write.changed)

    def _set_device_model(self, device: str, ref: object) -> None:
        if ref in (None, ""):
            self.device_model.pop(device, None)
        else:
            self.device_model[device] = str(ref)

    def _apply_model_points(self, model_id: str, points: list[Point]) -> None:
        """Merge the changed points into the model's copy and recompile it."""
        known = self._model_points.setdefault(model_id, {})
        for point in points:
            known[(point.type, point.key)] = point
        try:
            model, problems = compile_model(model_id, list(known.values()))
        except Exception as exc:  # a model's bad points are that model's error, not the daemon's
            problem = f"internal error: {type(exc).__name__}: {exc} (the model is not enforced)"
            model, problems = Model(model_id, "", allow_other=True), [problem]
        self.models[model_id] = model
        if problems != self._problems.get(model_id, []):
            self._problems[model_id] = problems
            self.on_problems(model_id, problems)

    # ---- validation (Api validator; hot path) ----

    def find(self, ref: str) -> Model | None:
        """A live model by id, else by name (its description)."""
        tree = self.store.tree
        model = self.models.get(ref)
        if model is None:
            model = next((m for m in self.models.values() if m.name == ref and tree.live_parents(m.id)), None)
        elif not tree.live_parents(model.id):
            return None
        return model

    def validate(self, node: str, parent: str, points: list[Point]) -> None:
        """Refuse a batch of node points that breaks the device's model. Devices without a
        `model` point, and edge points, are not checked."""
        if parent:
            return
        ref = self.device_model.get(node)
        if ref is None:
            return
        model = self.find(ref)
        if model is None:
            if all(p.type == MODEL_POINT for p in points):
                return  # let the device be pointed at another model
            raise InvalidInput(f"device '{node}' references model '{ref}', which does not exist")
        try:
            model.check(points)
        except InvalidInput as exc:
            self.on_reject(node, model, points, exc)
            raise
