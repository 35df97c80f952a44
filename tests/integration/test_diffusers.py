"""diffusers: a tiny UNet and DDPM scheduler run on cuda, seeded by torch.Generator('cuda')."""

from __future__ import annotations

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip(
    "diffusers", reason="diffusers is not installed: pip install -c constraints-integration.txt -r requirements-integration.txt"
)


def _tiny_pipeline():
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=10)
    pipeline = diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).to("cuda")
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_cuda_generator_makes_sampling_reproducible():
    pipeline = _tiny_pipeline()
    assert pipeline.device == torch.device("cuda", 0)

    def sample(seed):
        generator = torch.Generator("cuda").manual_seed(seed)
        return pipeline(batch_size=1, generator=generator, num_inference_steps=3, output_type="np").images

    first = sample(0)
    assert first.shape == (1, 8, 8, 3)
    np.testing.assert_array_equal(first, sample(0))
    assert not np.array_equal(first, sample(1))


def test_randn_tensor_with_a_cuda_generator():
    from diffusers.utils.torch_utils import randn_tensor

    generator = torch.Generator("cuda").manual_seed(3)
    latents = randn_tensor((2, 4), generator=generator, device=torch.device("cuda"))
    assert latents.device.type == "cuda"
    generator.manual_seed(3)
    assert torch.equal(latents, randn_tensor((2, 4), generator=generator, device=torch.device("cuda")))


def test_denoising_training_step_on_cuda():
    pipeline = _tiny_pipeline()
    unet, scheduler = pipeline.unet, pipeline.scheduler
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    images = torch.randn(2, 3, 8, 8, device="cuda")
    noise = torch.randn(2, 3, 8, 8, device="cuda")
    timesteps = torch.randint(0, 10, (2,), device="cuda")
    noisy = scheduler.add_noise(images, noise, timesteps)
    loss = torch.nn.functional.mse_loss(unet(noisy, timesteps).sample, noise)
    loss.backward()
    optimizer.step()
    assert unet.conv_in.weight.grad.device.type == "cuda"
    assert torch.isfinite(loss).item()
