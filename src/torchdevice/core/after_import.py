"""Run code right after a module is first imported, without importing it ahead of time.

Patches of heavy optional modules (inductor, Triton) wait for the program to import them:
importing them at activation would cost every program seconds. Python has no post-import hook,
so a one-shot ``sys.meta_path`` finder answers for that one name, lets the finders after it
find and load the module, and calls back once the module has executed.
"""

from __future__ import annotations

import importlib.abc
import logging
import sys
from typing import Any, Callable

logger = logging.getLogger("torchdevice")


def call_after_import(name: str, callback: Callable[[Any], None], failure: str) -> None:
    """``callback(module)`` once module ``name`` is imported: now if it is already, else right after its import.

    A failing callback never breaks the user's import: ``failure`` is logged with the exception,
    and the module stays as it is without torchdevice.
    """
    module = sys.modules.get(name)
    if module is not None:
        _call(callback, module, failure)
    elif not any(isinstance(f, _AfterImport) and (f.name, f.callback) == (name, callback) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(name, callback, failure))


def _call(callback: Callable[[Any], None], module: Any, failure: str) -> None:
    try:
        callback(module)
    except Exception:
        logger.exception("%s", failure)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Answers only for one name, and removes itself on first use: other imports never reach it again."""

    def __init__(self, name: str, callback: Callable[[Any], None], failure: str) -> None:
        self.name = name
        self.callback = callback
        self.failure = failure

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(fullname, path, target) if find_spec is not None else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _NotifyingLoader(spec.loader, lambda module: _call(self.callback, module, self.failure))
        return spec


class _NotifyingLoader(importlib.abc.Loader):
    """A module loader that calls ``callback(module)`` after the wrapped loader executed it."""

    def __init__(self, loader: Any, callback: Callable[[Any], None]) -> None:
        self._loader = loader
        self._callback = callback

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        # Tracebacks and inspect.getsource ask the module's __loader__ for its source.
        module.__loader__ = self._loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        self._callback(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)
