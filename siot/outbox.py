"""Many NATS messages handed to the connection in one call.

Every committed write fans out to each ancestor (DESIGN §3), so one write is 4–6 messages and
the store's commit listener sends tens of them per commit. nats-py's `publish` costs a few µs of
Python per message (subject validation, state checks, a PUB command, a pending-buffer append and
a flusher check); for the fan-out that was about 15% of the daemon's profiled time under the rules
benchmark (cProfile). An `Outbox` collects the messages of a whole commit and appends their PUB
frames to the connection's pending buffer at once, so the per-message cost is one formatted
header.

This relies on nats-py's pending buffer (`_send_command`/`_flush_pending`, stable since 2.0).
While the connection is not connected it falls back to `publish`, which applies nats-py's
reconnect buffering limits. Subjects must be valid: callers build them from checked tokens.
"""

from __future__ import annotations

from nats.aio.client import Client as NATS

# A commit's messages are joined into one buffer only up to this size. Past it (large values,
# or a node with many ancestors: one 5 MB point under 1,000 parents once peaked at 4.9 GB) each
# message goes through `publish`, which hands the payload over without copying it per subject
# and waits for the socket whenever nats-py's pending buffer is full.
MAX_JOINED_BYTES = 1024 * 1024


class Outbox:
    """Messages waiting to be sent on one connection; `send()` writes them in order."""

    __slots__ = ("_messages", "_nc")

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._messages: list[tuple[str, bytes, str]] = []  # (subject, payload, reply)

    def add(self, subject: str, payload: bytes, reply: str = "") -> None:
        self._messages.append((subject, payload, reply))

    def fan_out(self, subjects: list[str], payload: bytes) -> None:
        """The same payload to every subject (a write's fan-out to its ancestors)."""
        self._messages.extend((subject, payload, "") for subject in subjects)

    def __len__(self) -> int:
        return len(self._messages)

    async def send(self) -> None:
        """Hand every message to the connection; the outbox is empty afterwards."""
        messages, self._messages = self._messages, []
        if not messages:
            return
        nc = self._nc
        size = sum(len(payload) for _, payload, _ in messages)
        if not nc.is_connected or size > MAX_JOINED_BYTES:
            for subject, payload, reply in messages:
                await nc.publish(subject, payload, reply=reply)
            return
        frames = []
        for subject, payload, reply in messages:
            # The header nats-py's own pub_cmd writes (an empty reply leaves two spaces).
            frames += (f"PUB {subject} {reply} {len(payload)}\r\n".encode(), payload, b"\r\n")
        nc.stats["out_msgs"] += len(messages)
        nc.stats["out_bytes"] += size
        await nc._send_command(b"".join(frames))
        if nc._flush_queue is not None and nc._flush_queue.empty():
            await nc._flush_pending()
