"""Whose code made a call: the user's ``file:line`` behind an intercepted API.

Every frame's file is sorted once into one of five kinds:

* ``torchdevice``: this package;
* ``torch``: torch itself (with ``functorch`` and ``torchgen``, shipped with it);
* ``library``: any other installed package (a path in ``site-packages`` or ``dist-packages``);
* ``stdlib``: the standard library, frozen modules and generated code (``<frozen ...>``);
* ``user``: everything else (the script, its own modules, ``python -c`` code).

:func:`find` answers "who called this API". A call made by torch or torchdevice itself (the
first frame outside the standard library is theirs) is their own business and is not the
user's: no site. Otherwise the site is the first ``user`` frame, and the libraries passed on
the way are named in ``via``. With ``include_libraries`` the site is the first frame outside
torch and torchdevice: a library's own call counts where the library makes it.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from typing import NamedTuple

TORCHDEVICE = "torchdevice"
TORCH = "torch"
LIBRARY = "library"
STDLIB = "stdlib"
USER = "user"

INCLUDE_LIBRARIES_ENV = "TORCHDEVICE_REPORT_LIBRARIES"

# Pure pass-through helpers that sit between a caller and the API it calls.
_CONDUIT_PACKAGES = ("typing_extensions",)
_USER_PSEUDO_FILES = ("<string>", "<stdin>", "<console>")


class Site(NamedTuple):
    file: str  # absolute path, or a pseudo-file name such as "<string>"
    line: int
    function: str
    via: str | None  # the library (top-level package) the call went through, if any


def _dir_of(module_name: str) -> str | None:
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None)
    return os.path.dirname(os.path.abspath(path)) + os.sep if path else None


def _stdlib_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {os.path.abspath(paths[k]) + os.sep for k in ("stdlib", "platstdlib") if k in paths}
    return tuple(sorted(dirs))


class Classifier:
    """Sorts filenames into kinds; the answer for each file is computed once."""

    def __init__(self) -> None:
        self._cache: dict[str, str] = {}
        self._torchdevice = _dir_of("torchdevice") or os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
        self._torch = tuple(d for d in (_dir_of("torch"), _dir_of("functorch"), _dir_of("torchgen")) if d)
        self._stdlib = _stdlib_dirs()

    def kind(self, filename: str) -> str:
        kind = self._cache.get(filename)
        if kind is None:
            kind = self._cache[filename] = self._classify(filename)
        return kind

    def _classify(self, filename: str) -> str:
        if filename.startswith("<"):
            return USER if filename in _USER_PSEUDO_FILES else STDLIB
        path = os.path.abspath(filename)
        if path.startswith(self._torchdevice):
            return TORCHDEVICE
        if self._torch and path.startswith(self._torch):
            return TORCH
        parts = path.split(os.sep)
        for marker in ("site-packages", "dist-packages"):
            if marker in parts:
                top = parts[parts.index(marker) + 1 :][:1]
                return STDLIB if top and top[0].split(".")[0] in _CONDUIT_PACKAGES else LIBRARY
        if path.startswith(self._stdlib):
            return STDLIB
        return USER

    def package_of(self, filename: str) -> str:
        """The top-level package of a library file (``accelerate`` for .../site-packages/accelerate/x.py)."""
        parts = os.path.abspath(filename).split(os.sep)
        for marker in ("site-packages", "dist-packages"):
            if marker in parts and parts.index(marker) + 1 < len(parts):
                name = parts[parts.index(marker) + 1]
                return name[:-3] if name.endswith(".py") else name
        return os.path.basename(filename)


_classifier: Classifier | None = None


def classifier() -> Classifier:
    global _classifier
    if _classifier is None:
        _classifier = Classifier()
    return _classifier


def include_libraries_from_env() -> bool:
    return os.environ.get(INCLUDE_LIBRARIES_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def find(frame, include_libraries: bool = False, *, direct: bool = True) -> Site | None:
    """The call site behind ``frame`` (the frame that called the intercepted API), or None.

    ``direct``: the API was called by ``frame`` itself, so a call from torch's (or torchdevice's)
    own code is theirs and has no user site. Without it (an operator seen below torch's Python
    layers) the walk goes on through torch to the user's frame.
    """
    kinds = classifier()
    first = True
    via = None
    while frame is not None:
        filename = frame.f_code.co_filename
        kind = kinds.kind(filename)
        if kind == STDLIB:
            frame = frame.f_back
            continue
        if first and direct and (kind == TORCH or kind == TORCHDEVICE):
            return None  # torch (or torchdevice) calling for its own purposes
        first = False
        if kind == USER or (include_libraries and kind == LIBRARY):
            return Site(filename if filename.startswith("<") else os.path.abspath(filename), frame.f_lineno, frame.f_code.co_name, via)
        if kind == LIBRARY and via is None:  # torch and torchdevice frames are passed silently
            via = kinds.package_of(filename)
        frame = frame.f_back
    return None


def format_site(site: Site, cwd: str | None = None) -> str:
    """``file:line`` with the file relative to ``cwd`` when it lies below it."""
    return f"{display_path(site.file, cwd)}:{site.line}"


def display_path(path: str, cwd: str | None = None) -> str:
    if path.startswith("<"):
        return path
    cwd = cwd or os.getcwd()
    try:
        rel = os.path.relpath(path, cwd)
    except ValueError:
        return path
    return path if rel.startswith(os.pardir) else rel
