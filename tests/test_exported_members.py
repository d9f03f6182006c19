"""The public surface is what `siot.__all__` says, and each name is importable from `siot`."""

from __future__ import annotations

import siot


def test_all_names_exist() -> None:
    for name in siot.__all__:
        assert getattr(siot, name).__name__ == name


def test_public_surface_is_deliberate() -> None:
    assert set(siot.__all__) == {
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
    }
