"""Activation without touching the code: TORCH_DEVICE_BACKEND + the installed ``.pth`` hook.

Each test runs a fresh interpreter; the scripts never import torchdevice themselves.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import sys
import textwrap
from pathlib import Path

import pytest

from torchdevice.core import startup
from tests.conftest import REPO_ROOT, describe, EARLY_HOOKS_ROUTE

PTH = "torchdevice-activate.pth"

PLAIN_SCRIPT = """\
import json, sys
before = {"torchdevice": "torchdevice" in sys.modules, "torch": "torch" in sys.modules}
import torch
x = torch.ones(3, device="cuda") * 2
td = sys.modules.get("torchdevice")
print(json.dumps({
    "before": before,
    "device": str(x.device),
    "is_cuda": x.is_cuda,
    "sum": x.sum().item(),
    "available": torch.cuda.is_available(),
    "hooks_route": td.activation.get("hooks_route") if td else None,
}))
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_the_pth_hook_is_installed():
    dirs = [*site.getsitepackages(), site.getusersitepackages()]
    found = [d for d in dirs if os.path.exists(os.path.join(d, PTH))]
    assert found, f"{PTH} is not in {dirs}: reinstall torchdevice (pip install --no-build-isolation -e .)"
    text = Path(found[0], PTH).read_text()
    assert 'os.environ.get("TORCH_DEVICE_BACKEND") and __import__("torchdevice")._activate_from_pth()' in text


def test_backend_in_environment_activates_an_unmodified_script(tmp_path, run_python):
    script = write(tmp_path / "train.py", PLAIN_SCRIPT)
    proc = run_python([str(script)], env={"TORCH_DEVICE_BACKEND": "cpu"})
    assert proc.returncode == 0, describe(proc)
    assert proc.stderr == ""
    assert last_json(proc.stdout) == {
        # torchdevice is loaded at start, torch only when the script imports it; the native core
        # goes first then, so the hooks take the registry route as with `import torchdevice` first.
        "before": {"torchdevice": True, "torch": False},
        "device": "cuda:0",
        "is_cuda": True,
        "sum": 6.0,
        "available": True,
        "hooks_route": EARLY_HOOKS_ROUTE,
    }


def test_without_the_variable_nothing_is_imported(tmp_path, run_python):
    script = write(
        tmp_path / "probe.py",
        """\
        import sys
        mods = sorted(m for m in sys.modules if m.startswith("torchdevice") or m == "torch")
        import torch
        print(mods, "torchdevice" in sys.modules, torch.cuda.is_available())
        """,
    )
    proc = run_python([str(script)])
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout.strip() == "[] False False"


def test_a_program_that_never_imports_torch_does_not_load_it(run_code):
    proc = run_code(
        "import sys; print('torch' in sys.modules, sys.modules['torchdevice'].plan)",
        env={"TORCH_DEVICE_BACKEND": "cpu"},
    )
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout.strip() == "False None"


def test_bad_backend_in_environment_is_one_line_and_the_program_runs(run_code):
    proc = run_code("print('still runs')", env={"TORCH_DEVICE_BACKEND": "tpu"})
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout == "still runs\n"
    assert proc.stderr == (
        "torchdevice: error: TORCH_DEVICE_BACKEND='tpu' is not a valid backend; choose one of: auto, cpu, mps, cuda "
        "(torchdevice is not active in this process)\n"
    )


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("TORCHDEVICE_TOTAL_MEMORY", "banana", "TORCHDEVICE_TOTAL_MEMORY='banana' is not a memory size: give bytes"),
        ("TORCHDEVICE_TOTAL_MEMORY", "inf", "TORCHDEVICE_TOTAL_MEMORY='inf' is not a memory size: give bytes"),
        ("TORCHDEVICE_TOTAL_MEMORY", "0.1", "TORCHDEVICE_TOTAL_MEMORY='0.1' is less than 1 byte: give bytes"),
        ("TORCHDEVICE_TOTAL_MEMORY", "18446744073709551616",
         "TORCHDEVICE_TOTAL_MEMORY='18446744073709551616' is more than 2^64-1 bytes: give bytes"),
        ("TORCHDEVICE_CUDA_CACHING", "2", "TORCHDEVICE_CUDA_CACHING='2' is not valid: 1 models"),
        ("TORCHDEVICE_LOG_LEVEL", "LOUD", "TORCHDEVICE_LOG_LEVEL='LOUD' is not valid; choose one of: DEBUG, INFO"),
    ],
)
def test_every_bad_variable_is_one_line_and_the_program_runs(run_code, name, value, message):
    """Checked with the backend, before torch loads: not a traceback from the native core later."""
    proc = run_code("import torch; print('still runs', torch.cuda.is_available())",
                    env={"TORCH_DEVICE_BACKEND": "cpu", name: value})
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout == "still runs False\n"
    assert proc.stderr.startswith(f"torchdevice: error: {message}"), describe(proc)
    assert proc.stderr.endswith(" (torchdevice is not active in this process)\n")
    assert proc.stderr.count("\n") == 1, describe(proc)


def test_explicit_import_in_the_script_is_harmless(tmp_path, run_python):
    script = write(tmp_path / "both.py", "import torchdevice\n" + PLAIN_SCRIPT)
    proc = run_python([str(script)], env={"TORCH_DEVICE_BACKEND": "cpu"})
    assert proc.returncode == 0, describe(proc)
    report = last_json(proc.stdout)
    assert report["device"] == "cuda:0" and report["hooks_route"] == EARLY_HOOKS_ROUTE


def test_training_example_runs_quietly_from_the_environment(run_python):
    """Acceptance 2 (environment route): the CUDA example prints only its own lines; stderr stays empty."""
    proc = run_python([str(REPO_ROOT / "examples" / "train_cuda_mlp.py"), "--steps", "20"],
                      env={"TORCH_DEVICE_BACKEND": "cpu"})
    assert proc.returncode == 0, describe(proc)
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("device: torchdevice emulated GPU (CPU)")
    assert lines[-1].startswith("done: 20 steps in ")
    assert not any(line.startswith("[torchdevice]") for line in lines)


def test_torchrun_runs_an_unmodified_script(tmp_path, run_python):
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip(f"torchrun is not installed next to {sys.executable}")
    script = write(
        tmp_path / "worker.py",
        """\
        import json, os, sys
        import torch
        x = torch.ones(2, device="cuda")
        print(json.dumps({"rank": os.environ["RANK"], "device": str(x.device),
                          "active": "torchdevice" in sys.modules}))
        """,
    )
    proc = run_python([str(torchrun), "--standalone", "--nproc_per_node=1", str(script)],
                      env={"TORCH_DEVICE_BACKEND": "cpu"}, cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert last_json(proc.stdout) == {"rank": "0", "device": "cuda:0", "active": True}


def test_report_from_the_environment(tmp_path, run_python):
    script = write(tmp_path / "job.py", "import torch\ntorch.cuda.synchronize()\nx = torch.zeros(1).cuda()\n")
    out = tmp_path / "r.json"
    proc = run_python([str(script)], env={"TORCH_DEVICE_BACKEND": "cpu", "TORCHDEVICE_REPORT": str(out)}, cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    data = json.loads(out.read_text())
    assert [(s["api"], s["line"], s["count"]) for s in data["call_sites"]] == [
        ("torch.cuda.synchronize()", 2, 1),
        ("Tensor.cuda()", 3, 1),
    ]
    assert proc.stderr.rstrip().endswith(f"report written to {out}")


# --------------------------------------------------------------------------- pieces


@pytest.mark.parametrize(
    ("argv", "module"),
    [
        (["python", "-m", "torchdevice", "run", "x.py"], "torchdevice"),
        (["python", "-mtorchdevice"], "torchdevice"),
        (["python", "-X", "dev", "-W", "error", "-m", "torchdevice.__main__"], "torchdevice.__main__"),
        (["python", "-Xdev", "-Bm", "pkg"], "pkg"),
        (["python", "-u", "script.py", "-m", "torchdevice"], None),
        (["python", "-c", "import torchdevice", "-m", "torchdevice"], None),
        (["python", "--check-hash-based-pycs", "never", "-m", "x"], "x"),
        (["python"], None),
    ],
)
def test_interpreter_module(argv, module):
    assert startup.interpreter_module(argv) == module


def test_hook_is_idempotent_and_removable(monkeypatch):
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    calls = []
    # torch is imported in this process: installing activates at once instead of waiting.
    assert startup.install_import_hook(lambda: calls.append("activate"), lambda: None) is False
    assert calls == ["activate"]
    monkeypatch.delitem(sys.modules, "torch")
    try:
        assert startup.install_import_hook(lambda: None, lambda: None) is True
        assert startup.install_import_hook(lambda: None, lambda: None) is False  # the .pth ran twice
        assert sum(isinstance(f, startup.TorchImportHook) for f in sys.meta_path) == 1
        startup.remove_import_hook()
        assert not any(isinstance(f, startup.TorchImportHook) for f in sys.meta_path)
    finally:
        startup.remove_import_hook()


def test_console_script_is_recognised(tmp_path, run_python):
    script = Path(sys.executable).parent / "torchdevice"
    if not script.exists():
        pytest.skip(f"the torchdevice console script is not installed next to {sys.executable}")
    copy = tmp_path / "torchdevice"
    shutil.copy(script, copy)
    proc = run_python([str(copy), "info"], env={"TORCH_DEVICE_BACKEND": "tpu"})
    # Deferred to the command: a one-line usage error, not a traceback at import.
    assert proc.returncode == 2, describe(proc)
    assert proc.stderr.startswith("torchdevice info: error: TORCH_DEVICE_BACKEND='tpu'")
