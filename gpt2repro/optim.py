"""The optimizer and its learning-rate schedule, set by the run's settings."""

import math

import torch

from gpt2repro.settings import Settings


def learning_rate(step: int, s: Settings) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio * lr at max_steps. Set by hand each step, so
    it cannot be stretched by the number of processes (Accelerate's prepared schedulers can)."""
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    progress = min(1.0, (step - s.warmup_steps) / max(1, s.max_steps - s.warmup_steps))
    min_lr = s.lr * s.min_lr_ratio
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (s.lr - min_lr)


def make_optimizer(model, s: Settings, device: torch.device) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices and embeddings only (>=2-D), never on biases and LayerNorms."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": s.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # fused on every device: its `found_inf` lets train_step skip a non-finite update without reading the device
    return torch.optim.AdamW(groups, lr=s.lr, betas=(s.beta1, s.beta2), eps=1e-8, fused=True)
