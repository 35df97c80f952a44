"""A clean exit after backward on an emulated device (torchdevice.core.shutdown)."""

from __future__ import annotations

import torch
import torchdevice
from torchdevice.core import shutdown
from tests.conftest import describe

BACKWARD_THEN_EXIT = """\
import torch
x = torch.randn(8, device="cuda", requires_grad=True)
(x * x).sum().backward()
(g,) = torch.autograd.grad((x * 3).sum(), x)  # returned gradients: held by the graph task too
assert x.grad.is_cuda and g.is_cuda
print("ok")
"""


def test_drain_after_backward_leaves_user_state_alone():
    x = torch.randn(4, device="cuda", requires_grad=True)
    (x * 2).sum().backward()
    grad = x.grad.clone()
    shutdown.drain_autograd_device_threads(torchdevice.plan.emulated, torchdevice.plan.device_count)
    assert torch.equal(x.grad, grad)


def test_drain_works_with_grad_disabled():
    with torch.no_grad():
        shutdown.drain_autograd_device_threads(torchdevice.plan.emulated, torchdevice.plan.device_count)


def test_drain_without_devices_is_a_no_op():
    shutdown.drain_autograd_device_threads(("cuda",), 0)
    shutdown.drain_autograd_device_threads((), 4)


def test_install_registers_once(monkeypatch):
    registered = []
    monkeypatch.setattr(shutdown, "_installed", False)
    monkeypatch.setattr(shutdown.atexit, "register", lambda *args: registered.append(args))
    assert shutdown.install(("cuda",), 2) is True
    assert shutdown.install(("cuda",), 2) is False
    assert registered == [(shutdown._drain_at_exit, ("cuda",), 2)]


def test_install_without_devices_does_nothing(monkeypatch):
    monkeypatch.setattr(shutdown, "_installed", False)
    assert shutdown.install(("cuda",), 0) is False
    assert shutdown.install((), 1) is False


def test_drain_failure_at_exit_is_only_logged(monkeypatch, caplog):
    def fail(*args):
        raise RuntimeError("no engine")

    monkeypatch.setattr(shutdown, "drain_autograd_device_threads", fail)
    with caplog.at_level("DEBUG", logger="torchdevice"):
        shutdown._drain_at_exit(("cuda",), 1)
    assert "could not drain autograd device threads at exit" in caplog.text


def test_cli_run_exits_cleanly_after_backward(tmp_path, run_cli):
    # The abort this prevents is a race, so one clean run proves little; several make a
    # regression likely to show (it hit up to 8 of 10 runs on a loaded 2-core machine).
    script = tmp_path / "train.py"
    script.write_text(BACKWARD_THEN_EXIT)
    for _ in range(4):
        proc = run_cli(["run", str(script)])
        assert proc.returncode == 0, describe(proc)
        assert proc.stdout == "ok\n"


def test_import_torchdevice_installs_the_exit_drain(run_code):
    proc = run_code("import torchdevice\nfrom torchdevice.core import shutdown\nprint(shutdown._installed)")
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout.strip() == "True"


def test_plain_import_exits_cleanly_after_backward(tmp_path, run_python):
    script = tmp_path / "train.py"
    script.write_text("import torchdevice\n" + BACKWARD_THEN_EXIT)
    for _ in range(4):
        proc = run_python([str(script)])
        assert proc.returncode == 0, describe(proc)
        assert proc.stdout == "ok\n"
