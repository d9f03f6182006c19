"""The data-model node client: hooks the model validator onto the API's ingest path."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from siot.errors import InvalidInput, InvalidPoint
from siot.nodes.models.cache import ModelCache
from siot.nodes.models.rules import Model
from siot.points import Point
from siot.runtime import AppContext

logger = logging.getLogger(__name__)

REJECTED_POINT = "rejected"


class ModelValidation:
    """Owns the cache and writes what the validator cannot write on the hot path: `rejected`
    points on devices and `error` points on models. Writes go through the API (fire and
    forget, origin = the model id); every task is held until it is done."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.cache = ModelCache(ctx.store, self._on_reject, self._on_problems)
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, node: str, points: list[Point]) -> None:
        task = asyncio.get_running_loop().create_task(self._send(node, points))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, node: str, points: list[Point]) -> None:
        try:
            await self.ctx.client.send_points(node, points, ack=False)
        except Exception:
            logger.exception("models: could not record on %s", node)

    def _on_reject(self, device: str, model: Model, points: list[Point], exc: InvalidInput) -> None:
        if not model.record_rejected:
            return
        index = exc.index if isinstance(exc, InvalidPoint) and exc.index is not None else 0
        bad = points[index] if index < len(points) else points[0]
        record = {"value": bad.value, "time": bad.time, "error": str(exc), "model": model.id}
        self._spawn(
            device, [Point(REJECTED_POINT, record, key=bad.type, time=time.time_ns(), origin=model.id)]
        )

    def _on_problems(self, model_id: str, problems: list[str]) -> None:
        if problems:
            logger.warning("models: model %s has problems: %s", model_id, "; ".join(problems))
        message = "; ".join(problems)
        self._spawn(model_id, [Point("error", message, time=time.time_ns(), origin=model_id)])

    async def wait_idle(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


@contextlib.asynccontextmanager
async def model_client(ctx: AppContext) -> AsyncIterator[ModelValidation]:
    """Load every model, follow commits, and validate each batch sent to a device with a model."""
    validation = ModelValidation(ctx)
    remove_listener = ctx.store.add_commit_listener(validation.cache.on_commit)
    try:
        await validation.cache.load()
        remove_validator = ctx.write_path.add_validator(validation.cache.validate)
        try:
            yield validation
        finally:
            remove_validator()
            await validation.wait_idle()
    finally:
        remove_listener()
