"""The optimizer and the learning-rate schedule.

Two optimizers, one setting (--optimizer):
  adamw  AdamW on every parameter; weight decay on matrices and embeddings only (>=2-D). build-nanogpt's recipe.
  muon   torch's Muon update on the blocks' 2-D weight matrices (attention and MLP), AdamW on the rest: the tied
         embedding/head, the position embedding, LayerNorms and biases. Each at its own peak learning rate
         (--muon-lr for the matrices, --lr for the rest), as modded-nanogpt and nanochat do.

Both live in one torch Optimizer (MuonAdamW), so that Accelerate prepares one optimizer and a checkpoint holds one
optimizer state (the Muon momentum buffers included), whatever the optimizer.

Two schedules, one setting (--lr-schedule), after a linear warmup:
  cosine  cosine decay to min_lr_ratio x the peak at max_steps (build-nanogpt).
  wsd     warmup-stable-decay: flat at the peak, then linear to min_lr_ratio x the peak over the last
          --cooldown-frac of the steps (modded-nanogpt's trapezoid). A run saved before its cooldown began can be
          continued to a larger --max-steps: its learning rate so far is the same for any length (README).
"""

import math

import torch
from accelerate.utils import DistributedType
from torch.optim._muon import (
    DEFAULT_A,
    DEFAULT_B,
    DEFAULT_C,
    DEFAULT_NS_STEPS,
    EPS,
    _adjust_lr,
    _zeropower_via_newtonschulz,
)

from gpt2repro.settings import Settings, SettingsError

# "match_rms_adamw" scales each matrix's update to the RMS AdamW's would have (0.2 x sqrt(larger side)), so the
# Muon learning rate and weight decay read like AdamW's; "original" (Keller Jordan's) scales by sqrt(rows / cols)
# only for tall matrices. README ("Muon's choices, measured") says why this one.
MUON_ADJUST_LR = "match_rms_adamw"
# c_attn holds q, k and v for all heads as one (3 x n_embd, n_embd) matrix: orthogonalized as three n_embd-square
# matrices (the anchors' choice), or as one. README says why.
MUON_QKV_SPLIT = 3
# Adam's epsilon, for every AdamW group (build-nanogpt's)
ADAM_EPS = 1e-8


# ----------------------------------------------------------------------------------------------
# the schedule


def cooldown_steps(s: Settings) -> int:
    """The steps of WSD's linear cooldown: the last --cooldown-frac of --max-steps (after the warmup at most)."""
    return min(round(s.cooldown_frac * s.max_steps), s.max_steps - s.warmup_steps)


def stable_until(s: Settings) -> int:
    """The last step of WSD's flat phase: a checkpoint at or before it can continue to a larger --max-steps with the
    learning rates an uninterrupted longer run would have used."""
    return s.max_steps - cooldown_steps(s)


def learning_rate(step: int, s: Settings) -> float:
    """--lr's value at `step` (the AdamW groups'; the log line shows it): linear warmup, then the cosine or WSD to
    min_lr_ratio * lr at max_steps. Set by hand each step, so it cannot be stretched by the number of processes
    (Accelerate's prepared schedulers can)."""
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    min_lr = s.lr * s.min_lr_ratio
    if s.lr_schedule == "wsd":
        cooldown = cooldown_steps(s)
        progress = max(0, step - stable_until(s)) / cooldown if cooldown else 0.0
        return s.lr - progress * (s.lr - min_lr)
    progress = min(1.0, (step - s.warmup_steps) / max(1, s.max_steps - s.warmup_steps))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (s.lr - min_lr)


def flat_phase_end(s: Settings) -> int | None:
    """The step a WSD run always saves at and never prunes: the end of its flat phase, the one checkpoint a longer
    run continues from (its final/ has cooled down; README, "The schedule"). None without a flat phase to end."""
    step = stable_until(s)
    return step if s.lr_schedule == "wsd" and 0 < step < s.max_steps else None


def set_learning_rates(optimizer, lr: float, s: Settings) -> None:
    """Every group's learning rate for --lr's scheduled value `lr`: the AdamW groups take it, Muon's groups the same
    fraction of --muon-lr."""
    for group in optimizer.param_groups:
        group["lr"] = lr * s.muon_lr / s.lr if group.get("muon") else lr


# ----------------------------------------------------------------------------------------------
# the optimizer


def check_optimizer(s: Settings, distributed_type) -> None:
    """Refuse, in one line, --optimizer muon under FSDP: Muon orthogonalizes each whole matrix, and FSDP holds a
    shard of it in each process (its update would need the matrix gathered in a custom step)."""
    if s.optimizer == "muon" and distributed_type == DistributedType.FSDP:
        raise SettingsError(
            "--optimizer muon under FSDP: Muon updates whole matrices, which FSDP shards across processes; launch "
            "with DDP instead (accelerate_configs/8gpu.yaml, cpu_2proc.yaml: the 124M model fits every GPU), or "
            "keep FSDP with --optimizer adamw"
        )


def make_optimizer(model, s: Settings, *, qkv_split: int = MUON_QKV_SPLIT,
                   adjust_lr_fn: str = MUON_ADJUST_LR) -> torch.optim.Optimizer:
    """The optimizer --optimizer names, built on the unwrapped model (before accelerator.prepare). The keywords are
    the Muon choices README measured (benchmarks/bench_recipe.py varies them)."""
    if s.optimizer == "muon":
        groups = param_groups(model, s, qkv_split, adjust_lr_fn)
        return MuonAdamW(groups, lr=s.lr, betas=(s.beta1, s.beta2), eps=ADAM_EPS)
    groups = decay_groups([p for p in model.parameters() if p.requires_grad], s)
    # fused on every device: its `found_inf` lets train_step skip a non-finite update without reading the device
    return torch.optim.AdamW(groups, lr=s.lr, betas=(s.beta1, s.beta2), eps=ADAM_EPS, fused=True)


def param_groups(model, s: Settings, qkv_split: int = MUON_QKV_SPLIT, adjust_lr_fn: str = MUON_ADJUST_LR) -> list[dict]:
    """Muon groups for the blocks' Linear weights (c_attn apart, as it may be split into q, k, v), AdamW groups for
    the embeddings (decayed, like AdamW's matrices) and the 1-D parameters (not decayed). Every parameter in one."""
    c_attn, matrices = [], []
    for block in model.transformer.h:
        for name, module in block.named_modules():
            if isinstance(module, torch.nn.Linear):
                (c_attn if name == "attn.c_attn" else matrices).append(module.weight)
    muon = dict(muon=True, lr=s.muon_lr, weight_decay=s.weight_decay, adjust_lr_fn=adjust_lr_fn)
    taken = {id(p) for p in c_attn + matrices}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]  # the tied wte/lm_head once
    return [{**muon, "params": matrices, "split": 1}, {**muon, "params": c_attn, "split": qkv_split},
            *decay_groups(rest, s)]


def decay_groups(params: list, s: Settings) -> list[dict]:
    """AdamW's two groups: weight decay on matrices and embeddings (>=2-D), never on biases and LayerNorms."""
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": s.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


class MuonAdamW(torch.optim.AdamW):
    """torch.optim.Muon's update on the groups marked `muon`, fused AdamW on the others, as one optimizer.

    Muon groups take: lr, weight_decay, adjust_lr_fn (torch.optim.Muon's meanings), and `split`: the number of
    equal row blocks orthogonalized apart (3 for c_attn's q, k, v), each a view of the parameter, its momentum
    buffer staying one tensor. momentum, nesterov and the Newton-Schulz iteration are torch.optim.Muon's defaults.

    `found_inf` (a device scalar, 1 where the step is to be skipped), the attribute fused AdamW and GradScaler use,
    skips the whole step on the device, Muon's part included: weights, momentum buffers and AdamW's moments and step
    counts stay bit-identical, and nothing is read back to the host. torch's Muon has no such path.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.95), eps=ADAM_EPS):
        super().__init__(params, lr=lr, betas=betas, eps=eps, fused=True)
        for group in self.param_groups:
            group.setdefault("muon", False)
            if group["muon"]:
                group.setdefault("split", 1)
                group.setdefault("adjust_lr_fn", None)
                group.setdefault("momentum", 0.95)
                group.setdefault("nesterov", True)
                for p in group["params"]:
                    if p.dim() != 2 or p.shape[0] % group["split"]:
                        raise ValueError(f"Muon takes 2-D matrices with rows divisible by {group['split']}: {p.shape}")

    def __setstate__(self, state):
        """load_state_dict's last act: AdamW's own (its step counts as tensors) for the AdamW groups only, as Muon's
        parameters have no step count."""
        groups = state["param_groups"]
        super().__setstate__({**state, "param_groups": [g for g in groups if not g.get("muon")]})
        self.param_groups = groups

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        found_inf = getattr(self, "found_inf", None)
        for group in self.param_groups:
            if group["muon"]:
                self._muon_step(group, found_inf)
        groups = self.param_groups
        try:  # AdamW's own step (fused, found_inf and all) over the AdamW groups only
            self.param_groups = [g for g in groups if not g["muon"]]
            super().step()
        finally:
            self.param_groups = groups
        return loss

    def _muon_step(self, group: dict, found_inf) -> None:
        """_single_tensor_muon (torch/optim/_muon.py) with a device-side gate: where found_inf is 1, the momentum
        keeps its value (the gradient is zeroed and its weight is 0), weight decay multiplies by 1 and the update
        by 0. With found_inf 0 (or none) every operation computes what torch's does."""
        lr, weight_decay, momentum = group["lr"], group["weight_decay"], group["momentum"]
        apply = None if found_inf is None else found_inf == 0
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
            grads, bufs, params = (t.chunk(group["split"]) for t in (p.grad, state["momentum_buffer"], p))
            for grad, buf, param in zip(grads, bufs, params):
                if apply is None:
                    buf.lerp_(grad, 1 - momentum)
                else:
                    grad = torch.where(apply, grad, 0.0)  # a NaN times a zero weight would still be NaN
                    buf.lerp_(grad, torch.where(apply, 1 - momentum, 0.0))
                update = grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = _zeropower_via_newtonschulz(update, (DEFAULT_A, DEFAULT_B, DEFAULT_C), DEFAULT_NS_STEPS, EPS)
                adjusted_lr = _adjust_lr(lr, group["adjust_lr_fn"], param.shape)
                if apply is None:
                    param.mul_(1 - lr * weight_decay)
                else:
                    param.mul_(torch.where(apply, 1 - lr * weight_decay, 1.0))
                    update.mul_(apply)
                param.add_(update, alpha=-adjusted_lr)


__all__ = ["ADAM_EPS", "MUON_ADJUST_LR", "MUON_QKV_SPLIT", "MuonAdamW", "check_optimizer", "cooldown_steps",
           "learning_rate", "make_optimizer", "param_groups",
           "set_learning_rates", "stable_until", "flat_phase_end"]
