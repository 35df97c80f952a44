"""torch.cuda random number generation: seeding, states, generators and isolation from the CPU.

On a GPU, cuda random ops draw from the device's CUDA generator only: seeding or drawing on the
CPU never changes a cuda draw and vice versa, and the same cuda seed gives the same cuda draws.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

# Random ops on cuda tensors, with and without a generator argument in the op's schema.
RANDOM_OPS = {
    "normal_": lambda: torch.empty(64, device="cuda").normal_(),
    "uniform_": lambda: torch.empty(64, device="cuda").uniform_(),
    "exponential_": lambda: torch.empty(64, device="cuda").exponential_(),
    "cauchy_": lambda: torch.empty(64, device="cuda").cauchy_(),
    "log_normal_": lambda: torch.empty(64, device="cuda").log_normal_(),
    "geometric_": lambda: torch.empty(64, device="cuda").geometric_(0.5),
    "random_": lambda: torch.empty(64, device="cuda").random_(0, 1000),
    "normal(size)": lambda: torch.normal(0.0, 1.0, (64,), device="cuda"),
    "normal(tensor)": lambda: torch.normal(torch.zeros(64, device="cuda"), 1.0),
    "bernoulli": lambda: torch.bernoulli(torch.full((64,), 0.5, device="cuda")),
    "bernoulli(p)": lambda: torch.empty(64, device="cuda").bernoulli_(0.5),
    "multinomial": lambda: torch.multinomial(torch.ones(64, device="cuda"), 16),
    "poisson": lambda: torch.poisson(torch.full((64,), 3.0, device="cuda")),
    "binomial": lambda: torch.binomial(torch.full((64,), 10.0, device="cuda"), torch.full((64,), 0.5, device="cuda")),
    "_standard_gamma": lambda: torch._standard_gamma(torch.ones(64, device="cuda")),
    "rrelu": lambda: F.rrelu(-torch.ones(64, device="cuda"), training=True),
    "dropout2d (bernoulli_)": lambda: F.dropout2d(torch.ones(1, 64, 2, 2, device="cuda"), 0.5, training=True),
    "alpha_dropout (bernoulli_)": lambda: F.alpha_dropout(torch.ones(64, device="cuda"), 0.5, training=True),
    "nn.init.kaiming_uniform_": lambda: torch.nn.init.kaiming_uniform_(torch.empty(8, 8, device="cuda")),
    # No generator argument: the default overloads of these factories, and native_dropout.
    "randn": lambda: torch.randn(64, device="cuda"),
    "rand": lambda: torch.rand(64, device="cuda"),
    "randint": lambda: torch.randint(0, 1000, (64,), device="cuda"),
    "randperm": lambda: torch.randperm(64, device="cuda"),
    "randn_like": lambda: torch.randn_like(torch.empty(64, device="cuda")),
    "rand_like": lambda: torch.rand_like(torch.empty(64, device="cuda")),
    "randint_like": lambda: torch.randint_like(torch.empty(64, device="cuda"), 1000),
    "dropout (native_dropout)": lambda: F.dropout(torch.ones(64, device="cuda"), 0.5, training=True),
}

@pytest.mark.parametrize("name", list(RANDOM_OPS))
def test_cuda_draws_are_isolated_from_the_cpu_generator(name):
    op = RANDOM_OPS[name]

    def draw(cpu_seed: int, cuda_seed: int) -> torch.Tensor:
        torch.random.default_generator.manual_seed(cpu_seed)
        torch.cuda.manual_seed(cuda_seed)
        return op().cpu()

    first = draw(cpu_seed=1, cuda_seed=7)
    assert torch.equal(first, draw(cpu_seed=1, cuda_seed=7)), "same seeds must reproduce the draw"
    assert torch.equal(first, draw(cpu_seed=12345, cuda_seed=7)), "re-seeding the CPU changed a cuda draw"
    # And the other way round: a cuda draw leaves the CPU generator's state alone.
    cpu_state = torch.random.get_rng_state()
    op()
    assert torch.equal(cpu_state, torch.random.get_rng_state()), "a cuda draw advanced the CPU generator"


def test_cpu_draws_are_isolated_from_cuda_seeding():
    torch.manual_seed(3)
    a = torch.randn(16)
    torch.manual_seed(3)
    torch.cuda.manual_seed(99)
    torch.empty(16, device="cuda").normal_()
    assert torch.equal(a, torch.randn(16))


def test_manual_seed_and_initial_seed():
    torch.cuda.manual_seed(1234)
    assert torch.cuda.initial_seed() == 1234
    torch.cuda.manual_seed_all(77)
    assert [g.initial_seed() for g in torch.cuda.default_generators] == [77] * torch.cuda.device_count()
    torch.manual_seed(42)  # torch.manual_seed seeds every cuda device too
    assert torch.cuda.initial_seed() == 42
    seed = torch.seed()
    assert torch.cuda.initial_seed() == seed
    torch.cuda.seed()  # a fresh non-deterministic seed
    assert isinstance(torch.cuda.initial_seed(), int)
    torch.cuda.seed_all()  # one new seed, the same on every device (torch.cuda.random.seed_all)
    assert len({g.initial_seed() for g in torch.cuda.default_generators}) == 1


def test_default_generators_are_cuda_generators():
    gens = torch.cuda.default_generators
    assert len(gens) == torch.cuda.device_count()
    assert all(isinstance(g, torch.Generator) for g in gens)
    assert [g.device for g in gens] == [torch.device("cuda", i) for i in range(torch.cuda.device_count())]


def test_get_and_set_rng_state_replay_draws():
    torch.cuda.manual_seed(5)
    state = torch.cuda.get_rng_state()
    assert state.dtype == torch.uint8 and state.device.type == "cpu"  # CUDA returns a CPU ByteTensor
    a = torch.empty(32, device="cuda").normal_()
    torch.cuda.set_rng_state(state)
    assert torch.equal(a, torch.empty(32, device="cuda").normal_())
    states = torch.cuda.get_rng_state_all()
    b = torch.empty(32, device="cuda").uniform_()
    torch.cuda.set_rng_state_all(states)
    assert torch.equal(b, torch.empty(32, device="cuda").uniform_())
    assert torch.equal(torch.cuda.get_rng_state("cuda:0"), torch.cuda.get_rng_state(0))


def test_cuda_generator_objects():
    g = torch.Generator(device="cuda")
    assert g.device == torch.device("cuda", 0)
    assert g.initial_seed() == 67280421310721  # c10's default_rng_seed_val, as for a new CUDA generator
    g.manual_seed(11)
    a = torch.randn(8, device="cuda", generator=g)
    g.manual_seed(11)
    assert torch.equal(a, torch.randn(8, device="cuda", generator=g))
    assert a.device.type == "cuda"
    with pytest.raises(RuntimeError, match="Expected a 'cpu' device type for generator but found 'cuda'"):
        torch.randn(2, generator=g)
    state = g.get_state()
    x = torch.rand(4, device="cuda", generator=g)
    g.set_state(state)
    assert torch.equal(x, torch.rand(4, device="cuda", generator=g))


def test_cpu_generator_on_a_cuda_op_raises_like_cuda():
    with pytest.raises(RuntimeError, match="Expected a 'cuda' device type for generator but found 'cpu'"):
        torch.randn(2, device="cuda", generator=torch.Generator())


def test_fork_rng_restores_the_cuda_state():
    torch.cuda.manual_seed(9)
    expected = torch.empty(8, device="cuda").normal_()
    torch.cuda.manual_seed(9)
    with torch.random.fork_rng(device_type="cuda"):
        torch.empty(100, device="cuda").normal_()
    assert torch.equal(expected, torch.empty(8, device="cuda").normal_())


def test_manual_seed_all_as_a_scripts_first_cuda_call(run_snippet):
    out = run_snippet(
        """
        torch.cuda.manual_seed_all(321)
        print(torch.cuda.initial_seed(), [g.initial_seed() for g in torch.cuda.default_generators])
        """,
        TORCHDEVICE_DEVICE_COUNT="2",
    )
    assert out.strip() == "321 [321, 321]"


def test_per_device_states(run_snippet):
    out = run_snippet(
        """
        torch.cuda.manual_seed_all(1)
        states = torch.cuda.get_rng_state_all()
        a0 = torch.empty(4, device="cuda:0").normal_().cpu()
        a1 = torch.empty(4, device="cuda:1").normal_().cpu()
        print(len(states), torch.equal(a0, a1))
        torch.empty(4, device="cuda:1").normal_()  # advances only device 1
        torch.cuda.manual_seed(1)  # current device only
        print(torch.equal(torch.empty(4, device="cuda:0").normal_().cpu(), a0))
        with torch.random.fork_rng(device_type="cuda", devices=[1]):
            torch.empty(4, device="cuda:1").normal_()
        torch.cuda.set_rng_state(states[1], device=1)
        print(torch.equal(torch.empty(4, device="cuda:1").normal_().cpu(), a1))
        print(torch.Generator("cuda:1").device)
        """,
        TORCHDEVICE_DEVICE_COUNT="2",
    )
    # Same seed on both devices gives the same stream on each, as CUDA's Philox does.
    assert out.splitlines() == ["2 True", "True", "True", "cuda:1"]


def _philox_state(seed: int, offset: int) -> torch.Tensor:
    """A CUDA generator state as a GPU saves it: uint64 seed, int64 Philox offset."""
    return torch.tensor([seed, offset], dtype=torch.int64).view(torch.uint8)


def test_rng_state_has_cudas_layout():
    torch.cuda.manual_seed(1234)
    state = torch.cuda.get_rng_state()
    assert state.dtype == torch.uint8 and state.numel() == 16
    assert torch.equal(state, _philox_state(1234, 0))
    assert torch.equal(torch.Generator("cuda").get_state(), _philox_state(67280421310721, 0))


def test_random_ops_advance_the_offset_as_cuda_counts():
    torch.cuda.manual_seed(0)
    assert torch.cuda._get_rng_state_offset() == 0
    torch.randn(10, device="cuda")  # ten numbers, in CUDA's multiples of 4
    assert torch.cuda._get_rng_state_offset() == 12
    F.dropout(torch.ones(8, device="cuda"), 0.5, training=True)  # draws through the CPU default generator
    assert torch.cuda._get_rng_state_offset() > 12
    torch.cuda._set_rng_state_offset(16)
    assert torch.cuda._get_rng_state_offset() == 16
    assert torch.equal(torch.cuda.get_rng_state(), _philox_state(0, 16))
    with pytest.raises(RuntimeError, match="offset must be a multiple of 4"):
        torch.cuda._set_rng_state_offset(6)


def test_seeded_cuda_stream_is_the_cpus_stream_for_that_seed():
    torch.cuda.manual_seed(5)
    on_cuda = [torch.randn(3, device="cuda").cpu(), torch.rand(70, device="cuda").cpu(), torch.randperm(9, device="cuda").cpu()]
    g = torch.Generator().manual_seed(5)
    on_cpu = [torch.randn(3, generator=g), torch.rand(70, generator=g), torch.randperm(9, generator=g)]
    assert all(torch.equal(a, b) for a, b in zip(on_cuda, on_cpu))


def test_a_state_saved_on_a_gpu_restores_and_replays():
    saved = _philox_state(2024, 4096)
    torch.cuda.set_rng_state(saved)
    assert torch.equal(torch.cuda.get_rng_state(), saved) and torch.cuda.initial_seed() == 2024
    first = torch.randn(16, device="cuda")
    torch.cuda.set_rng_state(saved)
    assert torch.equal(first, torch.randn(16, device="cuda"))
    torch.cuda.set_rng_state(_philox_state(2024, 4100))  # another offset, other numbers
    assert not torch.equal(first, torch.randn(16, device="cuda"))
    torch.cuda.set_rng_state(saved[:8].clone())  # CUDA also takes the seed alone (offset 0)
    assert torch.cuda._get_rng_state_offset() == 0 and torch.cuda.initial_seed() == 2024


def test_every_handed_out_state_replays_exactly():
    # torch.utils.checkpoint keeps one state per region and restores them in reverse order, after
    # many more draws; torch.cuda.set_rng_state restores from a clone of each.
    torch.cuda.manual_seed(3)
    states, draws = [], []
    for n in (5, 1, 300, 7):
        states.append(torch.cuda.get_rng_state())
        draws.append(torch.empty(n, device="cuda").normal_())
    for state, expected in reversed(list(zip(states, draws))):
        torch.cuda.set_rng_state(state.clone())
        assert torch.equal(torch.empty(expected.numel(), device="cuda").normal_(), expected)


def test_checkpointed_dropout_recomputes_the_same_mask():
    torch.cuda.manual_seed(0)
    x = torch.randn(64, 32, device="cuda", requires_grad=True)
    layer = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Dropout(0.5), torch.nn.Linear(32, 32),
                                torch.nn.Dropout(0.5)).cuda()
    torch.cuda.manual_seed(1)
    torch.utils.checkpoint.checkpoint(layer, x, use_reentrant=False).sum().backward()
    checkpointed = x.grad.clone()
    x.grad = None
    torch.cuda.manual_seed(1)
    layer(x).sum().backward()
    assert torch.equal(checkpointed, x.grad)


def test_rng_state_errors_are_cudas():
    with pytest.raises(RuntimeError, match="RNG state is wrong size"):
        torch.cuda.set_rng_state(torch.zeros(5, dtype=torch.uint8))
    with pytest.raises(RuntimeError, match="RNG state is wrong size"):
        torch.cuda.set_rng_state(torch.random.get_rng_state())  # a CPU generator's state
    with pytest.raises(TypeError, match="RNG state must be a torch.ByteTensor"):
        torch.cuda.default_generators[0].set_state(torch.zeros(16))


def test_graphsafe_states_are_shared():
    owner = torch.Generator("cuda").manual_seed(8)
    follower = torch.Generator("cuda")
    follower.graphsafe_set_state(owner.graphsafe_get_state())
    torch.randn(4, device="cuda", generator=follower)
    assert owner.get_offset() == 4  # one state: draws through either advance both
    clone = owner.clone_state()
    torch.randn(4, device="cuda", generator=owner)
    assert clone.get_offset() == 4 and owner.get_offset() == 8
