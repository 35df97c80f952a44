"""torch.cuda shims (torchdevice.shims.cuda) in a process that emulates cuda."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("make", [lambda: torch.ones(3, device="mps"), lambda: torch.randn(2, 2, device="mps:0")])
def test_an_op_on_mps_names_the_variable_that_emulates_mps(make):
    """Not the dispatcher's forty lines of "Could not run 'aten::empty.memory_format' ... 'MPS' backend"."""
    with pytest.raises(NotImplementedError) as info:
        make()
    assert str(info.value) == (
        "aten.empty.memory_format on 'mps': this process emulates cuda, not mps, and PyTorch has one accelerator "
        "type per process; run MPS-written code with TORCHDEVICE_EMULATE=mps"
    )
    assert (torch.ones(3, device="cuda") + 1).sum().item() == 6  # other devices never reach it


@pytest.mark.parametrize("move", [lambda: torch.ones(3).to("mps"), lambda: torch.nn.Linear(2, 2).to("mps"),
                                  lambda: torch.zeros(2, device="cuda").to("mps:0")])
def test_moving_to_mps_names_the_variable_that_emulates_mps(move):
    """Not c10's "PyTorch is not linked with support for mps devices", which says nothing of what to do."""
    with pytest.raises(NotImplementedError, match="run MPS-written code with TORCHDEVICE_EMULATE=mps"):
        move()
    assert torch.ones(2).to("cuda").device == torch.device("cuda:0")
