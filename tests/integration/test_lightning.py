"""Lightning: Trainer(accelerator="gpu", devices=1) trains on the emulated GPU."""

from __future__ import annotations

import pytest
import torch

L = pytest.importorskip(
    "lightning", reason="lightning is not installed: pip install -c constraints-integration.txt -r requirements-integration.txt"
)


class _Regressor(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(8, 1)
        self.batch_devices: set[str] = set()
        self.autocast_dtypes: set[torch.dtype] = set()
        self.weight_devices: set[str] = set()

    def training_step(self, batch, batch_idx):
        features, targets = batch
        self.batch_devices.add(str(features.device))
        self.weight_devices.add(str(self.layer.weight.device))
        prediction = self.layer(features)
        self.autocast_dtypes.add(prediction.dtype)
        return torch.nn.functional.mse_loss(prediction.float(), targets)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_on_gpu(tmp_path):
    dataset = torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randn(64, 1))
    loader = torch.utils.data.DataLoader(dataset, batch_size=16)
    module = _Regressor()
    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        max_steps=6,
        precision="bf16-mixed",
        default_root_dir=str(tmp_path),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader)
    assert trainer.global_step == 6
    assert type(trainer.accelerator).__name__ == "CUDAAccelerator"
    assert trainer.strategy.root_device == torch.device("cuda", 0)
    assert module.batch_devices == {"cuda:0"}
    assert module.autocast_dtypes == {torch.bfloat16}
    assert module.weight_devices == {"cuda:0"}  # (teardown moves the module back to the CPU, as on a GPU)


def test_rng_states_saved_on_a_gpu_resume(tmp_path):
    # Lightning's own state collection and restore, around a checkpoint file whose cuda state was
    # written on a GPU: CUDA's 16 bytes (uint64 seed, int64 Philox offset).
    from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states

    states = _collect_rng_states()
    assert [s.numel() for s in states["torch.cuda"]] == [16] * torch.cuda.device_count()
    states["torch.cuda"] = [torch.tensor([4242, 1024], dtype=torch.int64).view(torch.uint8)]
    torch.save({"rng_states": states}, tmp_path / "resume.ckpt")
    draws = []
    for _ in range(2):
        _set_rng_states(torch.load(tmp_path / "resume.ckpt", weights_only=False)["rng_states"])
        assert torch.cuda.initial_seed() == 4242 and torch.cuda._get_rng_state_offset() == 1024
        draws.append(torch.nn.functional.dropout(torch.ones(32, device="cuda"), 0.5).cpu())
    assert torch.equal(draws[0], draws[1])  # a resumed run draws the same numbers each time
