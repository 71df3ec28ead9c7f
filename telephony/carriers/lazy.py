"""Modules imported the first time one of their names is read: the carrier SDKs and
their HTTP layers, which cost every process tens of MB and seconds to import whether or
not any agency uses that carrier (sdk.py has the figures).

The one sanctioned way to put off an import in ``telephony/`` (every other import sits at
the top of its module; ``tests/test_import_graph.py`` checks both, and that only carrier
SDK packages and httpx, the Telnyx SDK's HTTP layer, are named here). ``sdk.py`` re-exports
``lazy_module``; a module that uses it (``X = lazy_module("x")``) declares the real import
for type checkers under ``if TYPE_CHECKING:``.
"""
from __future__ import annotations

import importlib
from typing import Any


class LazyModule:
    """Stands for a module that is imported the first time one of its names is read.
    Thread-safe: the import system holds a lock per module, and later reads cost a
    dictionary lookup."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(importlib.import_module(self._name), attribute)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


def lazy_module(name: str) -> Any:
    """``name`` (an SDK module), imported when first used; see ``LazyModule``."""
    return LazyModule(name)
