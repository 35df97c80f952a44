"""HuggingFace transformers: a tiny model built from a config trains and generates on cuda."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed: pip install -c constraints-integration.txt -r requirements-integration.txt"
)


def _tiny_llama():
    config = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config)


def test_train_steps_and_generate_on_cuda(cuda_peak):
    model = _tiny_llama().to("cuda")
    assert model.device == torch.device("cuda", 0)
    assert all(p.device.type == "cuda" for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    input_ids = torch.randint(3, 128, (4, 16), device="cuda")
    losses = []
    for _ in range(6):
        out = model(input_ids=input_ids, labels=input_ids)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(out.loss.item())
    assert out.logits.device.type == "cuda"
    assert losses[-1] < losses[0]  # it really learned something
    assert cuda_peak() > sum(p.numel() * p.element_size() for p in model.parameters())  # weights + optimizer on cuda

    model.eval()
    generated = model.generate(input_ids[:1, :4], max_new_tokens=6, do_sample=False)
    assert generated.device.type == "cuda" and generated.shape == (1, 10)
    sampled = model.generate(input_ids[:1, :4], max_new_tokens=3, do_sample=True, top_k=5)
    assert sampled.shape == (1, 7)


def test_trainer_picks_the_gpu(tmp_path):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=3,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        bf16=True,
        use_cpu=False,
    )
    assert args.device == torch.device("cuda", 0)
    model = _tiny_llama()
    data = [{"input_ids": torch.randint(3, 128, (12,)), "labels": torch.randint(3, 128, (12,))} for _ in range(12)]
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data)
    result = trainer.train()
    assert result.global_step == 3
    assert next(model.parameters()).device.type == "cuda"
