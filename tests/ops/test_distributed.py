"""torch.distributed on emulated cuda devices: NCCL programs run on gloo (issue 8).

Acceptance runs the CUDA-written examples in examples/distributed/ with ``torchrun
--nproc_per_node=2 -m torchdevice run`` (the scripts themselves never name torchdevice): both ranks
finish, end with identical parameters, and match one process trained on the whole global batch.
Every launch uses ``--standalone`` (torchrun picks a free port), runs under a timeout, and is
cleaned up in a ``finally``: its processes, including torchrun's workers (each in a session of
its own), carry a marker in their environment and are killed by pid. The single-rank checks at
the end run in this process on an in-memory store.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import signal
import site
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tests.conftest import REPO_ROOT, TORCHDEVICE_ENV
from torchdevice.core import device as core_device
from torchdevice.core.patch import REGISTRY
from torchdevice.ops import distributed as td_dist

EXAMPLES = REPO_ROOT / "examples" / "distributed"
WORKER = Path(__file__).with_name("distributed_worker.py")
LAUNCH_TIMEOUT_S = 120
MARKER = "TORCHDEVICE_TEST_LAUNCH"

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="this torch build has no torch.distributed")


# ------------------------------------------------------------------------------- launching


def _torchrun() -> list[str]:
    script = Path(sys.executable).with_name("torchrun")
    return [str(script)] if script.exists() else [sys.executable, "-m", "torch.distributed.run"]


def _marked_pids(token: str) -> list[int]:
    """Live processes started by one launch (the marker is inherited by torchrun's workers)."""
    needle = f"{MARKER}={token}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path("/proc", entry, "environ").read_bytes()
            state = Path("/proc", entry, "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # gone, or not ours to read
            continue
        if state != "Z" and needle in environ.split(b"\0"):
            pids.append(int(entry))
    return pids


def _kill_launch(token: str, deadline_s: float = 10.0) -> list[int]:
    """SIGKILL every process of the launch; returns those still alive after ``deadline_s``."""
    end = time.monotonic() + deadline_s
    while pids := _marked_pids(token):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > end:
            return pids
        time.sleep(0.05)
    return []


@dataclasses.dataclass
class Launch:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool
    leftover: list[int]

    def describe(self) -> str:
        return (
            f"exit status {self.returncode} after {self.seconds:.1f}s (timed out: {self.timed_out})\n"
            f"--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-6000:]}"
        )


def launch(
    script: Path, *args: str, nproc: int | None = 2, cli: bool = True, timeout: float = LAUNCH_TIMEOUT_S, **env: str
) -> Launch:
    """``torchrun --standalone --nproc_per_node=N -m torchdevice run SCRIPT ARGS`` (nproc=None:
    ``python -m torchdevice run SCRIPT ARGS``, one process without torchrun; cli=False: the
    script itself, activated by the environment alone)."""
    token = uuid.uuid4().hex
    full_env = {k: v for k, v in os.environ.items() if k not in TORCHDEVICE_ENV}
    # Not inherited from a developer's shell or an enclosing torchrun: they change the launch.
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        full_env.pop(name, None)
    full_env.update({"TORCH_DEVICE_BACKEND": "cpu", MARKER: token, "OMP_NUM_THREADS": "1"}, **env)
    program = ["-m", "torchdevice", "run", str(script), *args] if cli else [str(script), *args]
    if nproc is None:
        command = [sys.executable, *program]
    else:
        command = [*_torchrun(), "--standalone", f"--nproc_per_node={nproc}", *program]
    start = time.monotonic()
    proc = subprocess.Popen(
        command, env=full_env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    timed_out = False
    try:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_launch(token)
            stdout, stderr = proc.communicate()
    finally:
        # Whatever happened (a failed rank, a timeout, this test interrupted), nothing survives.
        leftover = _kill_launch(token)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return Launch(proc.returncode, stdout, stderr, time.monotonic() - start, timed_out, leftover)


def run_ok(script: Path, *args: str, **kwargs) -> Launch:
    result = launch(script, *args, **kwargs)
    assert result.returncode == 0 and not result.timed_out, result.describe()
    assert not result.leftover, f"processes left behind: {result.leftover}"
    return result


def assert_same_across_ranks_and_reference(ranks: list[dict], reference: dict) -> None:
    assert ranks[0].keys() == reference.keys()
    for name, value in ranks[0].items():
        for other in ranks[1:]:
            assert torch.equal(value, other[name]), f"{name} differs between ranks"
        # Same math, another summation order (the all-reduce averages per-rank gradients).
        torch.testing.assert_close(value, reference[name], rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


def train_and_compare(script: Path, tmp_path: Path, *args: str, cli: bool = True) -> list[dict]:
    run_ok(script, "--out", str(tmp_path / "dist"), *args, cli=cli)
    run_ok(script, "--out", str(tmp_path / "single"), *args, nproc=None, cli=cli)
    ranks = [torch.load(tmp_path / "dist" / f"rank{r}.pt") for r in range(2)]
    reference = torch.load(tmp_path / "single" / "rank0.pt")
    params = [r.get("params", r) for r in ranks]
    assert_same_across_ranks_and_reference(params, reference.get("params", reference))
    return ranks


# ------------------------------------------------------------------------------- acceptance


def test_ddp_nccl_trains_like_one_process(tmp_path):
    train_and_compare(EXAMPLES / "ddp_nccl.py", tmp_path)


def _activation_hook_installed() -> bool:
    return any(Path(d, "torchdevice-activate.pth").exists() for d in site.getsitepackages())


@pytest.mark.skipif(
    not _activation_hook_installed(),
    reason="torchdevice-activate.pth is not in site-packages (reinstall torchdevice: pip install -e .)",
)
def test_ddp_nccl_under_plain_torchrun(tmp_path):
    # `TORCH_DEVICE_BACKEND=cpu torchrun --nproc_per_node=2 examples/distributed/ddp_nccl.py`:
    # the environment alone activates torchdevice in every worker.
    train_and_compare(EXAMPLES / "ddp_nccl.py", tmp_path, cli=False)


def test_fsdp2_fully_shard_nccl_trains_like_one_process(tmp_path):
    train_and_compare(EXAMPLES / "fsdp_nccl.py", tmp_path)


def test_fsdp1_wrapper_nccl_trains_like_one_process(tmp_path):
    # The FSDP wrapper frees unsharded parameters with UntypedStorage.resize_(0) and re-seats them
    # with set_: an emptied emulated storage must stay a cuda storage.
    train_and_compare(EXAMPLES / "fsdp_nccl.py", tmp_path, "--wrapper")


def test_fsdp2_meta_init_mixed_precision_and_dcp_checkpoint_equal_the_cpu_program(tmp_path):
    # Meta init + to_empty + reset_parameters (DTensor random ops on cuda), bf16 mixed precision,
    # a DCP save and a load into a fresh sharded model: the emulated cuda run and the same
    # program on CPU tensors (gloo) end bit for bit equal, losses included.
    worker = Path(__file__).with_name("fsdp2_checkpoint_worker.py")
    results = {}
    for device in ("cuda", "cpu"):
        run_ok(worker, "--out", str(tmp_path / device), "--device", device)
        results[device] = [torch.load(tmp_path / device / f"rank{r}.pt") for r in range(2)]
    cuda, cpu = results["cuda"], results["cpu"]
    assert torch.equal(cuda[0]["losses"], cpu[0]["losses"]), (cuda[0]["losses"], cpu[0]["losses"])
    for name, value in cpu[0]["params"].items():
        for rank in range(2):
            assert torch.equal(cuda[rank]["params"][name], value), name


def test_fsdp_and_tensor_parallel_2d_with_sdpa_on_dtensors_trains_like_one_process(tmp_path):
    # scaled_dot_product_attention on DTensors: DTensor needs the attention op a GPU chooses
    # (memory-efficient attention has a sharding rule; the CPU's flash op has none).
    worker = Path(__file__).with_name("fsdp_tp_worker.py")
    run_ok(worker, "--out", str(tmp_path / "dist"), nproc=4)
    run_ok(worker, "--out", str(tmp_path / "single"), nproc=None)
    dist_result, single = (torch.load(tmp_path / d / "result.pt") for d in ("dist", "single"))
    assert dist_result["attention_inputs"] == ["DTensor"] and single["attention_inputs"] == ["Tensor"]
    # Row-wise layers sum partial products across tp ranks: the same maths, another order.
    torch.testing.assert_close(dist_result["losses"], single["losses"], rtol=1e-5, atol=1e-6)
    for name, grad in single["grads"].items():
        torch.testing.assert_close(dist_result["grads"][name], grad, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_sharded_sgd_with_reduce_scatter_and_all_gather_into_tensor(tmp_path):
    ranks = train_and_compare(EXAMPLES / "collectives_nccl.py", tmp_path)
    world = len(ranks)
    for rank, result in enumerate(ranks):
        # One emulated device per local process (LOCAL_WORLD_SIZE), each rank on its own.
        assert result["devices"] == {"current": rank, "count": world}
        c = result["collectives"]
        ones = torch.ones
        assert torch.equal(c["all_reduce_sum"], ones(4) * sum(range(1, world + 1)))
        assert torch.equal(c["all_reduce_avg"], ones(4) * sum(range(1, world + 1)) / world)
        assert torch.equal(c["all_reduce_max_int"], torch.tensor([world - 1, 0]))
        assert torch.equal(c["broadcast"], torch.arange(3.0))
        assert all(torch.equal(g, ones(2) * i) for i, g in enumerate(c["all_gather"]))
        stacked = torch.arange(world, dtype=torch.bfloat16)[:, None].expand(world, 3)
        assert torch.equal(c["all_gather_into_tensor_stacked"], stacked)
        stacked_input = torch.arange(2.0 * world).view(world, 2)
        assert torch.equal(c["reduce_scatter_tensor_stacked"], stacked_input[rank] * sum(range(1, world + 1)))
        assert torch.equal(c["reduce_scatter"], ones(2) * sum(r + rank for r in range(world)))
        assert torch.equal(c["all_to_all_single"], torch.tensor([rank + 100.0 * r for r in range(world)]))
        # ncclReduce: the sum on dst, every other rank's tensor untouched.
        assert torch.equal(c["reduce"], ones(2) * (sum(range(1, world + 1)) if rank == 0 else rank + 1))
        assert torch.equal(c["ring"], ones(3) * ((rank - 1) % world))
        if rank == 1:
            assert torch.equal(c["send_recv"], torch.tensor([7.0, 8.0]))
        assert torch.equal(c["all_reduce_async"], ones(1000) * sum(range(world)))


def test_nccl_extras_on_gloo(tmp_path):
    """Backend spellings, NCCL options, PREMUL_SUM, uneven all_gather, tensors kept alive."""
    result = run_ok(WORKER, str(tmp_path), TORCHDEVICE_LOG_LEVEL="INFO")
    # One INFO line per process, however many groups were asked for as NCCL.
    assert result.stderr.count("runs as 'gloo' on the emulated cuda devices") == 2, result.describe()
    for rank in range(2):
        r = torch.load(tmp_path / f"rank{rank}.pt")
        assert r["backend"] == "gloo" and r["nccl_available"] and r["backend_available"]
        assert r["bound_device"] == f"cuda:{rank}" and r["current_device"] == rank
        for name in ("nccl", "cuda_nccl", "inherited"):
            backend, value = r[f"group_{name}"]
            assert backend == "gloo" and torch.equal(value, torch.full((2,), 3.0)), name
        assert torch.equal(r["premul_all_reduce"], torch.full((3,), 1.5))
        out, inp = r["premul_reduce_scatter"]
        assert torch.equal(inp, torch.arange(4.0) + rank)  # the input is not scaled in place
        assert torch.equal(out, 2 * (2 * torch.arange(4.0) + 1)[2 * rank : 2 * rank + 2])
        assert torch.equal(r["premul_reduce"], torch.full((3,), 2.5 if rank == 0 else 3.0))
        assert [t.tolist() for t in r["uneven_all_gather"]] == [[1.0], [2.0, 2.0]]
        assert [t.tolist() for t in r["uneven_all_gather_async"]] == [[[1.0, 1.0]], [[2.0, 2.0], [2.0, 2.0]]]
        assert r["async_all_reduce"] == [(2.0 * i + 1, 2.0 * i + 1) for i in range(6)]
        if rank == 1:
            assert r["isend_temporary"] == (5.0, 5.0)
        expected = [[10.0 * i] * 2 + [10.0 * i + 1] * 2 for i in range(3)]
        assert [t.tolist() for t in r["coalesced_all_gather"]] == expected
        assert r["functional_all_gather"] == [([1.0], [2.0])] * 3


FAILING_RANK = """\
import os
import time

import torch
import torch.distributed as dist

torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
dist.init_process_group("nccl")
if dist.get_rank() == 1:
    raise RuntimeError("rank 1 fails on purpose")
dist.barrier()  # rank 0 waits for a peer that never comes
time.sleep(600)
"""


def test_a_failing_rank_ends_the_launch_and_leaves_no_process(tmp_path):
    script = tmp_path / "failing_rank.py"
    script.write_text(FAILING_RANK)
    result = launch(script, timeout=90)
    assert not result.timed_out, result.describe()
    assert result.returncode != 0, result.describe()
    assert "rank 1 fails on purpose" in result.stderr, result.describe()
    assert result.leftover == [], f"processes left behind: {result.leftover}"


# ------------------------------------------------------------------------------- this process


@pytest.fixture
def single_rank_group(monkeypatch):
    """A one-rank process group on an in-memory store; destroyed afterwards whatever happens."""

    def init(backend=None, **kwargs):
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, **kwargs)
        return dist.group.WORLD

    monkeypatch.setattr(td_dist, "_announced", False)
    try:
        yield init
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_dtensor_random_ops_on_a_cuda_mesh(single_rank_group):
    # DTensor keeps ranks' random streams in step through CUDA's (seed, offset) generator state;
    # the emulated generator has the CPU's state, which DTensor sees as such a pair.
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, distribute_tensor

    single_rank_group("nccl")
    mesh = init_device_mesh("cuda", (1,))
    torch.manual_seed(0)
    first = distribute_tensor(torch.empty(8, 4, device="cuda"), mesh, [Replicate()])
    second = distribute_tensor(torch.empty(8, 4, device="cuda"), mesh, [Replicate()])
    state = torch.cuda.get_rng_state()
    torch.nn.init.normal_(first)
    assert not torch.equal(torch.cuda.get_rng_state(), state)  # the stream moved on, as on a GPU
    torch.nn.init.normal_(second)
    assert not torch.equal(first.to_local(), second.to_local())
    torch.manual_seed(0)
    again = distribute_tensor(torch.empty(8, 4, device="cuda"), mesh, [Replicate()])
    torch.nn.init.normal_(again)
    assert torch.equal(again.to_local(), first.to_local())  # reproducible from the seed
    dropped = torch.nn.functional.dropout(distribute_tensor(torch.ones(64, device="cuda"), mesh, [Replicate()]), 0.5)
    assert dropped.to_local().is_cuda and 0 < int((dropped.to_local() == 0).sum()) < 64


@pytest.mark.parametrize(
    "asked, created",
    [
        ("nccl", "gloo"),
        ("NCCL", "gloo"),
        (None, "gloo"),  # the accelerator's default: nccl for cuda
        ("undefined", "gloo"),
        ("cuda:nccl", "gloo"),  # gloo's CPU side is what serves the emulated cuda tensors
        ("cpu:gloo,cuda:nccl", "gloo"),
        ("cuda:gloo", "gloo"),
        ("cpu:mpi,cuda:nccl", "cpu:mpi,cuda:gloo"),
        ("gloo", None),
        ("cpu:gloo,cuda:gloo", None),
        ("mpi", None),
        ("fake", None),
    ],
)
def test_backend_choice(asked, created):
    assert td_dist.gloo_backend_for(asked if asked is not None else "undefined") == created


def test_nccl_names_exist():
    assert dist.is_nccl_available() and dist.is_backend_available("nccl")
    assert dist.Backend("NCCL") == dist.Backend.NCCL == "nccl"
    options = dist.ProcessGroupNCCL.Options(is_high_priority_stream=True)
    assert options.is_high_priority_stream and options._timeout == datetime.timedelta(minutes=10)
    options.config.max_ctas = 4  # settable, as on the real NCCLConfig
    assert dist.distributed_c10d.ProcessGroupNCCL is dist.ProcessGroupNCCL
    with pytest.raises(RuntimeError, match="no NCCL library"):
        dist.ProcessGroupNCCL(dist.HashStore(), 0, 1)


def test_nccl_group_is_gloo_with_nccls_timeout_and_one_info_line(single_rank_group, caplog):
    caplog.set_level(logging.DEBUG, logger="torchdevice")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "default timeout for nccl ... not compiled" warning
        group = single_rank_group("nccl", pg_options=dist.ProcessGroupNCCL.Options(), device_id=torch.device("cuda", 0))
    dist.new_group(backend="nccl")
    assert dist.get_backend() == "gloo" and dist.get_backend_config() == "cpu:gloo,cuda:gloo"
    assert group._get_backend(torch.device("cuda")).options._timeout == datetime.timedelta(minutes=10)
    info = [r for r in caplog.records if r.levelno == logging.INFO and "runs as 'gloo'" in r.message]
    assert len(info) == 1 and "nccl" in info[0].message
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# The names most NCCL programs still use; torch 2.13 deprecates them for *_single.
@pytest.mark.filterwarnings("ignore:`torch.distributed.*` is deprecated:FutureWarning")
def test_collectives_keep_emulated_cuda_tensors_in_place(single_rank_group):
    single_rank_group()  # backend=None: the accelerator's default, nccl for cuda
    assert dist.get_backend() == "gloo"
    x = torch.arange(4.0, device="cuda")
    ptr = x.data_ptr()
    dist.all_reduce(x, op=dist._make_nccl_premul_sum(3.0))
    assert x.device == torch.device("cuda", 0) and x.data_ptr() == ptr and x.tolist() == [0.0, 3.0, 6.0, 9.0]
    out = torch.empty(1, 4, device="cuda", dtype=torch.float64)
    dist.all_gather_into_tensor(out, torch.ones(4, device="cuda", dtype=torch.float64))
    assert out.is_cuda and out.tolist() == [[1.0] * 4]
    scattered = torch.empty(2, device="cuda")
    dist.reduce_scatter_tensor(scattered, torch.arange(2.0, device="cuda")[None], op=dist.ReduceOp.AVG)
    assert scattered.is_cuda and scattered.tolist() == [0.0, 1.0]
    work = dist.all_to_all_single(torch.empty(3, device="cuda"), torch.ones(3, device="cuda"), async_op=True)
    work.wait()
    assert dist.barrier(device_ids=[0]) is None


def test_ddp_times_its_iterations_with_the_host_clock(single_rank_group):
    # DDP's reducer times forward, backward and communication with the timer registered for the
    # device type: the CUDA build's records cudaEvents (no driver here), the CPU build has none
    # for cuda. The native core registers a host-clock timer, which the synchronous device makes
    # exact, so DDP's sampled runtime statistics are real measurements.
    single_rank_group("nccl")
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 2).to("cuda"), device_ids=[0])
    for _ in range(3):
        model(torch.randn(3, 4, device="cuda")).sum().backward()
    data = model._get_ddp_logging_data()
    assert data["avg_forward_compute_time"] > 0 and data["avg_backward_compute_time"] > 0
    assert data["forward_compute_time_start"] > 0


def test_patches_are_registered_under_ops_distributed():
    # Functional collectives are patched when first imported (DTensor, FSDP2 and TP import them).
    import torch.distributed._functional_collectives  # noqa: F401

    names = {p.qualname for p in REGISTRY if p.owner == td_dist.OWNER}
    assert {
        "torch.distributed.distributed_c10d._new_process_group_helper",
        "torch.distributed.distributed_c10d.all_reduce",
        "torch.distributed.all_reduce",
        "torch.distributed._functional_collectives._maybe_wrap_tensor",
    } <= names
    # DDP's timing needs no patch: the native core registers the device types' timer.
    assert "Logger.set_runtime_stats_and_log" not in names


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, core_device.DEFAULT_DEVICE_COUNT),
        ({"LOCAL_WORLD_SIZE": "4"}, 4),  # torchrun --nproc_per_node=4: one device per process
        ({"LOCAL_WORLD_SIZE": "4", "TORCHDEVICE_DEVICE_COUNT": "2"}, 2),  # the explicit count wins
        ({"LOCAL_WORLD_SIZE": "4", "CUDA_VISIBLE_DEVICES": "3"}, 1),  # a launcher pinning one GPU each
        ({"LOCAL_WORLD_SIZE": "1000"}, core_device.MAX_DEVICE_COUNT),
        ({"LOCAL_WORLD_SIZE": "many"}, core_device.DEFAULT_DEVICE_COUNT),  # not ours to reject
        ({"LOCAL_WORLD_SIZE": "0"}, core_device.DEFAULT_DEVICE_COUNT),
    ],
)
def test_device_count_follows_local_world_size(monkeypatch, env, expected):
    for name in ("LOCAL_WORLD_SIZE", "TORCHDEVICE_DEVICE_COUNT", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert core_device.emulated_device_count() == expected
