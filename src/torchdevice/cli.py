"""The ``torchdevice`` command line: ``python -m torchdevice`` or the ``torchdevice`` script.

``torchdevice run script.py [args...]`` runs a CUDA-written script on this machine exactly as
``python script.py`` would (argv, ``__main__``, ``sys.path[0]``, exit status, tracebacks), with
torchdevice active; ``--report PATH.json`` adds the porting report (``torchdevice.report``).
``torchdevice info`` says what is emulated on what; ``torchdevice report PATH.json`` prints a
saved report.

In a process started as ``python -m torchdevice`` (or the ``torchdevice`` script), importing the
package does not activate it (``torchdevice.core.startup``): the command activates once it has
read ``--backend``/``--log-level``, in this process, before the target's ``import torch``; a bad
environment becomes a one-line error, and ``report``/``--help`` never load torch. This module
imports no torch of its own at module level.
"""

from __future__ import annotations

import argparse
import builtins
import importlib.machinery
import importlib.util
import io
import json
import os
import pkgutil
import platform
import re
import runpy
import sys
import types
import zipfile
from types import TracebackType
from typing import Any, Callable, NoReturn, Sequence

import torchdevice
from torchdevice.core import callsite as _callsite
from torchdevice.core import device as _device
from torchdevice.core import logger as _logger
from torchdevice.core import startup as _startup

PROG = "torchdevice"
BACKEND_ENV = "TORCH_DEVICE_BACKEND"
REPORT_ENV = "TORCHDEVICE_REPORT"
EMULATE_ENV = "TORCHDEVICE_EMULATE"
# Options of `run` that take a value: the token after them is never the script.
_RUN_OPTIONS_WITH_VALUE = ("--backend", "--emulate", "--report", "--log-level")

# Exit statuses, as CPython uses them for `python script.py`.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse with single-line errors: ``torchdevice run: error: ...`` and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Run PyTorch code written for CUDA on this machine, unmodified.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {torchdevice.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = commands.add_parser(
        "run",
        help="run a script or module with torchdevice active",
        description="Run SCRIPT (or -m MODULE) as `python SCRIPT ARGS...` would, with torchdevice active.",
        usage=(f"{PROG} run [--backend BACKEND] [--emulate TYPE] [--report PATH.json] [--log-level LEVEL] "
               "[--include-libraries] (SCRIPT | -m MODULE) [ARGS ...]"),
        allow_abbrev=False,
    )
    run.add_argument(
        "--backend",
        choices=_device.VALID_BACKENDS,
        help=f"where kernels run; sets {BACKEND_ENV} (default: the environment's value, else auto)",
    )
    run.add_argument(
        "--emulate",
        choices=_device.VALID_EMULATED,
        metavar="TYPE",
        help=f"the device type the program sees, {' or '.join(_device.VALID_EMULATED)}; sets {EMULATE_ENV} (default: the environment's value, else mps "
        "when the target's own source names mps and not cuda (\"mps\", torch.mps, torch.backends.mps against "
        "\"cuda\", torch.cuda, .cuda(...)), else cuda)",
    )
    run.add_argument(
        "--report",
        metavar="PATH.json",
        help="record where the code uses CUDA/MPS-specific APIs and how its ops ran; "
        "written as JSON to PATH.json and printed on stderr when the target ends, however it ends",
    )
    run.add_argument(
        "--log-level",
        choices=_logger.LEVELS,
        type=str.upper,
        metavar="LEVEL",
        help=f"torchdevice's log level: {', '.join(_logger.LEVELS)}; sets {_logger.LEVEL_ENV} "
        "(default: WARNING, which logs only what cannot be emulated faithfully; DEBUG logs each intercepted API "
        "with the user's file:line)",
    )
    run.add_argument(
        "--include-libraries",
        action="store_true",
        help="report (and log) CUDA/MPS API uses inside installed libraries where the library makes them, "
        f"instead of at the user's call into the library; sets {_callsite.INCLUDE_LIBRARIES_ENV}=1",
    )
    run.add_argument("-m", dest="module", metavar="MODULE", help="run library module MODULE as a script")
    run.add_argument("script", nargs="?", metavar="SCRIPT", help="path of the Python script to run")
    # ARGS are split off before argparse sees them (see _split_run_argv), so that options meant
    # for the script (`run train.py --lr 3`, `run -m pkg -v`) never reach this parser.
    run.set_defaults(handler=_cmd_run)

    info = commands.add_parser(
        "info",
        help="show what is emulated on what, the torch build and the emulated devices",
        description="Show what torchdevice emulates on this machine.",
        allow_abbrev=False,
    )
    info.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    info.set_defaults(handler=_cmd_info)

    report = commands.add_parser(
        "report",
        help="print a porting report saved by `run --report`",
        description="Print a porting report saved by `torchdevice run --report PATH.json`, as text.",
        allow_abbrev=False,
    )
    report.add_argument("path", metavar="PATH.json", help="the saved report")
    report.set_defaults(handler=_cmd_report)
    # Room for `bench`: one more add_parser(...) with its own handler.
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m torchdevice`` and of the ``torchdevice`` console script."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    head, script_args = _split_run_argv(args_in)
    try:
        ns = parser.parse_args(head)
    except SystemExit as exc:  # --help, --version and usage errors exit through argparse
        return _exit_status(exc.code)
    if ns.command is None:
        parser.print_usage(sys.stderr)
        print(f"{PROG}: error: a command is required: run, info or report", file=sys.stderr)
        return EXIT_USAGE
    ns.args = script_args
    return ns.handler(ns)


def _split_run_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split ``run ...`` into torchdevice's own options and the target's arguments.

    As with ``python``, the first non-option token (the script), or the operand of ``-m``,
    ends torchdevice's options; every token after it belongs to the script.
    """
    if not argv or argv[0] != "run":
        return argv, []
    i = 1
    while i < len(argv):
        token = argv[i]
        if token == "--":
            return argv[: i + 2], argv[i + 2 :]
        if token == "-m":
            return argv[: i + 2], argv[i + 2 :]
        if token.startswith("-m") and not token.startswith("--"):  # -mpkg.module
            return argv[: i + 1], argv[i + 1 :]
        if token in _RUN_OPTIONS_WITH_VALUE:
            i += 2
            continue
        if token.startswith("-"):  # --backend=cpu, -h, or an unknown option argparse rejects
            i += 1
            continue
        return argv[: i + 1], argv[i + 1 :]
    return argv, []


# --------------------------------------------------------------------------------------- run


def _cmd_run(ns: argparse.Namespace) -> int:
    if ns.module is None and ns.script is None:
        return _usage_error("run", "the following arguments are required: SCRIPT or -m MODULE")
    if ns.module is not None and ns.script is not None:
        return _usage_error("run", "give either SCRIPT or -m MODULE, not both")
    if ns.script is not None and not os.path.exists(ns.script):
        abspath = os.path.abspath(ns.script)
        print(f"{PROG} run: can't open file {abspath!r}: [Errno 2] No such file or directory", file=sys.stderr)
        return EXIT_USAGE  # what `python missing.py` returns
    if ns.script is not None and not _has_main_module(ns.script):
        print(f"{PROG} run: can't find '__main__' module in {os.path.abspath(ns.script)!r}", file=sys.stderr)
        return EXIT_ERROR  # what `python DIR` returns for a directory (or zip) without __main__.py
    report_path = None
    if ns.report is not None:
        # Absolute now: the target may change directory before the report is written.
        report_path = os.path.abspath(ns.report)
        if not os.path.isdir(os.path.dirname(report_path)):
            return _usage_error("run", f"argument --report: no such directory: {os.path.dirname(report_path)!r}")
        os.environ.pop(REPORT_ENV, None)  # this report, not another one from the environment

    # The variables, not only this process's settings: processes the target starts (torchrun
    # workers, spawned DataLoader workers) activate the same way through the .pth hook.
    if ns.backend is not None:
        os.environ[BACKEND_ENV] = ns.backend
    if ns.log_level is not None:
        os.environ[_logger.LEVEL_ENV] = ns.log_level
    if ns.include_libraries:
        os.environ[_callsite.INCLUDE_LIBRARIES_ENV] = "1"
    emulation_from_source = None
    if ns.emulate is not None:
        os.environ[EMULATE_ENV] = ns.emulate
    elif not os.environ.get(EMULATE_ENV, "").strip():
        target = _target_file(ns.script, ns.module)
        if target is not None and source_device_types(target) == {"mps"}:
            os.environ[EMULATE_ENV] = emulation_from_source = "mps"
    status = _activate("run", ns.backend)
    if status is not None:
        return status
    if emulation_from_source is not None:
        _logger.logger.info(
            "%s uses mps and not cuda: emulating mps (%s=mps; --emulate cuda overrides)",
            ns.script or ns.module, EMULATE_ENV,
        )

    report = None
    if report_path is not None:
        from torchdevice import report

        report.start(report_path)
    status = EXIT_ERROR
    try:
        if ns.module is not None:
            status = _run_module(ns.module, ns.args)
        else:
            status = _run_script(ns.script, ns.args)
    except KeyboardInterrupt:
        if report is not None:
            status = report.SIGINT_EXIT_STATUS  # the interpreter ends by SIGINT, as for `python script.py`
        raise
    finally:
        if report is not None:
            sys.stdout.flush()
            report.finish(exit_status=status)
    return status


# What `run` looks for in the target's own source to pick the emulated device type: device
# strings and the device's own modules. Comments are left out; a string or name that only looks
# like a use (in a docstring, say) counts too: an explicit --emulate or TORCHDEVICE_EMULATE decides.
_SOURCE_USES = {
    "mps": re.compile(r"""["']mps(?::\d+)?["']|\btorch\.mps\b|\btorch\.backends\.mps\b"""),
    "cuda": re.compile(r"""["']cuda(?::\d+)?["']|\btorch\.cuda\b|\btorch\.backends\.cud(?:a|nn)\b|\.cuda\("""),
}
_SOURCE_SCAN_LIMIT = 1 << 20  # bytes: a script's source, not a data file


def source_device_types(path: str) -> set[str]:
    """The accelerator types (``cuda``, ``mps``) the Python source at ``path`` uses by name."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read(_SOURCE_SCAN_LIMIT)
    except OSError:
        return set()
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    return {kind for kind, pattern in _SOURCE_USES.items() if pattern.search(code)}


def _target_file(script: str | None, module: str | None) -> str | None:
    """The source file `run` will execute first, found without importing anything."""
    if script is not None:
        if os.path.isdir(script):
            script = os.path.join(script, "__main__.py")
        return script if os.path.isfile(script) and not zipfile.is_zipfile(script) else None
    path = [os.getcwd(), *sys.path[1:]]  # what `python -m` searches (see _run_module)
    spec = None
    for part in (module or "").split("."):
        if path is None:
            return None  # a module has no submodules
        spec = importlib.machinery.PathFinder.find_spec(part, path)
        if spec is None:
            return None
        path = spec.submodule_search_locations
    if spec is None:
        return None
    if spec.submodule_search_locations:  # a package runs its __main__
        return _target_file(os.path.join(list(spec.submodule_search_locations)[0], "__main__.py"), None)
    return spec.origin if spec.origin and spec.origin.endswith(".py") else None


def _activate(command: str, backend: str | None = None) -> int | None:
    """Activate torchdevice for this process; a usage status (and one line on stderr) if the environment is bad."""
    try:
        # Fails here with one line (e.g. mps on Linux, a bad memory size), not deep in an import.
        wanted = _startup.check_environment()
        _logger.configure_from_env()
    except (ValueError, RuntimeError, NotImplementedError) as exc:
        print(f"{PROG} {command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    plan = torchdevice.activate()
    if backend is not None and plan != wanted:
        # Only in a process that activated before this command ran (cli.main called in-process).
        return _usage_error(command, f"torchdevice is already active here with backend {plan.backend!r}")
    return None


def _run_script(script: str, args: list[str]) -> int:
    # What `python script.py` sets up: argv[0] as typed and the script's real directory first
    # on the path. Like python, `run` takes over this process's argv, path and __main__.
    sys.argv = [script, *args]
    sys.path[0] = os.path.dirname(os.path.realpath(script))
    if os.path.isdir(script) or zipfile.is_zipfile(script):
        # A directory or zip with __main__.py: runpy implements python's rules for those.
        return _execute(lambda: runpy.run_path(script, run_name="__main__"))
    return _execute(lambda: _exec_as_main(os.path.abspath(script)))


def _has_main_module(script: str) -> bool:
    """False for a directory or zip file without a ``__main__`` module (runpy would fail on it)."""
    if not (os.path.isdir(script) or zipfile.is_zipfile(script)):
        return True  # a source file is its own main module
    importer = pkgutil.get_importer(script)  # how runpy (and python) look into a directory or zip
    return importer is not None and importer.find_spec("__main__") is not None


def _exec_as_main(path: str) -> None:
    """Execute a source file as the ``__main__`` module, with the globals `python path` gives it.

    Not runpy.run_path: it sets sys.argv[0] and __file__ to the same string, while python keeps
    argv[0] as typed and makes __file__ (and code filenames in tracebacks) absolute.
    """
    module = types.ModuleType("__main__")
    module.__dict__.update(
        __file__=path,
        __cached__=None,
        __package__=None,
        __spec__=None,
        __loader__=importlib.machinery.SourceFileLoader("__main__", path),
        __builtins__=builtins,
        __annotations__={},
    )
    with io.open_code(path) as f:
        source = f.read()
    # dont_inherit: this module's `from __future__ import annotations` must not leak into the script.
    code = compile(source, path, "exec", dont_inherit=True)
    sys.modules["__main__"] = module
    exec(code, module.__dict__)


def _run_module(module: str, args: list[str]) -> int:
    sys.path[0] = os.getcwd()  # `python -m` puts the working directory first
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:  # a parent package fails to import, or a bad name
        spec, error = None, f"{exc}"
    else:
        error = f"No module named {module}"
    if spec is None:
        print(f"{PROG} run: {error}", file=sys.stderr)
        return EXIT_ERROR  # what `python -m missing` returns
    # runpy sets sys.argv[0] to the module's file, as `python -m` does.
    sys.argv = [module, *args]
    return _execute(lambda: runpy.run_module(module, run_name="__main__", alter_sys=True))


def _execute(run: Callable[[], object]) -> int:
    try:
        run()
    except SystemExit as exc:
        return _exit_status(exc.code, report=True)
    except KeyboardInterrupt:
        # Left to the interpreter, which exits by SIGINT as it does for `python script.py`.
        raise
    except BaseException as exc:  # noqa: BLE001 - reported like the interpreter does, then exit 1
        # The default hook prints exc.__traceback__, not its tb argument: trim both.
        tb = _user_traceback(exc.__traceback__)
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        return EXIT_ERROR
    return EXIT_OK


def _user_traceback(tb: TracebackType | None) -> TracebackType | None:
    """The traceback without this module's frames: what `python script.py` would show.

    runpy's frames stay for `-m` and directories, as python shows them there too.
    """
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return tb


def _exit_status(code: Any, report: bool = False) -> int:
    """CPython's handling of SystemExit: None is 0, an int is itself, anything else is printed and 1."""
    from torchdevice.report import exit_code_status  # no torch: the report module imports it lazily

    if report and code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
    return exit_code_status(code)


def _usage_error(command: str, message: str) -> int:
    print(f"{PROG} {command}: error: {message} (see '{PROG} {command} --help')", file=sys.stderr)
    return EXIT_USAGE


# -------------------------------------------------------------------------------------- info


def collect_info() -> dict[str, Any]:
    """Everything ``torchdevice info`` reports, as plain data."""
    import torch

    plan = torchdevice.activate()
    cuda_build = _device.torch_has_cuda_build()
    devices = []
    for device_type in plan.emulated:
        module = getattr(torch, device_type)
        for index in range(module.device_count()):
            props = module.get_device_properties(index)
            devices.append(
                {
                    "device": f"{device_type}:{index}",
                    "name": props.name,
                    "capability": [props.major, props.minor],
                    "total_memory": int(props.total_memory),
                    "multi_processor_count": int(props.multi_processor_count),
                }
            )
    return {
        "torchdevice": {"version": torchdevice.__version__, "location": os.path.dirname(torchdevice.__file__)},
        "plan": {
            "backend": plan.backend,
            "runner": plan.runner,
            "emulated": list(plan.emulated),
            "device_count": plan.device_count,
        },
        "activation": dict(torchdevice.activation),
        "torch": {
            "version": torch.__version__,
            # torchdevice makes torch.backends.cuda.is_built() answer True, so ask the install.
            "build": "cuda" if cuda_build else "cpu",
            # The build's CUDA version: the emulated device answers torch.version.cuda = None.
            "cuda_version": _build_cuda_version(),
        },
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "environment": {
            name: os.environ.get(name)
            for name in (BACKEND_ENV, "TORCHDEVICE_DEVICE_COUNT", "CUDA_VISIBLE_DEVICES", "TORCHDEVICE_LOG_LEVEL")
        },
        "devices": devices,
    }


def _build_cuda_version() -> str | None:
    """``torch.version.cuda`` as the installed torch has it (before torchdevice answered None)."""
    import torch

    from torchdevice.core.patch import REGISTRY

    for p in REGISTRY:
        if p.target is torch.version and p.name == "cuda":
            return p.original
    return torch.version.cuda


def format_info(info: dict[str, Any]) -> str:
    plan, torch_info, activation = info["plan"], info["torch"], info["activation"]
    emulated = ", ".join(f"{t} x{plan['device_count']}" for t in plan["emulated"]) or "nothing"
    build = "CUDA build" if torch_info["build"] == "cuda" else "CPU build"
    if torch_info["cuda_version"]:
        build += f", CUDA {torch_info['cuda_version']}"
    lines = [
        f"torchdevice {info['torchdevice']['version']}",
        f"  backend      {plan['backend']} (kernels run on {plan['runner']})",
        f"  emulated     {emulated}",
        f"  hooks route  {activation.get('hooks_route', 'none (nothing emulated)')}",
        f"torch {torch_info['version']} ({build})",
        f"python {info['python']['version']} ({info['python']['executable']})",
    ]
    set_env = {k: v for k, v in info["environment"].items() if v is not None}
    if set_env:
        lines.append("environment")
        lines.extend(f"  {k}={v!r}" for k, v in set_env.items())
    if info["devices"]:
        lines.append("devices")
    for dev in info["devices"]:
        major, minor = dev["capability"]
        lines.append(
            f"  {dev['device']}  {dev['name']}  capability {major}.{minor}  "
            f"{dev['total_memory'] // 2**20} MiB  {dev['multi_processor_count']} SMs"
        )
    return "\n".join(lines)


def _cmd_info(ns: argparse.Namespace) -> int:
    status = _activate("info")
    if status is not None:
        return status
    info = collect_info()
    print(json.dumps(info, indent=2) if ns.json else format_info(info))
    return EXIT_OK


# ------------------------------------------------------------------------------------ report


def _cmd_report(ns: argparse.Namespace) -> int:
    from torchdevice import report  # no torch: printing a saved report needs none

    try:
        data = report.load(ns.path)
    except FileNotFoundError:
        print(f"{PROG} report: error: no such file: {ns.path!r}", file=sys.stderr)
        return EXIT_ERROR
    except (OSError, ValueError) as exc:
        print(f"{PROG} report: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(report.format_text(data))
    return EXIT_OK


__all__ = ["build_parser", "collect_info", "format_info", "main"]
