"""Every error siot raises on purpose shares one base, so callers can catch them together.

SiotError
├── InvalidInput (ValueError)          bad bytes or shapes from outside; replied as {"error": ...}
│   ├── DecodeError                     payload is not msgpack/JSON of the expected shape
│   ├── InvalidPoint                    one point breaks the data model (.index, .field)
│   ├── InvalidSubject                  a subject token is empty or illegal
│   ├── BatchTooLarge                   more points or bytes than the configured limit
│   ├── UnknownNode                     a write or query names a node that has no edge
│   ├── CycleRefused                    an edge that would make the tree cyclic
│   └── RootProtected                   deleting or moving the instance's root node
├── StoreError                          SQLite failed under us (wrapped with `from exc`)
├── BrokerError                         the embedded nats-server could not be found or started
├── RequestFailed                       a peer answered a request with {"error": ...}
└── NotImplementedFeature (NotImplementedError)
"""

from __future__ import annotations


class SiotError(Exception):
    """Base of every error siot raises deliberately."""


class InvalidInput(SiotError, ValueError):
    """Input from outside the process is wrong; the sender gets `str(exc)` as the reply."""


class DecodeError(InvalidInput):
    """The payload is not valid msgpack/JSON, or not a point, a batch or a request map."""


class InvalidPoint(InvalidInput):
    """A point breaks the data model. `index` is its position in the batch, `field` the culprit."""

    def __init__(self, message: str, *, index: int | None = None, field: str | None = None) -> None:
        where = []
        if index is not None:
            where.append(f"point {index}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
        self.index = index
        self.field = field


class InvalidSubject(InvalidInput):
    """A subject or one of its tokens is malformed."""


class BatchTooLarge(InvalidInput):
    """A batch exceeds the configured number of points or bytes."""

    def __init__(self, size: int, limit: int, unit: str) -> None:
        super().__init__(f"batch too large: {size} {unit} > limit {limit} {unit}")
        self.size = size
        self.limit = limit


class UnknownNode(InvalidInput):
    """A node id has no edge in the tree, so the write has nowhere to go."""

    def __init__(self, node: str, hint: str = "") -> None:
        super().__init__(f"unknown node '{node}'" + (f": {hint}" if hint else ""))
        self.node = node


class CycleRefused(InvalidInput):
    """The edge parent -> node would make node its own ancestor."""


class RootProtected(InvalidInput):
    """The instance root cannot be deleted or re-parented through the API."""


class StoreError(SiotError):
    """SQLite failed; the original exception is the `__cause__`."""


class StoreBusy(SiotError):
    """The store's queue is full: the write was not taken; retry after a short pause."""


class BrokerError(SiotError):
    """The embedded nats-server is missing, misconfigured or would not start."""


class RequestFailed(SiotError):
    """A request got `{"error": ...}` back; the text is the remote's message."""


class ConnectFailed(SiotError):
    """No NATS server answered at the URL; the text names the URL and the reason."""


class NotImplementedFeature(SiotError, NotImplementedError):
    """A feature that is designed but not built yet; the message says which."""
