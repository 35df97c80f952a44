"""The porting report: ``torchdevice run --report`` on scripts whose CUDA call sites are known."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, describe

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "cuda_sites.py"
EXAMPLE = REPO_ROOT / "examples" / "train_cuda_mlp.py"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def marked_sites(path: Path) -> dict[tuple[str, int], int | None]:
    """{(api, line): expected count} from the ``# site: API`` markers of a fixture."""
    expected = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = re.search(r"  # site: (.+)$", line)
        if match:
            api = match.group(1).strip()
            count = 3 if api == "Tensor.cuda()" else 1  # helper() runs three times
            expected[(api, number)] = None if api.startswith("torch.device(") else count
    return expected


def reported(data: dict) -> dict[tuple[str, int], int | None]:
    return {(s["api"], s["line"]): s["count"] for s in data["call_sites"]}


@pytest.mark.parametrize(("args", "status"), [([], 0), (["3"], 3), (["raise"], 1)], ids=["ok", "exit-3", "exception"])
def test_report_lists_the_fixture_call_sites(tmp_path, run_cli, args, status):
    out = tmp_path / "r.json"
    proc = run_cli(["run", "--report", str(out), str(FIXTURE), *args], cwd=tmp_path)
    assert proc.returncode == status, describe(proc)  # the script's own status, report or not
    data = json.loads(out.read_text())
    assert reported(data) == marked_sites(FIXTURE)
    assert {s["file"] for s in data["call_sites"]} == {str(FIXTURE)}
    assert data["exit_status"] == status
    for site in data["call_sites"]:
        assert site["note"]
        assert site["code"].endswith(f"# site: {site['api']}")
    sync = next(s for s in data["call_sites"] if s["api"] == "torch.cuda.synchronize()")
    assert sync["note"] == "device-agnostic alternative: torch.accelerator.synchronize()"
    assert sync["function"] == "main"
    # Printed at the end on stderr, after the script's own output (and its traceback, if any).
    assert proc.stderr.rstrip().endswith(f"report written to {out}")
    if status == 1:
        assert "RuntimeError: fixture failed on purpose" in proc.stderr
        assert proc.stderr.index("Traceback") < proc.stderr.index("torchdevice porting report")
    assert "ok torch.Size([2]) True 2.0" in proc.stdout


def test_report_census(tmp_path, run_cli):
    out = tmp_path / "r.json"
    proc = run_cli(["run", "--report", str(out), str(FIXTURE)], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    census = json.loads(out.read_text())["census"]
    assert census["mechanism"].startswith("TorchDispatchMode")
    ops = census["ops"]
    assert ops["device_type"] == "cuda"
    assert ops["routes"]["fallback"] > 0  # atan2 through the boxed CPU fallback
    assert ops["routes"]["fast_path"] > 0  # add, addmm, view: unboxed fast paths
    assert ops["routes"]["kernel"] > 0  # _to_copy/empty: torchdevice's own kernels
    assert ops["on_device"] == sum(ops["routes"].values())
    per_op = {o["op"]: o for o in ops["per_op"]}
    assert per_op["aten::addmm"]["route"] == "fast_path"
    assert per_op["aten::atan2"]["route"] == "fallback"
    assert per_op["aten::_to_copy"]["route"] == "kernel"
    memory = census["memory"]["cuda:0"]
    assert memory["allocations"] > 0 and memory["peak_bytes"] > 0
    assert memory["allocated_bytes"] >= memory["peak_bytes"]


def test_report_on_the_training_example(tmp_path, run_cli):
    """Acceptance 1 on examples/train_cuda_mlp.py: its CUDA lines, found by their text."""
    out = tmp_path / "r.json"
    proc = run_cli(["run", "--report", str(out), str(EXAMPLE), "--steps", "3"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    source = EXAMPLE.read_text().splitlines()

    def line_of(text: str) -> int:
        (number,) = [i for i, line in enumerate(source, start=1) if text in line]
        return number

    sites = reported(json.loads(out.read_text()))
    assert sites[("torch.cuda.is_available()", line_of("if not torch.cuda.is_available()"))] == 1
    assert sites[("torch.cuda.get_device_name()", line_of("torch.cuda.get_device_name(0)"))] == 1
    assert sites[("Tensor.to('cuda')", line_of("train_x, train_y = train_x.to(device)"))] == 2
    assert sites[("Tensor.cuda()", line_of("test_x, test_y = test_x.cuda()"))] == 2
    assert sites[("Module.cuda()", line_of("model = ConvMLP().cuda()"))] == 1
    assert sites[("torch.randint(device='cuda')", line_of("device=device)"))] == 3
    assert sites[("torch.cuda.synchronize()", line_of("torch.cuda.synchronize()"))] == 1
    assert sites[("torch.device('cuda')", line_of('torch.device("cuda", 0)'))] is None  # found in the source
    # Calls torch (AdamW, clip_grad_norm_, cross_entropy) or torchdevice (get_device_name asking
    # get_device_properties) make themselves are not the script's.
    assert {api for api, _ in sites} == {
        "torch.cuda.is_available()", "torch.cuda.get_device_name()", "Tensor.to('cuda')", "Tensor.cuda()",
        "Module.cuda()", "torch.randint(device='cuda')", "torch.cuda.synchronize()", "torch.device('cuda')",
    }


def test_training_example_prints_nothing_from_torchdevice(run_cli):
    """Acceptance 2 (command line): default logging adds no line to the example's output."""
    proc = run_cli(["run", str(EXAMPLE), "--steps", "20"])
    assert proc.returncode == 0, describe(proc)
    assert proc.stderr == ""
    assert not any(line.startswith("[torchdevice]") for line in proc.stdout.splitlines())


def test_report_command_prints_a_saved_report(tmp_path, run_cli):
    out = tmp_path / "r.json"
    assert run_cli(["run", "--report", str(out), str(FIXTURE)], cwd=tmp_path).returncode == 0
    proc = run_cli(["report", str(out)], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    text = proc.stdout
    assert text.startswith("torchdevice porting report (torchdevice ")
    assert "11 call sites (12 calls) in 1 file use CUDA- or MPS-specific APIs\n" in text
    sync_line = next(n for (api, n) in marked_sites(FIXTURE) if api == "torch.cuda.synchronize()")
    assert re.search(rf"^\s+{sync_line}\s+x1\s+torch\.cuda\.synchronize\(\)\s+device-agnostic alternative: "
                     r"torch\.accelerator\.synchronize\(\)$", text, re.M), text
    assert "routing census (TorchDispatchMode): " in text


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "torchdevice report: error: no such file: "), ("{}", "is not a torchdevice report"), ("{", "is not JSON")],
    ids=["missing", "not-a-report", "not-json"],
)
def test_report_command_errors_are_one_line(tmp_path, run_cli, content, message):
    path = tmp_path / "r.json"
    if content is not None:
        path.write_text(content)
    proc = run_cli(["report", str(path)])
    assert proc.returncode == 1
    assert message in proc.stderr and proc.stderr.count("\n") == 1
    assert proc.stdout == ""


def test_report_into_a_missing_directory_is_a_usage_error(tmp_path, run_cli):
    proc = run_cli(["run", "--report", str(tmp_path / "nope" / "r.json"), str(FIXTURE)])
    assert proc.returncode == 2
    assert proc.stderr.startswith("torchdevice run: error: argument --report: no such directory: ")
    assert proc.stdout == ""  # the script did not run


def test_libraries_are_seen_through_unless_included(tmp_path, run_cli):
    lib = tmp_path / "site-packages" / "fakelib"
    write(lib / "__init__.py", "import torch\n\ndef sync():\n    torch.cuda.synchronize()\n")
    script = write(tmp_path / "app.py", "import fakelib\nfor _ in range(2):\n    fakelib.sync()\n")
    env = {"PYTHONPATH": str(tmp_path / "site-packages")}
    out = tmp_path / "r.json"

    proc = run_cli(["run", "--report", str(out), str(script)], env=env, cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    (site,) = json.loads(out.read_text())["call_sites"]
    assert (site["api"], site["file"], site["line"], site["count"], site["via"]) == (
        "torch.cuda.synchronize()", str(script), 3, 2, ["fakelib"])
    assert "[inside fakelib]" in proc.stderr

    proc = run_cli(["run", "--report", str(out), "--include-libraries", str(script)], env=env, cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    (site,) = json.loads(out.read_text())["call_sites"]
    assert (site["file"], site["line"], site["count"]) == (str(lib / "__init__.py"), 4, 2)


def test_report_of_a_module_and_more_apis(tmp_path, run_cli):
    write(tmp_path / "pkg" / "__init__.py", "")
    write(
        tmp_path / "pkg" / "job.py",
        """\
        import torch
        import torch.distributed as dist
        s = torch.cuda.Stream()
        with torch.cuda.stream(s):
            pass
        torch.set_default_device("cuda:0")
        torch.set_default_device(None)
        with torch.cuda.amp.autocast():
            pass
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.mps.is_available()
        y = torch.ones(2).to(0)
        print(torch.cuda.utilization())
        """,
    )
    out = tmp_path / "r.json"
    proc = run_cli(["run", "--report", str(out), "-m", "pkg.job"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    data = json.loads(out.read_text())
    assert sorted(reported(data), key=lambda k: k[1]) == [
        ("torch.cuda.Stream()", 3),
        ("torch.cuda.stream()", 4),
        ("torch.set_default_device('cuda:N')", 6),
        ("torch.cuda.amp.autocast()", 8),
        ("torch.backends.cuda.matmul.allow_tf32 = ...", 10),
        ("torch.mps.is_available()", 11),
        ("Tensor.to(<int>)", 12),
        ("torch.cuda.utilization()", 13),
    ]
    assert data["unfaithful"] == [{"topic": "nvml-sensors", "message": data["unfaithful"][0]["message"]}]


CUDA_ONLY_OP = """\
import torch
lib = torch.library.Library("tdreport", "DEF")
lib.define("cuda_only(Tensor x) -> Tensor")
lib.impl("cuda_only", lambda x: x.clone(), "CUDA")
x = torch.ones(2, device="cuda")
y = torch.ops.tdreport.cuda_only(x)
y = torch.ops.tdreport.cuda_only(y)
"""


def test_cuda_only_operators_are_reported(tmp_path, run_cli):
    script = write(tmp_path / "op.py", CUDA_ONLY_OP)
    out = tmp_path / "r.json"
    proc = run_cli(["run", "--report", str(out), str(script)], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    data = json.loads(out.read_text())
    assert reported(data)[("tdreport::cuda_only (operator)", 6)] == 1
    assert reported(data)[("tdreport::cuda_only (operator)", 7)] == 1
    per_op = {o["op"]: o for o in data["census"]["ops"]["per_op"]}
    assert per_op["tdreport::cuda_only"] == {"op": "tdreport::cuda_only", "route": "cuda_only", "count": 2}


def test_backward_ops_are_counted(tmp_path, run_cli):
    script = write(tmp_path / "bw.py", "import torch\nx = torch.randn(4, device='cuda', requires_grad=True)\n"
                                       "x.relu().sum().backward()\n")
    out = tmp_path / "r.json"
    proc = run_cli(["run", "--report", str(out), str(script)], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    ops = {o["op"] for o in json.loads(out.read_text())["census"]["ops"]["per_op"]}
    assert "aten::threshold_backward" in ops  # run by autograd's device thread


def test_report_off_installs_nothing(run_code):
    """Importing the report module changes nothing: no wrapper, no dispatch mode (acceptance 4's premise)."""
    proc = run_code(
        """
        import torchdevice, torch
        from torch.utils._python_dispatch import _get_current_dispatch_mode
        from torchdevice.core.patch import REGISTRY
        before = [(p.qualname, p.owner) for p in REGISTRY]
        to, cuda, zeros = torch.Tensor.to, torch.Tensor.cuda, torch.zeros
        import torchdevice.report
        assert [(p.qualname, p.owner) for p in REGISTRY] == before
        assert not any(owner == "report" for _, owner in before)
        assert (torch.Tensor.to, torch.Tensor.cuda, torch.zeros) == (to, cuda, zeros)
        assert torch.Tensor.to is torch._C.TensorBase.to
        assert _get_current_dispatch_mode() is None
        assert torchdevice.report.active() is None
        print("nothing installed")
        """
    )
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout == "nothing installed\n"


def test_report_api_start_and_finish(tmp_path, run_python):
    """The API the command line uses: start, record the caller's line, finish; then wrappers record nothing."""
    out = tmp_path / "r.json"
    script = write(
        tmp_path / "api.py",
        f"""\
        import io, json, sys
        import torchdevice, torch
        from torchdevice import report
        assert report.active() is None
        rep = report.start({str(out)!r}, ops=False)
        torch.cuda.synchronize()
        data = report.finish(stream=io.StringIO())
        assert report.active() is None and rep.path == {str(out)!r}
        torch.cuda.synchronize()  # the wrappers stay registered, and record nothing once finished
        assert json.load(open({str(out)!r}))["call_sites"] == data["call_sites"]
        assert data["census"]["ops"] is None and data["census"]["mechanism"].startswith("off")
        print(json.dumps([(s["api"], s["line"], s["count"], s["static"]) for s in data["call_sites"]]))
        """,
    )
    proc = run_python([str(script)])
    assert proc.returncode == 0, describe(proc)
    assert json.loads(proc.stdout) == [["torch.cuda.synchronize()", 6, 1, False]]


def test_ops_the_runner_lacks_are_reported(tmp_path, run_python):
    """Ops a device runner has no kernel for run on the CPU; the report lists them (simulated here)."""
    script = write(
        tmp_path / "lacking.py",
        """\
        import io, json
        import torchdevice, torch
        from torchdevice import _C, report
        report.start(None, ops=False)
        _C.simulate_missing_kernel("cuda", "aten::atan2")
        x = torch.ones(3, device="cuda")
        torch.atan2(x, x); torch.atan2(x, x)
        data = report.finish(stream=io.StringIO())
        print(json.dumps([data["runner_cpu_fallbacks"], report.format_text(data).splitlines()]))
        """,
    )
    proc = run_python([str(script)])
    assert proc.returncode == 0, describe(proc)
    fallbacks, lines = json.loads(proc.stdout)
    assert fallbacks == {"aten::atan2": 2}
    assert "ops the cpu runner has no kernel for, run on the CPU: aten::atan2 x2" in lines


# ------------------------------------------------------------------ exit status, report file

ENDINGS = """\
import contextlib, sys
import torch
torch.cuda.synchronize()

def exit_inside_a_with_block():
    with contextlib.nullcontext():
        sys.exit(4)

def exit_caught_and_handled():
    try:
        sys.exit(5)
    except SystemExit:
        pass

ending = sys.argv[1]
if ending == "exit-3":
    sys.exit(3)
elif ending == "exception":
    raise RuntimeError("ended on purpose")
elif ending == "interrupt":
    raise KeyboardInterrupt
elif ending == "exit-in-with":
    exit_inside_a_with_block()
elif ending == "exit-handled":
    exit_caught_and_handled()
elif ending == "exit-message":
    sys.exit("bye")
"""


@pytest.mark.parametrize(
    ("ending", "status", "returncode"),
    [("normal", 0, 0), ("exit-3", 3, 3), ("exception", 1, 1), ("interrupt", 130, -2), ("exit-in-with", 4, 4),
     ("exit-handled", 0, 0), ("exit-message", 1, 1)],
)
def test_report_from_the_environment_records_the_exit_status(tmp_path, run_python, ending, status, returncode):
    """As `torchdevice run --report` records it: ^C is python's end by SIGINT, 128 + 2 to a shell."""
    script = write(tmp_path / "ends.py", ENDINGS)
    out = tmp_path / "r.json"
    env = {"TORCH_DEVICE_BACKEND": "cpu", "TORCHDEVICE_REPORT": str(out), "TORCHDEVICE_REPORT_OPS": "0"}
    proc = run_python([str(script), ending], env=env, cwd=tmp_path)
    assert proc.returncode == returncode, describe(proc)
    assert json.loads(out.read_text())["exit_status"] == status


def test_run_report_records_an_interrupt_as_python_exits(tmp_path, run_cli):
    script = write(tmp_path / "ends.py", ENDINGS)
    out = tmp_path / "r.json"
    proc = run_cli(["run", "--report", str(out), str(script), "interrupt"], cwd=tmp_path,
                   env={"TORCHDEVICE_REPORT_OPS": "0"})
    assert proc.returncode == -2, describe(proc)  # killed by SIGINT, as `python ends.py interrupt` is
    assert json.loads(out.read_text())["exit_status"] == 130


def test_report_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    from torchdevice import report

    out = tmp_path / "r.json"
    out.write_text("old")
    report.write({"schema": report.SCHEMA}, str(out))
    assert json.loads(out.read_text()) == {"schema": report.SCHEMA}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_report_write_removes_temporaries_of_processes_that_are_gone(tmp_path):
    from torchdevice import report

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    out = tmp_path / "r.json"
    (tmp_path / f"r.json.tmp{gone.pid}").write_text("{")  # a writer that died before renaming
    (tmp_path / f"r.json.tmp{os.getppid()}").write_text("{")  # a live process may still be writing
    report.write({"schema": report.SCHEMA}, str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", f"r.json.tmp{os.getppid()}"]


def test_a_process_ending_while_the_report_is_written_leaves_no_file(tmp_path, run_python):
    """os._exit (another thread, a signal) most likely lands while the JSON is made: no file exists yet then."""
    out = tmp_path / "r.json"
    script = write(
        tmp_path / "dies.py",
        f"""\
        import io, json, os
        import torchdevice, torch
        from torchdevice import report

        def die(*args, **kwargs):
            os._exit(7)

        json.dump = json.dumps = die
        report.start({str(out)!r}, ops=False)
        report.finish(stream=io.StringIO())
        """,
    )
    proc = run_python([str(script)], cwd=tmp_path)
    assert proc.returncode == 7, describe(proc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dies.py"]



FORKS = """
import os, sys
import torch

pid = os.fork()
if pid == 0:
    torch.ones(2).add_(1)
    sys.exit(0)  # a normal exit: the child runs the exit handlers it inherited
os.waitpid(pid, 0)
print(os.getpid(), pid)
"""


@pytest.mark.parametrize("template", ["r.json", "r-{pid}.json"])
def test_a_forked_child_never_writes_over_its_parents_report(tmp_path, run_python, template):
    script = write(tmp_path / "forks.py", FORKS)
    env = {"TORCH_DEVICE_BACKEND": "cpu", "TORCHDEVICE_REPORT": str(tmp_path / template), "TORCHDEVICE_REPORT_OPS": "0"}
    proc = run_python([str(script)], env=env, cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    parent, child = map(int, proc.stdout.split()[-2:])
    reports = {p.name: json.loads(p.read_text())["pid"] for p in tmp_path.glob("r*.json")}
    if "{pid}" in template:  # one report per process, each under its own pid
        assert reports == {f"r-{parent}.json": parent, f"r-{child}.json": child}
    else:
        assert reports == {"r.json": parent}
