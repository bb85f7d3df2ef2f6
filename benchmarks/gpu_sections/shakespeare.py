"""A short real training run: `train.py --max-steps N` on the shipped tiny-Shakespeare (tiny preset), as a user runs
it, in a scratch directory; its wall time and whether the validation loss fell, from the run's metrics.jsonl."""

import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import REPO, timed

from gpt2repro.checkpoints import RunDir

from .base import Row, ok

NAME = "shakespeare"
SUMMARY = "`train.py --max-steps 200` on tiny-Shakespeare: wall time and final validation loss"
TIMEOUT = 420

STEPS = {"cuda": 200, "cpu": 2}
# train.py arguments after --max-steps: the tiny preset as it is on a GPU, smaller steps for the CPU smoke test
ARGUMENTS = {"cuda": (), "cpu": ("--total-batch-tokens", "256", "--micro-batch-size", "2", "--seq-len", "128",
                                 "--val-tokens", "512", "--sample-tokens", "4")}
# Quoted beside the GPU figure, not checked against it.
CPU_REFERENCE = "CPU: the `make demo` figures in benchmarks/RESULTS.md (the same tiny preset, 4,096 tokens per step)"


def add_arguments(parser) -> None:
    parser.add_argument("--shakespeare-steps", type=int,
                        help=f"section shakespeare (default: {STEPS['cuda']} on cuda, {STEPS['cpu']} on cpu)")


def run(args, profile, context):
    from gpt2repro.run_log import read_metrics

    steps = args.shakespeare_steps or STEPS[profile.name]
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        # in a scratch directory: train.py tokenizes the shipped tiny-Shakespeare into ./data itself
        command = [sys.executable, str(REPO / "train.py"), "--max-steps", str(steps), "--run-dir", str(run_dir),
                   "--log-with", "none", *ARGUMENTS[profile.name]]
        env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if args.device == "cpu" else {}))
        proc, wall = timed(subprocess.run, command, cwd=tmp, env=env, capture_output=True, text=True,
                           timeout=TIMEOUT - 30)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"train.py exited with {proc.returncode}: {last}")
        metrics = read_metrics(RunDir(run_dir).metrics)
    evals = [(m["step"], m["val_loss"]) for m in metrics if "val_loss" in m]
    speeds = [m["tokens_per_sec"] for m in metrics if "tokens_per_sec" in m]
    if not evals:
        raise RuntimeError("train.py logged no val_loss")
    (first_step, first), (last_step, last) = evals[0], evals[-1]
    learned = math.isfinite(last) and (len(evals) == 1 or last < first)
    trend = f", from {first:.4f} at step {first_step}" if len(evals) > 1 else ""
    result = (f"{steps} steps in {wall:.0f} s (process wall time; median {statistics.median(speeds):,.0f} tok/s), "
              f"final val loss {last:.4f} at step {last_step}{trend}")
    return [Row(NAME, f"train.py --max-steps {steps} (tiny preset) on {args.device}", result, CPU_REFERENCE,
                goal="finite val loss, falling", status=ok(learned))]
