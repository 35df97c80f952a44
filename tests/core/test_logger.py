"""torchdevice's logging: silent by default, one WARNING line per unfaithful topic, TORCHDEVICE_LOG_LEVEL."""

from __future__ import annotations

import logging
import sys
import textwrap

import pytest

import torch
from torchdevice.core import callsite, logger as td_logger
from tests.conftest import describe, EARLY_HOOKS_ROUTE


@pytest.fixture
def fresh_topics(monkeypatch):
    monkeypatch.setattr(td_logger, "_unfaithful", {})


def test_warn_unfaithful_logs_once_per_topic(caplog, fresh_topics):
    with caplog.at_level(logging.WARNING, logger="torchdevice"):
        assert td_logger.warn_unfaithful("topic-a", "a cannot be emulated") is True
        assert td_logger.warn_unfaithful("topic-a", "a cannot be emulated") is False
        assert td_logger.warn_unfaithful("topic-b", "b neither") is True
    records = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    assert records == [("torchdevice", "WARNING", "a cannot be emulated"), ("torchdevice", "WARNING", "b neither")]
    assert td_logger.unfaithful_topics() == {"topic-a": "a cannot be emulated", "topic-b": "b neither"}


@pytest.mark.parametrize("value", ["debug", "INFO", " warning ", "Error"])
def test_level_from_environment(monkeypatch, value):
    monkeypatch.setattr(td_logger.logger, "level", td_logger.logger.level)
    monkeypatch.setenv("TORCHDEVICE_LOG_LEVEL", value)
    td_logger.configure_from_env()
    assert td_logger.logger.level == getattr(logging, value.strip().upper())


def test_bad_level_names_the_valid_ones(monkeypatch):
    monkeypatch.setenv("TORCHDEVICE_LOG_LEVEL", "loud")
    with pytest.raises(ValueError, match=r"TORCHDEVICE_LOG_LEVEL='LOUD' is not valid; choose one of: DEBUG, INFO, WARNING, ERROR"):
        td_logger.configure_from_env()


def test_without_the_variable_the_level_is_warning_unless_set(monkeypatch):
    monkeypatch.delenv("TORCHDEVICE_LOG_LEVEL", raising=False)
    monkeypatch.setattr(td_logger.logger, "level", logging.NOTSET)
    td_logger.configure_from_env()
    assert td_logger.logger.level == logging.WARNING
    td_logger.logger.setLevel(logging.INFO)  # an application's own choice stays
    td_logger.configure_from_env()
    assert td_logger.logger.level == logging.INFO


def test_default_output_is_one_line_per_topic_on_stderr(run_code):
    proc = run_code(
        """
        import torchdevice, torch
        for _ in range(3):
            assert torch.cuda.utilization() == 0 and torch.cuda.temperature() == 0
        torch.cuda.memory._record_memory_history(enabled="all")
        assert torch.cuda.memory_snapshot() == []
        torch.cuda.memory._record_memory_history(enabled=None)
        print("done")
        """
    )
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout == "done\n"
    assert proc.stderr.splitlines() == [
        "[torchdevice] WARNING torch.cuda utilization/memory_usage/temperature/power_draw/clock_rate read 0: "
        "NVML sensors have no emulated counterpart",
    ]


def test_error_level_silences_warnings(run_code):
    proc = run_code("import torchdevice, torch; torch.cuda.utilization()", env={"TORCHDEVICE_LOG_LEVEL": "ERROR"})
    assert proc.returncode == 0, describe(proc)
    assert proc.stderr == ""


def test_an_application_logging_config_gets_the_records_once(run_code):
    """basicConfig(level=INFO): torchdevice's INFO stays quiet, its WARNING goes through the app's handler, once."""
    proc = run_code(
        """
        import logging
        logging.basicConfig(level=logging.INFO, format="%(name)s|%(levelname)s|%(message)s")
        import torchdevice, torch
        torch.cuda.power_draw()
        """
    )
    assert proc.returncode == 0, describe(proc)
    lines = [line for line in proc.stderr.splitlines() if "torchdevice" in line]
    assert lines == [
        "torchdevice|WARNING|torch.cuda utilization/memory_usage/temperature/power_draw/clock_rate read 0: "
        "NVML sensors have no emulated counterpart"
    ]


def test_info_level_reports_activation(run_code):
    proc = run_code("import torchdevice", env={"TORCHDEVICE_LOG_LEVEL": "INFO"})
    assert proc.returncode == 0, describe(proc)
    assert proc.stderr == f"[torchdevice] INFO emulating cuda on cpu: 1 device(s), hooks via {EARLY_HOOKS_ROUTE}\n"


def test_debug_logs_each_api_with_the_users_file_and_line(tmp_path, run_python):
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(
        """\
        import torchdevice
        import torch
        x = torch.ones(2, device="cuda")
        for _ in range(2):
            torch.cuda.synchronize()
        y = x.to(torch.float64).cpu()
        """
    ))
    proc = run_python([str(script)], env={"TORCHDEVICE_LOG_LEVEL": "DEBUG"})
    assert proc.returncode == 0, describe(proc)
    debug = [line for line in proc.stderr.splitlines() if line.startswith("[torchdevice] DEBUG") and " at " in line]
    # Once per call site, with the script's own lines (not torch's or torchdevice's).
    assert debug == [
        f"[torchdevice] DEBUG torch.ones(device='cuda') at {script}:3",
        f"[torchdevice] DEBUG torch.cuda.synchronize() at {script}:5",
    ]


def test_callsite_kinds():
    kinds = callsite.classifier()
    assert kinds.kind(__file__) == callsite.USER
    assert kinds.kind(torch.__file__) == callsite.TORCH
    assert kinds.kind(td_logger.__file__) == callsite.TORCHDEVICE
    assert kinds.kind(logging.__file__) == callsite.STDLIB
    assert kinds.kind(pytest.__file__) == callsite.LIBRARY
    assert kinds.kind("<frozen runpy>") == callsite.STDLIB
    assert kinds.kind("<string>") == callsite.USER
    assert kinds.package_of(pytest.__file__) == "pytest"


def test_callsite_find_is_the_calling_line():
    site, line = callsite.find(sys._getframe()), sys._getframe().f_lineno
    assert site == callsite.Site(__file__, line, "test_callsite_find_is_the_calling_line", None)


def test_callsite_of_a_call_torch_makes_is_none_when_direct():
    import torch.nn.functional as F

    frames = []
    torch_frame = F.relu.__code__  # any torch function: its frame is torch's own
    assert callsite.classifier().kind(torch_frame.co_filename) == callsite.TORCH

    def probe():
        frames.append(sys._getframe(1))  # the frame calling probe: torch's, below

    # torch.nn.utils.apply-style call: torch code calls back into this test's function.
    torch.nn.Module().apply(lambda m: probe())
    (frame,) = frames
    assert callsite.classifier().kind(frame.f_code.co_filename) == callsite.USER  # the lambda
    torch_caller = frame.f_back
    assert callsite.classifier().kind(torch_caller.f_code.co_filename) == callsite.TORCH
    assert callsite.find(torch_caller) is None  # torch itself made the call
    assert callsite.find(torch_caller, direct=False).file == __file__  # walked out to the user
