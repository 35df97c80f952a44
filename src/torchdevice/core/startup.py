"""When ``import torchdevice`` activates, and activation from the environment alone.

``import torchdevice`` activates at once, except in two cases:

* the import is the start of torchdevice's own command line (``python -m torchdevice`` or the
  ``torchdevice`` script): the command activates after reading its options (``--backend``,
  ``--log-level``), and ``report``/``--help`` never load torch at all;
* the import comes from the ``torchdevice-activate.pth`` file the package installs into
  site-packages, whose single line imports torchdevice only when ``TORCH_DEVICE_BACKEND`` is
  set, and calls :func:`activate_from_pth`. It checks the environment (a bad value is one line
  on stderr), then :func:`install_import_hook` puts a finder in front of ``sys.meta_path`` that
  activates when the process first imports torch: the native core is loaded before torch
  (its CUDA hooks win torch's registry, as for ``import torchdevice`` first), and torchdevice is
  active before the importing code's next line. Programs that never import torch pay nothing.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

NOW = "now"
CLI = "cli"
SITE = "site"

_CLI_MODULES = ("torchdevice", "torchdevice.__main__")
# Interpreter options that take a value (python -X dev, -W error, --check-hash-based-pycs never).
_OPTIONS_WITH_VALUE = "XWQ"
_LONG_OPTIONS_WITH_VALUE = ("--check-hash-based-pycs",)


def interpreter_module(orig_argv: list[str]) -> str | None:
    """The module of ``python [options] -m MODULE ...``, or None for a script, ``-c`` or the REPL."""
    i = 1
    while i < len(orig_argv):
        token = orig_argv[i]
        if token in _LONG_OPTIONS_WITH_VALUE:
            i += 2
            continue
        if token == "--" or not token.startswith("-") or token == "-":
            return None
        if token.startswith("--"):
            i += 1
            continue
        flags = token[1:]
        for j, flag in enumerate(flags):
            if flag == "m":
                rest = flags[j + 1 :]
                if rest:
                    return rest
                return orig_argv[i + 1] if i + 1 < len(orig_argv) else None
            if flag == "c":
                return None
            if flag in _OPTIONS_WITH_VALUE:
                if not flags[j + 1 :]:
                    i += 1  # the value is the next token
                break
        i += 1
    return None


def started_by_cli() -> bool:
    """True in a process started as ``python -m torchdevice`` or as the ``torchdevice`` script."""
    module = interpreter_module(list(getattr(sys, "orig_argv", []) or []))
    if module is not None:
        return module in _CLI_MODULES
    argv0 = sys.argv[0] if getattr(sys, "argv", None) else ""
    if os.path.basename(argv0) != "torchdevice" or not os.path.isfile(argv0):
        return False
    try:  # the console script pip generates, not some other file of that name
        with open(argv0, "rb") as f:
            return b"torchdevice.cli" in f.read(4096)
    except OSError:
        return False


def _imported_by_pth() -> bool:
    frame = sys._getframe(1)
    for _ in range(40):
        if frame is None:
            return False
        code = frame.f_code
        # site is a frozen module ("<frozen site>") in the official builds since 3.11.
        if code.co_name == "addpackage" and code.co_filename in ("<frozen site>", getattr(_site_module(), "__file__", None)):
            return True
        frame = frame.f_back
    return False


def _site_module():
    return sys.modules.get("site")


def mode() -> str:
    """How this ``import torchdevice`` should activate: NOW, CLI (the command does) or SITE (on import torch)."""
    if started_by_cli():
        return CLI
    if _imported_by_pth():
        return SITE
    return NOW


# ------------------------------------------------------------------------- the torch import hook


class _ActivateAfterTorch:
    """The loader of torch, wrapped: executes torch, then activates torchdevice."""

    def __init__(self, loader, activate: Callable[[], object]) -> None:
        self._loader = loader
        self._activate = activate

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        spec = module.__spec__
        # torch's own loader back in place before its code runs: torch's package metadata,
        # importlib.resources and friends see the loader they expect.
        module.__loader__ = spec.loader = self._loader
        self._loader.exec_module(module)
        self._activate()


class TorchImportHook:
    """A ``sys.meta_path`` finder that only acts on the first ``import torch``."""

    def __init__(self, activate: Callable[[], object], preload: Callable[[], object]) -> None:
        self._activate = activate
        self._preload = preload

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torch":
            return None
        remove_import_hook()
        self._preload()  # the native core, before torch: before any finder looks for it
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _ActivateAfterTorch(spec.loader, self._activate)
                return spec
        return None


def install_import_hook(activate: Callable[[], object], preload: Callable[[], object]) -> bool:
    """Activate on the first ``import torch`` (now, if torch is imported already). Idempotent."""
    if "torch" in sys.modules:
        activate()
        return False
    if any(isinstance(f, TorchImportHook) for f in sys.meta_path):
        return False  # site processed the .pth twice (lib and lib64 are one directory)
    sys.meta_path.insert(0, TorchImportHook(activate, preload))
    return True


def remove_import_hook() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, TorchImportHook)]


def check_environment():
    """Check every torchdevice variable before torch loads; the plan they ask for.

    The one place that validates them all, so a bad value fails here, as one line from the
    ``.pth`` hook and the command line (and as a ValueError/RuntimeError from ``import
    torchdevice``), not later in the native core once torch is loaded. Raises ValueError,
    RuntimeError or NotImplementedError naming the bad value and the valid forms.
    """
    from torchdevice.core import device, logger

    logger.requested_level()
    device.requested_total_memory()
    device.cuda_caching_requested()
    device.requested_capability()
    return device.plan()


def activate_from_pth(activate: Callable[[], object], preload: Callable[[], object]) -> None:
    """What the .pth line does once the package is imported: check the environment, then hook torch.

    A bad environment is one line on stderr, and the process goes on without torchdevice: the
    package leaves sys.modules, so a program that imports torchdevice itself gets the error
    as it would without the .pth (a ValueError at its ``import torchdevice``).
    """
    try:
        check_environment()
    except (ValueError, RuntimeError, NotImplementedError) as exc:
        # site may process the .pth twice (lib and lib64 are one directory): one line, once.
        if not getattr(sys, "_torchdevice_startup_error", False):
            sys._torchdevice_startup_error = True  # type: ignore[attr-defined]
            print(f"torchdevice: error: {exc} (torchdevice is not active in this process)", file=sys.stderr)
        for name in [m for m in sys.modules if m == "torchdevice" or m.startswith("torchdevice.")]:
            del sys.modules[name]
        return
    install_import_hook(activate, preload)


# --------------------------------------------------------------------- after activation

REPORT_ENV = "TORCHDEVICE_REPORT"


def after_activation() -> None:
    """Start the porting report (``TORCHDEVICE_REPORT``) or DEBUG tracing the environment asks for.

    Neither asked: nothing is imported or installed (the per-op path stays as activation left it).
    """
    import logging

    from torchdevice.core.logger import logger

    path = os.environ.get(REPORT_ENV, "").strip()
    if not path and not logger.isEnabledFor(logging.DEBUG):
        return
    from torchdevice import report

    report.start_from_env(path or None)
