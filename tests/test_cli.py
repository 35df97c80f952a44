"""``torchdevice run`` / ``info`` / ``report``: each run in a fresh interpreter, compared with plain ``python``."""

from __future__ import annotations

import json
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

import torch
import torchdevice
from torchdevice import cli
from tests.conftest import describe, EARLY_HOOKS_ROUTE
from torchdevice.core.device import torch_has_cuda_build

REPORT_SCRIPT = """\
import json, os, sys
import torch
import torchdevice
print(json.dumps({
    "argv": sys.argv,
    "name": __name__,
    "file": __file__,
    "path0": sys.path[0],
    "main_is_me": sys.modules["__main__"].__dict__ is globals(),
    "backend_env": os.environ.get("TORCH_DEVICE_BACKEND"),
    "plan_backend": torchdevice.plan.backend,
    "hooks_route": torchdevice.activation.get("hooks_route"),
    "is_cuda": torch.ones(2, device="cuda").is_cuda,
}))
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def last_json_line(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------- run


def test_run_passes_argv_name_path_and_file_like_python(tmp_path, run_cli, run_python):
    script = write(tmp_path / "sub" / "report.py", REPORT_SCRIPT)
    args = ["sub/report.py", "a b", "--lr", "3", "-m", "x", "--backend", "y"]
    ours = run_cli(["run", *args], cwd=tmp_path)
    assert ours.returncode == 0, describe(ours)
    report = last_json_line(ours.stdout)
    assert report["argv"] == args
    assert report["name"] == "__main__"
    assert report["file"] == str(script)
    assert report["path0"] == str(script.parent)
    assert report["main_is_me"] is True
    assert report["is_cuda"] is True

    plain = run_python(args, cwd=tmp_path)  # the same script under python itself
    assert plain.returncode == 0, describe(plain)
    reference = last_json_line(plain.stdout)
    for key in ("argv", "name", "file", "path0", "main_is_me"):
        assert report[key] == reference[key], key


def test_run_imports_torchdevice_before_torch(tmp_path, run_cli):
    """The script's `import torch` comes after the CLI's `import torchdevice`: the hooks registry route."""
    write(tmp_path / "report.py", REPORT_SCRIPT)
    proc = run_cli(["run", "report.py"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert last_json_line(proc.stdout)["hooks_route"] == EARLY_HOOKS_ROUTE


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ("pass", 0),
        ("import sys; sys.exit(3)", 3),
        ("raise SystemExit(0)", 0),
        ("raise SystemExit(None)", 0),
        ("raise SystemExit('fatal: no data')", 1),
        ("raise ValueError('boom')", 1),
    ],
    ids=["clean", "exit-3", "exit-0", "exit-none", "exit-message", "exception"],
)
def test_run_exit_status_and_stderr_match_python(tmp_path, run_cli, run_python, body, status):
    # The script imports torchdevice itself, so plain python runs it too (a no-op under the CLI).
    script = write(tmp_path / "job.py", f"import torchdevice, torch\nx = torch.zeros(1, device='cuda')\n{body}\n")
    ours = run_cli(["run", str(script)])
    plain = run_python([str(script)])
    assert ours.returncode == status, describe(ours)
    assert plain.returncode == status, describe(plain)
    # Same stderr, byte for byte: the message of SystemExit("..."), or the traceback with only
    # the script's frames (none of the CLI's).
    assert ours.stderr == plain.stderr


def test_run_exception_traceback_shows_only_script_frames(tmp_path, run_cli):
    script = write(
        tmp_path / "fail.py",
        """\
        def inner():
            raise KeyError("missing")

        try:
            inner()
        except KeyError as exc:
            raise RuntimeError("wrapped") from exc
        """,
    )
    proc = run_cli(["run", str(script)])
    assert proc.returncode == 1
    assert proc.stderr.startswith("Traceback (most recent call last):\n")
    assert "The above exception was the direct cause of the following exception" in proc.stderr
    assert proc.stderr.rstrip().endswith("RuntimeError: wrapped")
    assert "cli.py" not in proc.stderr


def test_run_module(tmp_path, run_cli):
    write(tmp_path / "pkg" / "__init__.py", "")
    module_file = write(
        tmp_path / "pkg" / "tool.py",
        """\
        import json, sys
        import torch
        print(json.dumps({"argv": sys.argv, "name": __name__, "path0": sys.path[0],
                          "device": str(torch.ones(1).cuda().device)}))
        sys.exit(int(sys.argv[1]))
        """,
    )
    proc = run_cli(["run", "-m", "pkg.tool", "4", "-v", "--flag"], cwd=tmp_path)
    assert proc.returncode == 4, describe(proc)
    report = last_json_line(proc.stdout)
    assert report == {
        "argv": [str(module_file), "4", "-v", "--flag"],
        "name": "__main__",
        "path0": str(tmp_path),
        "device": "cuda:0",
    }


def test_run_module_package_main(tmp_path, run_cli):
    write(tmp_path / "app" / "__init__.py", "")
    write(tmp_path / "app" / "__main__.py", "import sys\nprint('app main', sys.argv[1:])\n")
    proc = run_cli(["run", "-m", "app", "x"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout.strip() == "app main ['x']"


def test_run_missing_module(tmp_path, run_cli):
    proc = run_cli(["run", "-m", "no_such_module_here"], cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr == "torchdevice run: No module named no_such_module_here\n"


def test_run_missing_script(tmp_path, run_cli):
    proc = run_cli(["run", "missing.py"], cwd=tmp_path)
    assert proc.returncode == 2  # as `python missing.py`
    expected = f"torchdevice run: can't open file {str(tmp_path / 'missing.py')!r}: [Errno 2] No such file or directory\n"
    assert proc.stderr == expected
    assert proc.stdout == ""


@pytest.mark.parametrize("kind", ["directory", "zip"])
def test_run_target_without_main_module_is_one_line_like_python(tmp_path, run_cli, run_python, kind):
    target = tmp_path / "app"
    if kind == "directory":
        write(target / "helper.py", "print('not main')\n")
    else:
        target = tmp_path / "app.zip"
        with zipfile.ZipFile(target, "w") as archive:
            archive.writestr("helper.py", "print('not main')\n")
    plain = run_python([target.name], cwd=tmp_path)
    ours = run_cli(["run", target.name], cwd=tmp_path)
    assert ours.returncode == plain.returncode == 1, describe(ours)
    message = f"can't find '__main__' module in {str(target)!r}\n"
    assert plain.stderr == f"{sys.executable}: {message}"
    assert ours.stderr == f"torchdevice run: {message}"
    assert ours.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run"], "torchdevice run: error: the following arguments are required: SCRIPT or -m MODULE"),
        (["run", "--frobnicate", "x.py"], "torchdevice: error: unrecognized arguments: --frobnicate"),
        (["run", "--backend", "tpu", "x.py"], "torchdevice run: error: argument --backend: invalid choice: 'tpu'"),
        (["launch"], "torchdevice: error: argument COMMAND: invalid choice: 'launch'"),
        (["info", "--yaml"], "torchdevice: error: unrecognized arguments: --yaml"),
        (["run", "--log-level", "loud", "x.py"], "torchdevice run: error: argument --log-level: invalid choice: 'LOUD'"),
        (["run", "--report"], "torchdevice run: error: argument --report: expected one argument"),
        (["run", "--report", "/no/such/dir/r.json", "x.py"], "torchdevice run: can't open file"),
        (["report"], "torchdevice report: error: the following arguments are required: PATH.json"),
    ],
    ids=["no-target", "unknown-option", "bad-backend", "unknown-command", "info-unknown-option", "bad-log-level",
         "report-without-path", "missing-script-before-report-dir", "report-command-without-path"],
)
def test_usage_errors_are_one_line_and_status_2(run_cli, args, message):
    proc = run_cli(args)
    assert proc.returncode == 2, describe(proc)
    assert proc.stderr.startswith(message), proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stdout == ""


def test_no_command_is_a_usage_error(run_cli):
    proc = run_cli([])
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == "torchdevice: error: a command is required: run, info or report"


def test_run_backend_option_sets_environment_before_import(tmp_path, run_cli):
    write(tmp_path / "report.py", REPORT_SCRIPT)
    proc = run_cli(["run", "--backend", "cpu", "report.py", "arg"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    report = last_json_line(proc.stdout)
    assert report["backend_env"] == "cpu"
    assert report["plan_backend"] == "cpu"  # torchdevice itself started with it
    assert report["argv"] == ["report.py", "arg"]
    assert report["is_cuda"] is True


def test_run_backend_matching_environment_needs_no_restart(tmp_path, run_cli):
    write(tmp_path / "report.py", REPORT_SCRIPT)
    proc = run_cli(["run", "--backend=cpu", "report.py"], cwd=tmp_path, env={"TORCH_DEVICE_BACKEND": "cpu"})
    assert proc.returncode == 0, describe(proc)
    assert last_json_line(proc.stdout)["plan_backend"] == "cpu"


def test_run_backend_unavailable_here_is_one_line(tmp_path, run_cli):
    write(tmp_path / "report.py", REPORT_SCRIPT)
    proc = run_cli(["run", "--backend", "cuda", "report.py"], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("torchdevice run: error: TORCH_DEVICE_BACKEND=cuda runs kernels on a real NVIDIA GPU")
    assert proc.stderr.count("\n") == 1


def test_console_script_runs(tmp_path, run_python):
    script = Path(sys.executable).parent / "torchdevice"
    if not script.exists():
        pytest.skip(f"the torchdevice console script is not installed next to {sys.executable}")
    write(tmp_path / "report.py", REPORT_SCRIPT)
    proc = run_python([str(script), "run", "report.py", "1"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    report = last_json_line(proc.stdout)
    assert report["argv"] == ["report.py", "1"]
    assert report["path0"] == str(tmp_path)


# ------------------------------------------------------------------------------------ info

# What `info` reports about the installed torch: its build, not the emulated device's answers
# (in this process torch.version.cuda is None on every build; see ops/device.py).
TORCH_BUILD = "cuda" if torch_has_cuda_build() else "cpu"
TORCH_BUILD_CUDA = cli._build_cuda_version()


def test_info_text(run_cli):
    proc = run_cli(["info"])
    assert proc.returncode == 0, describe(proc)
    lines = proc.stdout.splitlines()
    assert lines[0] == f"torchdevice {torchdevice.__version__}"
    assert "  backend      auto (kernels run on cpu)" in lines
    assert "  emulated     cuda x1" in lines
    assert f"  hooks route  {EARLY_HOOKS_ROUTE}" in lines
    build = f"CUDA build, CUDA {TORCH_BUILD_CUDA}" if TORCH_BUILD == "cuda" else "CPU build"
    assert f"torch {torch.__version__} ({build})" in lines
    assert any(line.startswith("  cuda:0  torchdevice emulated GPU (CPU)  capability 8.0") for line in lines)


def test_info_json(run_cli):
    proc = run_cli(["info", "--json"], env={"TORCHDEVICE_DEVICE_COUNT": "2"})
    assert proc.returncode == 0, describe(proc)
    info = json.loads(proc.stdout)
    assert info["torchdevice"]["version"] == torchdevice.__version__
    assert info["plan"] == {"backend": "auto", "runner": "cpu", "emulated": ["cuda"], "device_count": 2}
    assert info["activation"]["hooks_route"] == EARLY_HOOKS_ROUTE
    assert info["torch"] == {"version": torch.__version__, "build": TORCH_BUILD, "cuda_version": TORCH_BUILD_CUDA}
    assert (TORCH_BUILD_CUDA is None) == (TORCH_BUILD == "cpu")
    assert info["environment"]["TORCHDEVICE_DEVICE_COUNT"] == "2"
    assert [d["device"] for d in info["devices"]] == ["cuda:0", "cuda:1"]
    for dev in info["devices"]:
        assert dev["capability"] == [8, 0]
        assert dev["total_memory"] > 0
        assert dev["name"] == "torchdevice emulated GPU (CPU)"


def test_info_json_with_no_visible_device(run_cli):
    proc = run_cli(["info", "--json"], env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, describe(proc)
    info = json.loads(proc.stdout)
    assert info["plan"]["device_count"] == 0
    assert info["devices"] == []


# ----------------------------------------------------------------------- in-process pieces


@pytest.mark.parametrize(
    ("argv", "head", "tail"),
    [
        (["run", "s.py", "-m", "x"], ["run", "s.py"], ["-m", "x"]),
        (["run", "--backend", "cpu", "s.py", "--backend", "mps"], ["run", "--backend", "cpu", "s.py"], ["--backend", "mps"]),
        (["run", "--backend=cpu", "-m", "pkg.mod", "-v"], ["run", "--backend=cpu", "-m", "pkg.mod"], ["-v"]),
        (["run", "-mpkg", "a"], ["run", "-mpkg"], ["a"]),
        (["run", "--", "-odd-name.py", "x"], ["run", "--", "-odd-name.py"], ["x"]),
        (["run", "--report", "r.json", "--log-level", "debug", "s.py", "--report", "x"],
         ["run", "--report", "r.json", "--log-level", "debug", "s.py"], ["--report", "x"]),
        (["run", "--include-libraries", "-m", "pkg", "--include-libraries"],
         ["run", "--include-libraries", "-m", "pkg"], ["--include-libraries"]),
        (["run", "--emulate", "mps", "s.py", "--emulate"], ["run", "--emulate", "mps", "s.py"], ["--emulate"]),
        (["run"], ["run"], []),
        (["info", "--json"], ["info", "--json"], []),
    ],
)
def test_split_run_argv(argv, head, tail):
    assert cli._split_run_argv(argv) == (head, tail)


def test_version_and_help_exit_zero(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"torchdevice {torchdevice.__version__}"
    assert cli.main(["run", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert ("usage: torchdevice run [--backend BACKEND] [--emulate TYPE] [--report PATH.json] [--log-level LEVEL] "
            "[--include-libraries] (SCRIPT | -m MODULE) [ARGS ...]") in help_text
    assert "sets TORCHDEVICE_EMULATE (default: the environment's value, else mps" in " ".join(help_text.split())
    assert cli.main(["report", "--help"]) == 0
    assert "usage: torchdevice report [-h] PATH.json" in capsys.readouterr().out
    assert cli.main(["info", "--help"]) == 0
    assert "usage: torchdevice info [-h] [--json]" in capsys.readouterr().out
    assert cli.main(["--help"]) == 0
    assert "report    print a porting report saved by `run --report`" in capsys.readouterr().out


def test_collect_info_in_process():
    info = cli.collect_info()
    assert info["plan"]["emulated"] == list(torchdevice.plan.emulated)
    assert len(info["devices"]) == torch.cuda.device_count()
    assert cli.format_info(info).splitlines()[0] == f"torchdevice {torchdevice.__version__}"


def test_cli_module_does_not_import_torch_itself():
    """Only `import torchdevice` may bring torch in: the CLI module itself names no torch import at top level."""
    source = Path(cli.__file__).read_text()
    top_level = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    modules = [line.split()[1] for line in top_level]
    assert [m for m in modules if m == "torch" or m.startswith("torch.")] == []


# ------------------------------------------------------- activation by the command line itself


def test_bad_backend_in_environment_is_one_line(tmp_path, run_cli):
    """The package defers activation to the command, so a bad environment is a usage error, not a traceback."""
    write(tmp_path / "report.py", REPORT_SCRIPT)
    for args in (["run", "report.py"], ["info"]):
        proc = run_cli(args, cwd=tmp_path, env={"TORCH_DEVICE_BACKEND": "tpu"})
        assert proc.returncode == 2, describe(proc)
        command = args[0]
        assert proc.stderr == (
            f"torchdevice {command}: error: TORCH_DEVICE_BACKEND='tpu' is not a valid backend; "
            "choose one of: auto, cpu, mps, cuda\n"
        )
        assert proc.stdout == ""


def test_bad_log_level_in_environment_is_one_line(tmp_path, run_cli):
    write(tmp_path / "report.py", REPORT_SCRIPT)
    proc = run_cli(["run", "report.py"], cwd=tmp_path, env={"TORCHDEVICE_LOG_LEVEL": "loud"})
    assert proc.returncode == 2, describe(proc)
    assert proc.stderr.startswith("torchdevice run: error: TORCHDEVICE_LOG_LEVEL='LOUD' is not valid")
    assert proc.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("TORCHDEVICE_TOTAL_MEMORY", "banana", "TORCHDEVICE_TOTAL_MEMORY='banana' is not a memory size: give bytes"),
        ("TORCHDEVICE_TOTAL_MEMORY", "1e30", "TORCHDEVICE_TOTAL_MEMORY='1e30' is not a memory size: give bytes"),
        ("TORCHDEVICE_TOTAL_MEMORY", "0", "TORCHDEVICE_TOTAL_MEMORY='0' is less than 1 byte: give bytes"),
        ("TORCHDEVICE_CUDA_CACHING", "2", "TORCHDEVICE_CUDA_CACHING='2' is not valid: 1 models"),
        ("TORCHDEVICE_CAPABILITY", "eight", "TORCHDEVICE_CAPABILITY='eight' is not of the form MAJOR.MINOR"),
    ],
)
def test_every_bad_variable_in_environment_is_one_line(tmp_path, run_cli, name, value, message):
    write(tmp_path / "report.py", REPORT_SCRIPT)
    proc = run_cli(["run", "report.py"], cwd=tmp_path, env={"TORCH_DEVICE_BACKEND": "cpu", name: value})
    assert proc.returncode == 2, describe(proc)
    assert proc.stderr.startswith(f"torchdevice run: error: {message}"), describe(proc)
    assert proc.stderr.count("\n") == 1, describe(proc)
    assert proc.stdout == ""


# A sitecustomize that makes a restart (os.execv) or an import of torch fail loudly.
GUARDS = """\
import os, sys

def _no_exec(*args):
    raise SystemExit("guard: os.execv called")

os.execv = _no_exec

class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and os.environ.get("GUARD_NO_TORCH"):
            raise ImportError("guard: torch imported")
        return None

sys.meta_path.insert(0, _NoTorch())
"""


def test_run_backend_option_needs_no_restart(tmp_path, run_cli):
    """--backend is honoured in this very process: activation waits for the command to read it."""
    write(tmp_path / "guards" / "sitecustomize.py", GUARDS)
    write(tmp_path / "report.py", REPORT_SCRIPT)
    proc = run_cli(["run", "--backend", "cpu", "report.py"], cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "guards")})
    assert proc.returncode == 0, describe(proc)
    report = last_json_line(proc.stdout)
    assert report["plan_backend"] == "cpu"
    assert report["hooks_route"] == EARLY_HOOKS_ROUTE  # still loaded before torch


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["report", "--help"], ["--version"]])
def test_help_and_report_never_import_torch(tmp_path, run_cli, args):
    write(tmp_path / "guards" / "sitecustomize.py", GUARDS)
    proc = run_cli(args, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "guards"), "GUARD_NO_TORCH": "1"})
    assert proc.returncode == 0, describe(proc)
    assert "guard" not in proc.stderr


def test_log_level_option(tmp_path, run_cli):
    write(tmp_path / "report.py", REPORT_SCRIPT)
    proc = run_cli(["run", "--log-level", "info", "report.py"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert f"[torchdevice] INFO emulating cuda on cpu: 1 device(s), hooks via {EARLY_HOOKS_ROUTE}" in proc.stderr.splitlines()
    quiet = run_cli(["run", "report.py"], cwd=tmp_path)
    assert quiet.returncode == 0, describe(quiet)
    assert quiet.stderr == ""


# ------------------------------------------------------------- emulated type from the source

MPS_SCRIPT = """\
import torch
x = torch.ones(3, device="mps") * 2  # written for a Mac; cuda appears only in this comment
print(x.device, x.sum().item())
"""


def test_run_emulates_mps_for_code_written_for_mps(tmp_path, run_cli):
    write(tmp_path / "train_mps.py", MPS_SCRIPT)
    proc = run_cli(["run", "--log-level", "info", "train_mps.py"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout == "mps:0 6.0\n"
    info = [line for line in proc.stderr.splitlines() if "uses mps" in line]
    assert info == ["[torchdevice] INFO train_mps.py uses mps and not cuda: emulating mps "
                    "(TORCHDEVICE_EMULATE=mps; --emulate cuda overrides)"]


def test_run_emulates_mps_for_a_module_written_for_mps(tmp_path, run_cli):
    write(tmp_path / "app" / "__init__.py", "")
    write(tmp_path / "app" / "__main__.py", MPS_SCRIPT)
    proc = run_cli(["run", "-m", "app"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout == "mps:0 6.0\n"
    assert proc.stderr == ""


@pytest.mark.parametrize(("args", "env"), [(["--emulate", "cuda"], {}), ([], {"TORCHDEVICE_EMULATE": "cuda"})],
                         ids=["option", "environment"])
def test_an_explicit_emulated_type_wins_over_the_source(tmp_path, run_cli, args, env):
    write(tmp_path / "train_mps.py", MPS_SCRIPT)
    proc = run_cli(["run", *args, "train_mps.py"], cwd=tmp_path, env=env)
    assert proc.returncode == 1, describe(proc)
    assert proc.stderr.splitlines()[-1] == (
        "NotImplementedError: aten.empty.memory_format on 'mps': this process emulates cuda, not mps, and PyTorch "
        "has one accelerator type per process; run MPS-written code with TORCHDEVICE_EMULATE=mps"
    )


@pytest.mark.parametrize(
    ("source", "types"),
    [
        ('x = torch.ones(1, device="mps")\n', {"mps"}),
        ("torch.mps.synchronize()\nif torch.backends.mps.is_available(): pass\n", {"mps"}),
        ("d = 'cuda' if torch.cuda.is_available() else 'mps'\n", {"cuda", "mps"}),
        ("model.cuda()\n", {"cuda"}),
        ("torch.backends.cudnn.benchmark = True  # not for 'mps'\n", {"cuda"}),
        ("x = 1  # torch.mps, 'cuda'\n", set()),
        ("names = ['mpsx', 'cudart']\n", set()),
    ],
)
def test_source_device_types(tmp_path, source, types):
    path = write(tmp_path / "s.py", source)
    assert cli.source_device_types(str(path)) == types
