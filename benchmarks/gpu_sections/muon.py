"""Muon on the device (issue 24): the optimizer step's share of a whole training step at the 124M shape, Muon
(gpt2-124m-muon) against AdamW (gpt2-124m), each step holding one GPU's share of the recipe's 524,288 tokens on 8
GPUs; and the first steps' losses on the device against the same steps on the CPU (same seed, weights, tokens).

Newton-Schulz on 768-wide matrices is small next to the forward and backward: the goal is a share under 2%."""

import copy
import statistics

import torch
from _common import random_tokens, release, timed

from gpt2repro.optim import make_optimizer, set_learning_rates
from gpt2repro.settings import PRESETS, Settings
from modeling_gpt2repro import GPT2ReproForCausalLM

from .base import Row, compiled, model_config, ok, verdict

NAME = "muon"
SUMMARY = ("Muon: the optimizer step's share of a training step at the 124M shape (vs AdamW), and the first\n"
           "steps' losses on the device against the CPU's, same seed")
TIMEOUT = 300

GOAL_SHARE = 0.02
GPUS_OF_THE_RECIPE = 8  # the share is measured on one GPU's part of the optimizer step
MICRO_BATCH = {"cuda": 16, "cpu": 2}
LOSS_BATCH, LOSS_STEPS = 2, 5  # the CPU side runs the 124M model too: a small batch
LOSS_TOL = 2e-2  # bf16 Newton-Schulz on both sides: summation order moves the weights, then the losses, a little


def settings(optimizer: str) -> Settings:
    return Settings(**PRESETS["gpt2-124m-muon" if optimizer == "muon" else "gpt2-124m"])


def autocast(args, device: torch.device):
    """bf16 autocast on `device` under --precision bf16, as train.py's Accelerator runs the forward there."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")


def step_share(model, optimizer, batches, args, warmup: int, steps: int) -> dict:
    """Median seconds of forward + backward over `batches` (accumulated, as one optimizer step of train.py, compiled
    as --compile says) and of the optimizer step after it, and the optimizer's share of the two."""
    device = batches[0].device
    forward = compiled(model, args.compile)
    found_inf = torch.zeros((), device=device)  # train.py always passes it: Muon's gated path is the one timed

    def forward_backward():
        for window in batches:
            with autocast(args, device):
                loss = forward(input_ids=window[:, :-1], shift_labels=window[:, 1:]).loss
            (loss / len(batches)).backward()

    def optimizer_step():
        optimizer.found_inf = found_inf
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    fb, opt = [], []
    for i in range(warmup + steps):
        _, fb_s = timed(forward_backward, device=device)
        _, opt_s = timed(optimizer_step, device=device)
        if i >= warmup:
            fb.append(fb_s)
            opt.append(opt_s)
    fb_s, opt_s = statistics.median(fb), statistics.median(opt)
    return {"forward_backward_s": fb_s, "optimizer_s": opt_s, "share": opt_s / (fb_s + opt_s)}


def first_losses(reference, device, batches, args) -> list[float]:
    """LOSS_STEPS optimizer steps of Muon (gpt2-124m-muon, at its peak rates) from `reference`'s weights."""
    model = copy.deepcopy(reference).to(device)
    s = settings("muon")
    optimizer = make_optimizer(model, s)
    set_learning_rates(optimizer, s.lr, s)
    losses = []
    for window in batches:
        window = window.to(device)
        with autocast(args, device):
            loss = model(input_ids=window[:, :-1], shift_labels=window[:, 1:]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    del model, optimizer
    release(device)
    return losses


def run(args, profile, context):
    device = torch.device(args.device)
    config = model_config(profile)
    torch.manual_seed(0)
    reference = GPT2ReproForCausalLM(config)
    micro = MICRO_BATCH[profile.name]
    tokens_per_gpu = settings("muon").total_batch_tokens // GPUS_OF_THE_RECIPE
    accumulation = max(1, tokens_per_gpu // (micro * profile.seq)) if profile.name == "cuda" else 1
    batches = [random_tokens(micro, profile.seq + 1, device)] * accumulation
    rows, shares = [], {}
    for optimizer_name in ("adamw", "muon"):
        model = copy.deepcopy(reference).to(device)
        optimizer = make_optimizer(model, settings(optimizer_name))
        shares[optimizer_name] = step_share(model, optimizer, batches, args, profile.warmup, max(profile.steps, 3))
        del model, optimizer
        release(device)
    for name, measured in shares.items():
        met = measured["share"] < GOAL_SHARE
        rows.append(Row(
            NAME, f"{name}: optimizer step's share ({accumulation} x {micro} x {profile.seq} tokens, {args.precision})",
            f"{measured['share'] * 100:.2f}% (optimizer {measured['optimizer_s'] * 1000:.1f} ms, forward+backward "
            f"{measured['forward_backward_s'] * 1000:.0f} ms)",
            goal=f"< {GOAL_SHARE:.0%}" if name == "muon" else "", status=verdict(args, profile, met)
            if name == "muon" else "info",
        ))
    rows.append(Row(NAME, "Muon's optimizer step against AdamW's",
                    f"{shares['muon']['optimizer_s'] / shares['adamw']['optimizer_s']:.1f}x the time", status="info"))

    cpu_batches = [random_tokens(LOSS_BATCH, profile.seq + 1, "cpu")] * LOSS_STEPS  # one batch, learnt step by step
    on_device = first_losses(reference, device, cpu_batches, args)
    on_cpu = first_losses(reference, torch.device("cpu"), cpu_batches, args) if device.type == "cuda" else on_device
    gap = max(abs(a - b) for a, b in zip(on_device, on_cpu))
    rows.append(Row(
        NAME, f"first {LOSS_STEPS} Muon steps' losses, {device.type} vs cpu (seed 0, same tokens, {args.precision})",
        f"{device.type}: {', '.join(f'{v:.4f}' for v in on_device)}; max |diff| {gap:.1e}",
        goal=f"< {LOSS_TOL:g}", status=ok(gap < LOSS_TOL) if device.type == "cuda" else "n/a",
    ))
    return rows
