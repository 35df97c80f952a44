"""Checkpoints holding cuda tensors: torch.save/torch.load with every kind of map_location.

A checkpoint saved on a GPU machine records each storage's location as ``cuda:N``; loading it
without map_location restores it on that device, and ``torch.load`` maps it anywhere else on
request (torch/serialization.py). The same bytes must load here.
"""

from __future__ import annotations

import collections
import io
import pickle
import pickletools
import struct
import zipfile

import pytest
import torch
import torch.serialization


def _save_bytes(obj, **kwargs) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()


def _load(data: bytes, **kwargs):
    return torch.load(io.BytesIO(data), **kwargs)


def _storage_locations(data: bytes) -> set[str]:
    """The location strings recorded in a zip checkpoint's pickle (what a GPU save writes)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        pickle_name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
        payload = archive.read(pickle_name)
    found = set()
    for opcode, arg, _ in pickletools.genops(payload):
        if opcode.name in ("BINUNICODE", "SHORT_BINUNICODE", "UNICODE") and (arg == "cpu" or arg.startswith("cuda")):
            found.add(arg)
    return found


@pytest.fixture
def model_state():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8)).cuda()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_saved_storages_are_tagged_cuda0(model_state):
    assert _storage_locations(_save_bytes(model_state)) == {"cuda:0"}


@pytest.mark.parametrize(
    "map_location, expected",
    [
        (None, "cuda:0"),
        ("cuda", "cuda:0"),
        ("cuda:0", "cuda:0"),
        (torch.device("cuda", 0), "cuda:0"),
        ("cpu", "cpu"),
        ({"cuda:0": "cpu"}, "cpu"),
        ({"cuda:0": "cuda:0"}, "cuda:0"),
        (lambda storage, location: storage, "cpu"),  # torch passes the storage as read, on the CPU
        (lambda storage, location: storage.cuda(), "cuda:0"),
    ],
    ids=["none", "cuda", "cuda:0", "device", "cpu", "dict-cpu", "dict-cuda", "callable-identity", "callable-cuda"],
)
def test_load_with_map_location(model_state, map_location, expected):
    loaded = _load(_save_bytes(model_state), map_location=map_location)
    assert set(loaded) == set(model_state)
    for key, value in loaded.items():
        assert str(value.device) == expected
        assert torch.equal(value.cpu(), model_state[key].cpu())


def test_legacy_format_loads_too(model_state):
    data = _save_bytes(model_state, _use_new_zipfile_serialization=False)
    loaded = _load(data)
    assert all(v.device == torch.device("cuda", 0) for v in loaded.values())
    assert torch.equal(loaded["0.weight"].cpu(), model_state["0.weight"].cpu())


def test_loaded_tensors_are_counted_by_the_allocator(model_state, cuda_memory_baseline):
    data = _save_bytes({"w": torch.zeros(1024, device="cuda")})
    loaded = _load(data)
    assert torch.cuda.memory_allocated() == cuda_memory_baseline + 4096
    del loaded
    assert torch.cuda.memory_allocated() == cuda_memory_baseline


def _gpu_checkpoint(obj, monkeypatch, **kwargs) -> bytes:
    """Bytes as a GPU machine writes them, made without any cuda tensor: CPU storages whose
    recorded location is ``cuda:0`` (torch.serialization.location_tag is what writes it)."""

    def tag_as_gpu(storage):
        return "cuda:0"

    with monkeypatch.context() as m:
        m.setattr(torch.serialization, "location_tag", tag_as_gpu)
        return _save_bytes(obj, **kwargs)


@pytest.mark.parametrize("zipfile_format", [True, False], ids=["zip", "legacy"])
def test_a_checkpoint_written_on_a_gpu_loads(monkeypatch, zipfile_format):
    weights = {"weight": torch.arange(6.0).reshape(2, 3), "steps": torch.tensor(7)}
    data = _gpu_checkpoint(weights, monkeypatch, _use_new_zipfile_serialization=zipfile_format)
    if zipfile_format:
        assert _storage_locations(data) == {"cuda:0"}
    loaded = _load(data)
    assert loaded["weight"].device == torch.device("cuda", 0)
    assert torch.equal(loaded["weight"].cpu(), weights["weight"])
    assert int(loaded["steps"]) == 7
    assert _load(data, map_location="cpu")["weight"].device.type == "cpu"


class _StorageRef:
    """Stands for storage '0' in the hand-written pickle below."""


class _TensorRecord:
    def __init__(self, size: tuple[int, ...]):
        self.storage = _StorageRef()
        self.size = size

    def __reduce__(self):
        # What torch.save writes for a tensor: _rebuild_tensor_v2(storage, offset, size, stride, ...).
        stride = (1,) * len(self.size)
        return (torch._utils._rebuild_tensor_v2, (self.storage, 0, self.size, stride, False, collections.OrderedDict()))


class _GpuCheckpointPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            # (typename, storage type, key, location, numel): the record of a float storage on cuda:0.
            return ("storage", torch.FloatStorage, "0", "cuda:0", 4)
        return None


def test_a_hand_built_gpu_checkpoint_loads():
    # torch.save's zip layout, written without torch.save: data.pkl, the raw storage bytes, version.
    payload = io.BytesIO()
    _GpuCheckpointPickler(payload, protocol=2).dump({"w": _TensorRecord((4,))})
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", payload.getvalue())
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/data/0", struct.pack("<4f", 1.0, 2.0, 3.0, 4.0))
        z.writestr("archive/version", "3\n")
    loaded = _load(archive.getvalue())  # weights_only=True: torch's safe unpickler accepts it
    assert loaded["w"].device == torch.device("cuda", 0)
    assert loaded["w"].cpu().tolist() == [1.0, 2.0, 3.0, 4.0]
    assert _load(archive.getvalue(), map_location="cpu")["w"].device.type == "cpu"


def test_mmap_load_of_a_cuda_checkpoint(tmp_path, model_state):
    path = tmp_path / "ckpt.pt"
    torch.save(model_state, path)
    loaded = torch.load(path, mmap=True)
    assert all(v.device.type == "cuda" for v in loaded.values())
    assert torch.equal(loaded["0.bias"].cpu(), model_state["0.bias"].cpu())


def test_optimizer_state_round_trip(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    data = torch.randn(8, 4, device="cuda")
    for _ in range(3):
        optimizer.zero_grad()
        model(data).pow(2).mean().backward()
        optimizer.step()
    path = tmp_path / "train.pt"
    torch.save({"model": model.state_dict(), "optim": optimizer.state_dict()}, path)

    restored_model = torch.nn.Linear(4, 4).cuda()
    restored_optim = torch.optim.AdamW(restored_model.parameters(), lr=0.01)
    checkpoint = torch.load(path)
    restored_model.load_state_dict(checkpoint["model"])
    restored_optim.load_state_dict(checkpoint["optim"])
    assert restored_optim.state_dict()["state"][0]["exp_avg"].device.type == "cuda"
    for m, o in ((model, optimizer), (restored_model, restored_optim)):
        o.zero_grad()
        m(data).pow(2).mean().backward()
        o.step()
    assert torch.equal(model.weight.detach().cpu(), restored_model.weight.detach().cpu())


def test_untyped_storage_on_cuda(cuda_memory_baseline):
    storage = torch.UntypedStorage(64, device="cuda")
    assert storage.device == torch.device("cuda", 0) and storage.nbytes() == 64
    assert torch.cuda.memory_allocated() == cuda_memory_baseline + 64
    assert torch.UntypedStorage(device="cuda").nbytes() == 0
    filled = torch.UntypedStorage([1, 2, 3], device="cuda:0")
    assert filled.tolist() == [1, 2, 3] and filled.device.type == "cuda"
    assert torch.UntypedStorage(8).device.type == "cpu"  # other devices are torch's business
    host = torch.UntypedStorage([5, 6])
    assert host.cuda().device.type == "cuda" and host.to(device="cuda").tolist() == [5, 6]
    assert filled.cpu().tolist() == [1, 2, 3]
    with pytest.warns(UserWarning, match="TypedStorage is deprecated"):  # torch's own warning
        typed = torch.TypedStorage(4, dtype=torch.float32, device="cuda")
        legacy = torch.cuda.FloatStorage(2)
    assert typed.device.type == "cuda" and typed.size() == 4
    assert legacy.device.type == "cuda"
    del storage


def test_cuda_storage_resize():
    storage = torch.zeros(4, device="cuda").untyped_storage()
    storage.resize_(0)
    assert storage.nbytes() == 0
    storage.resize_(32)
    assert storage.nbytes() == 32


def test_two_devices(run_snippet, tmp_path):
    path = tmp_path / "two.pt"
    out = run_snippet(
        f"""
        torch.save({{"a": torch.ones(2, device="cuda:1"), "b": torch.ones(2, device="cuda:0")}}, {str(path)!r})
        d = torch.load({str(path)!r})
        print(d["a"].device, d["b"].device)
        d = torch.load({str(path)!r}, map_location="cuda:1")
        print(d["a"].device, d["b"].device)
        d = torch.load({str(path)!r}, map_location={{"cuda:1": "cuda:0", "cuda:0": "cuda:1"}})
        print(d["a"].device, d["b"].device)
        print(torch.UntypedStorage(4, device="cuda:1").device)
        """,
        TORCHDEVICE_DEVICE_COUNT="2",
    )
    assert out.splitlines() == ["cuda:1 cuda:0", "cuda:1 cuda:1", "cuda:0 cuda:1", "cuda:1"]
    # Loading device 1's storages where only one device exists fails as it does on a 1-GPU machine.
    with pytest.raises(RuntimeError, match=r"Attempting to deserialize object on CUDA device 1 but torch\.cuda\.device_count\(\) is 1"):
        torch.load(path)
    assert torch.load(path, map_location="cuda")["a"].device == torch.device("cuda", 0)
