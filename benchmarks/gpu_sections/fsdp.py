"""FSDP2 with bf16 against DDP with bf16, through train.py (accelerate launch with the shipped configs) on every GPU
here: the same training losses at every step and the same validation loss."""

import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from _common import REPO

from gpt2repro.checkpoints import RunDir

from .base import Row, ok

NAME = "fsdp"
SUMMARY = "FSDP2 vs DDP with bf16 through train.py on every GPU here (2 or more): the same losses"
TIMEOUT = 420


def run(args, profile, context):
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    check = "FSDP2 vs DDP, bf16, train.py tiny preset, 8 steps: training losses and val loss"
    if gpus < 2:
        return [Row(NAME, check, f"needs 2 GPUs or more ({gpus} here); tests/test_gpu_path.py runs it on 2 CPU "
                    "processes", status="n/a")]
    from gpt2repro.run_log import read_metrics

    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, config in (("ddp", "8gpu.yaml"), ("fsdp", "fsdp.yaml")):
            command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                       str(REPO / "accelerate_configs" / config), "--num_processes", str(gpus), str(REPO / "train.py"),
                       "--max-steps", "8", "--mixed-precision", "bf16", "--log-every", "1", "--log-with", "none",
                       "--total-batch-tokens", str(16 * 256 * gpus), "--eval-every", "0", "--run-dir", f"{tmp}/{name}"]
            proc = subprocess.run(command, cwd=tmp, capture_output=True, text=True, timeout=TIMEOUT // 2 - 30)
            if proc.returncode != 0:
                raise RuntimeError(f"{name}: exited with {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
            rows = read_metrics(RunDir(Path(tmp) / name).metrics)
            runs[name] = ([r["loss"] for r in rows if "loss" in r], [r["val_loss"] for r in rows if "val_loss" in r])
    (ddp, ddp_val), (fsdp, fsdp_val) = runs["ddp"], runs["fsdp"]
    worst = max(abs(a - b) / abs(b) for a, b in zip(fsdp + fsdp_val, ddp + ddp_val))
    passed = len(fsdp) == len(ddp) == 8 and worst <= 1e-3
    return [Row(NAME, f"{check} on {gpus} GPUs", f"worst relative difference {worst:.1e} over {len(fsdp)} steps",
                "DDP", goal="<= 1e-3 at every step", status=ok(passed))]
