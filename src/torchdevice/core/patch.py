"""One registry of every Python-level patch torchdevice applies.

Each patch records what it replaced, so ``torchdevice.patches()`` can list them and
``undo_all()`` can put torch back exactly as it was (tests use that).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

_MISSING = object()
_NATIVE = object()


@dataclasses.dataclass
class Patch:
    target: Any
    name: str
    original: Any
    replacement: Any
    owner: str
    # For a change made in native code (not an attribute): how to put torch's behaviour back.
    undo: Callable[[], None] | None = None

    @property
    def qualname(self) -> str:
        target_name = getattr(self.target, "__name__", type(self.target).__name__)
        return f"{target_name}.{self.name}"

    @property
    def added(self) -> bool:
        """True when torch had no such attribute (this build lacks it) and torchdevice adds it."""
        return self.original is _MISSING

    @property
    def native(self) -> bool:
        """True for a change the native core made (a C slot), which no attribute shows."""
        return self.original is _NATIVE


class PatchRegistry:
    def __init__(self) -> None:
        self._patches: list[Patch] = []

    def patch(self, target: Any, name: str, replacement: Any, *, owner: str) -> Any:
        """Set ``target.name = replacement`` and remember the original."""
        original = target.__dict__.get(name, _MISSING) if hasattr(target, "__dict__") else getattr(target, name, _MISSING)
        if original is _MISSING and isinstance(target, type) and name in vars(type):
            original = getattr(target, name)  # an attribute of every class, kept by type (__bases__)
        setattr(target, name, replacement)
        self._patches.append(Patch(target, name, original, replacement, owner))
        return replacement

    def native(self, target: Any, name: str, *, undo: Callable[[], None], owner: str) -> None:
        """Record a change the native core made to ``target.name`` (a C slot Python cannot set)."""
        self._patches.append(Patch(target, name, _NATIVE, None, owner, undo))

    def patch_function(self, target: Any, name: str, *, owner: str) -> Callable[[Callable], Callable]:
        """Decorator form of :meth:`patch`."""

        def decorate(fn: Callable) -> Callable:
            fn.__torchdevice_patch__ = True  # type: ignore[attr-defined]
            self.patch(target, name, fn, owner=owner)
            return fn

        return decorate

    def __iter__(self):
        return iter(list(self._patches))

    def __len__(self) -> int:
        return len(self._patches)

    def undo_all(self) -> None:
        for p in reversed(self._patches):
            if p.undo is not None:
                p.undo()
            elif p.original is _MISSING:
                try:
                    delattr(p.target, p.name)
                except AttributeError:
                    pass
            else:
                setattr(p.target, p.name, p.original)
        self._patches.clear()

    def describe(self) -> str:
        lines = [f"{len(self._patches)} patches applied by torchdevice:"]
        for p in self._patches:
            lines.append(f"  {p.qualname:<48} {'native' if p.undo else 'added' if p.added else 'replaced'}  ({p.owner})")
        return "\n".join(lines)


REGISTRY = PatchRegistry()
