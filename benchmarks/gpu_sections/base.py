"""What every section shares: the row it reports, the shapes a device runs, verdicts, and the training step's pieces."""

import dataclasses
import statistics

import torch
from _common import compile_counts, timed

from configuration_gpt2repro import PRESETS, GPT2ReproConfig


@dataclasses.dataclass(frozen=True)
class Profile:
    """The shapes every section uses on one device: the 124M model on a GPU, a tiny one for the CPU smoke test.
    What only one section sizes (its batches, items, steps) it keeps itself, keyed by `name`."""

    name: str  # cuda | cpu
    model: dict  # n_layer, n_head, n_embd
    seq: int
    small_batch: int  # parity and attention
    warmup: int  # untimed training steps (compilation happens here)
    steps: int  # timed training steps


PROFILES = {
    "cuda": Profile("cuda", model=PRESETS["gpt2-124m"], seq=1024, small_batch=4, warmup=3, steps=10),
    "cpu": Profile("cpu", model=dict(n_layer=2, n_head=2, n_embd=64), seq=32, small_batch=1, warmup=1, steps=1),
}

# fp32 runs with TF32 off, so only summation order differs between two models' kernels.
LOGITS_TOL = 1e-4


@dataclasses.dataclass
class Row:
    section: str
    check: str
    result: str
    compared: str = ""
    goal: str = ""
    status: str = ""  # ok | FAIL | met | not met | n/a | info | error


class CheckFailed(Exception):
    """A parity check failed: what was measured after it would compare unequal things."""


def ok(passed: bool) -> str:
    return "ok" if passed else "FAIL"


def verdict(args, profile, met: bool) -> str:
    """The goals are set for the 124M shape on a GPU; a CPU smoke run prints figures only."""
    return ("met" if met else "not met") if args.device == "cuda" and profile.name == "cuda" else "n/a"


def model_config(profile: Profile) -> GPT2ReproConfig:
    return GPT2ReproConfig(n_positions=profile.seq, **profile.model)


def autocast(args):
    """bf16 autocast under --precision bf16, as train.py's Accelerator runs the forward; nothing under fp32."""
    return torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16, enabled=args.precision == "bf16")


def compiled(model, mode: str):
    """The model as torch.compile (backend `mode`) runs it; `off`: as is."""
    if mode == "off":
        return model
    return torch.compile(model, backend=mode, dynamic=False)


def recipe_124m():
    """train.py's gpt2-124m preset: the optimizer and the optimizer step's token layout the GPU run measures."""
    from gpt2repro.settings import PRESETS, Settings

    return Settings(**PRESETS["gpt2-124m"])


def time_steps(step, warmup: int, steps: int, device) -> dict:
    """`warmup` steps (compilation happens there), then `steps` timed steps, each alone: the median step's seconds,
    the warm-up's, the peak memory of the timed steps (None on a CPU), the losses `step` returned, and the graphs,
    breaks and recompiles torch.compile made."""
    start = compile_counts()
    _, warmup_s = timed(lambda: [step() for _ in range(warmup)], device=device)
    warm = compile_counts()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, losses = [], []
    for _ in range(steps):
        loss, seconds = timed(step, device=device)
        times.append(seconds)
        losses.append(loss.item())
    end = compile_counts()
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return dict(step_s=statistics.median(times), warmup_s=warmup_s, peak=peak, losses=losses,
                graphs=warm[0] - start[0], breaks=warm[1] - start[1], recompiles=end[0] - warm[0])
