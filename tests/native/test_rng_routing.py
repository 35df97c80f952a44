"""Random ops on emulated cuda draw from the cuda generators, never from the CPU's — including
ops without a generator argument (native_dropout) and composites that call random ops with
generator=None (randn_like)."""

import pytest
import torch
import torch.nn.functional as F

DRAWS = {
    "dropout (no generator argument)": lambda x: F.dropout(x, 0.5),
    "randn_like (composite)": lambda x: torch.randn_like(x),
    "randn": lambda x: torch.randn(x.shape, device=x.device),
    "bernoulli": lambda x: torch.bernoulli(x * 0.5),
    "multinomial": lambda x: torch.multinomial(x.abs() + 1, 10, replacement=True),
    "randperm": lambda x: torch.randperm(50, device=x.device),
    "normal_": lambda x: torch.empty_like(x).normal_(),
    "rrelu": lambda x: F.rrelu(x - 0.5, training=True),
}


@pytest.mark.parametrize("draw", DRAWS.values(), ids=DRAWS.keys())
def test_cuda_draws_ignore_cpu_seed_and_are_reproducible(draw):
    x = torch.ones(64, device="cuda")
    torch.cuda.manual_seed(7)
    torch.default_generator.manual_seed(1)
    first = draw(x)
    torch.cuda.manual_seed(7)
    torch.default_generator.manual_seed(2)  # a different CPU seed must not matter
    second = draw(x)
    assert first.is_cuda
    assert torch.equal(first.cpu(), second.cpu())


@pytest.mark.parametrize("draw", DRAWS.values(), ids=DRAWS.keys())
def test_cpu_stream_is_untouched_by_cuda_draws(draw):
    x = torch.ones(64, device="cuda")
    torch.default_generator.manual_seed(3)
    expected = torch.rand(8)
    torch.default_generator.manual_seed(3)
    draw(x)
    assert torch.equal(torch.rand(8), expected)


def test_explicit_cuda_generator_is_used():
    g1 = torch.Generator(device="cuda").manual_seed(11)
    g2 = torch.Generator(device="cuda").manual_seed(11)
    a = torch.randn(16, device="cuda", generator=g1)
    b = torch.randn(16, device="cuda", generator=g2)
    assert torch.equal(a.cpu(), b.cpu())
    assert g1.device == torch.device("cuda", 0)


def test_same_seed_gives_cpu_values():
    # The emulated generator is a CPU Mersenne Twister seeded the same way: same seed, same draws.
    torch.cuda.manual_seed(5)
    torch.default_generator.manual_seed(5)
    assert torch.equal(torch.randn(10, device="cuda").cpu(), torch.randn(10))


def test_cpu_generator_on_cuda_tensor_raises_like_cuda():
    with pytest.raises(RuntimeError, match="Expected a 'cuda' device type for generator"):
        torch.randn(3, device="cuda", generator=torch.Generator())
