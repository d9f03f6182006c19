"""SQLite storage: current points, edges and the point log, written by one group-commit task."""

from siot.store.store import CommitListener, Store, StoreConfig, Write
from siot.store.tree import NODE_TYPE, ROOT_PARENT, TOMBSTONE, EdgeState, Tree

__all__ = [
    "NODE_TYPE",
    "ROOT_PARENT",
    "TOMBSTONE",
    "CommitListener",
    "EdgeState",
    "Store",
    "StoreConfig",
    "Tree",
    "Write",
]
