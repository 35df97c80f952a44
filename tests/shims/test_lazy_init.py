"""CUDA's lazy initialization and its fork rule on the emulated device (shims/cuda.py).

As torch has them on a GPU: nothing of CUDA initializes at ``import torch``, CUDA_VISIBLE_DEVICES
is read when the program first asks for devices, calls made before initialization (seeding) run
at it, and a child forked from a process that initialized CUDA gets CUDA's errors on its first
CUDA use. Each check runs in a fresh interpreter: initialization happens once per process.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import describe

EMULATED = {"TORCH_DEVICE_BACKEND": "cpu"}


def _json(run_code, code: str, **env: str) -> dict:
    proc = run_code(code, env={**EMULATED, **env})
    assert proc.returncode == 0, describe(proc)
    return json.loads(proc.stdout.splitlines()[-1])


def test_cuda_is_initialized_at_first_use_not_at_import(run_code):
    result = _json(run_code, """
        import json, torchdevice, torch
        before = torch.cuda.is_initialized()
        torch.ones(1, device="cuda")
        print(json.dumps([before, torch.cuda.is_initialized()]))
    """)
    assert result == [False, True]


def test_import_through_the_pth_hook_initializes_nothing(run_code):
    result = _json(run_code, """
        import json, torch
        print(json.dumps([torch.cuda.is_initialized(), torch.cuda.is_available(), torch.cuda.is_initialized()]))
    """)
    assert result == [False, True, False]  # asking for devices is no initialization


@pytest.mark.parametrize(("count", "visible", "expected"), [("1", "32", 0), ("4", "2,0", 2), ("4", "", 0)])
def test_cuda_visible_devices_set_after_import_is_honoured(run_code, count, visible, expected):
    # PyTorch's test_cuda test_lazy_init: the variable set after `import torch` still counts.
    result = _json(run_code, f"""
        import json, os, torch
        os.environ["CUDA_VISIBLE_DEVICES"] = {visible!r}
        print(json.dumps([torch.cuda.device_count(), torch.cuda.is_available()]))
    """, TORCHDEVICE_DEVICE_COUNT=count)
    assert result == [expected, expected > 0]


def test_no_visible_device_fails_initialization_as_cuda_does(run_code):
    result = _json(run_code, """
        import json, os, torch
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        try:
            torch.zeros(1, device="cuda")
        except RuntimeError as e:
            print(json.dumps(str(e)))
    """)
    assert result == "No CUDA GPUs are available"


def test_seeding_before_initialization_applies_at_it(run_code):
    result = _json(run_code, """
        import json, torch
        torch.cuda.manual_seed(7)
        queued = not torch.cuda.is_initialized()
        a = torch.randn(4, device="cuda")
        torch.cuda.manual_seed(7)
        print(json.dumps([queued, torch.equal(a, torch.randn(4, device="cuda")), torch.cuda.initial_seed()]))
    """)
    assert result == [True, True, 7]


FORK_AFTER_INIT = """
    import json, os, sys, torch
    x = torch.ones(3, device="cuda")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        errors = {"bad_fork": torch.cuda._is_in_bad_fork(), "initialized": torch.cuda.is_initialized()}
        for name, use in (("new", lambda: torch.ones(1, device="cuda")), ("move", lambda: torch.ones(1).cuda()),
                          ("op", lambda: x + 1), ("to_host", lambda: x.cpu())):
            try:
                use()
                errors[name] = None
            except Exception as e:
                errors[name] = [type(e).__name__, str(e).splitlines()[0]]
        os.write(write, json.dumps(errors).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = json.loads(os.read(read, 65536))
    child["parent_still_works"] = (x + 1).sum().item()
    print(json.dumps(child))
"""


def test_a_child_forked_after_initialization_gets_cudas_errors(run_code):
    result = _json(run_code, FORK_AFTER_INIT)
    reinit = ["RuntimeError", "Cannot re-initialize CUDA in forked subprocess. To use CUDA with multiprocessing, you "
              "must use the 'spawn' start method"]
    assert result == {
        "bad_fork": True, "initialized": False, "new": reinit, "move": reinit,
        "op": ["AcceleratorError", "CUDA error: initialization error"],
        "to_host": ["AcceleratorError", "CUDA error: initialization error"],
        "parent_still_works": 6.0,
    }


def test_a_child_forked_before_initialization_may_use_cuda(run_code):
    result = _json(run_code, """
        import json, os, torch
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            value = torch.ones(2, device="cuda").add(1).sum().item()
            os.write(write, json.dumps([torch.cuda._is_in_bad_fork(), value]).encode())
            os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        print(os.read(read, 1024).decode())
    """)
    assert result == [False, 4.0]


def test_a_fork_dataloader_worker_using_cuda_fails_in_the_main_process(run_code):
    result = _json(run_code, """
        import json, torch
        from torch.utils.data import DataLoader, Dataset

        class OnCuda(Dataset):
            def __len__(self):
                return 4
            def __getitem__(self, i):
                return torch.full((2,), i, device="cuda")

        torch.zeros(1, device="cuda")  # the parent initializes CUDA first
        try:
            list(DataLoader(OnCuda(), num_workers=1, multiprocessing_context="fork"))
        except RuntimeError as e:
            print(json.dumps(str(e)))
    """)
    assert "Caught RuntimeError in DataLoader worker process 0" in result
    assert "Cannot re-initialize CUDA in forked subprocess" in result
