"""siot: a self-hosted IoT node daemon. The public surface for devices and scripts is small:

    from siot import Client, Point

`siot.client` documents the client library, `siot.points` the data model and merge rule,
`siot.errors` the exception tree.
"""

from siot.client import Change, Client, NodeInfo, TreeNode
from siot.errors import InvalidInput, InvalidPoint, RequestFailed, SiotError
from siot.points import Point, supersedes

__all__ = [
    "Change",
    "Client",
    "InvalidInput",
    "InvalidPoint",
    "NodeInfo",
    "Point",
    "RequestFailed",
    "SiotError",
    "TreeNode",
    "supersedes",
]
