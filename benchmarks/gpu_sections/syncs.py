"""Host syncs of train.py's steps: train.py's own loop under torch.cuda.set_sync_debug_mode("warn"), each warning
counted in the step that made it: none between the steps that log, at most one at a step that logs."""

import os
import tempfile
import warnings

import torch

from .base import Row, ok

NAME = "syncs"
SUMMARY = "train.py's steps under torch.cuda.set_sync_debug_mode(\"warn\"): syncs per step, logging or not"
TIMEOUT = 300


def run(args, profile, context):
    if args.device != "cuda":
        return [Row(NAME, "syncs per training step", "CUDA only (tests/test_gpu_path.py counts reads on CPU)",
                    status="n/a")]
    import train
    from accelerate.state import AcceleratorState

    per_step, current, learning_rate = {}, [None], train.learning_rate
    log_every, steps = 4, 12
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        def marked(step, s):  # each step starts here: what was caught since the last start is the last step's
            if current[0] is not None:
                per_step[current[0]] = sum("synchroniz" in str(w.message) for w in caught)
            caught.clear()
            current[0] = step
            return learning_rate(step, s)

        cwd = os.getcwd()
        os.chdir(tmp)  # train.py tokenizes the shipped tiny-Shakespeare into ./data itself
        AcceleratorState._reset_state(reset_partial_state=True)
        train.learning_rate = marked
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train.main(["--max-steps", str(steps), "--log-every", str(log_every), "--run-dir", f"{tmp}/run",
                        "--log-with", "none", "--eval-every", "0",
                        "--compile" if args.compile != "off" else "--no-compile"])
        finally:
            torch.cuda.set_sync_debug_mode(0)
            train.learning_rate = learning_rate
            os.chdir(cwd)
    logging = [per_step.get(k, 0) for k in range(steps - 1) if (k + 1) % log_every == 0]
    quiet = [per_step.get(k, 0) for k in range(steps - 1) if (k + 1) % log_every]  # the last step saves: left out
    passed = max(quiet) == 0 and max(logging) <= 1
    return [Row(NAME, f"syncs per step of train.py (tiny preset, --log-every {log_every}, compile {args.compile})",
                f"steps that do not log: at most {max(quiet)}; steps that log: at most {max(logging)}",
                goal="0 between logs, 1 at a log", status=ok(passed))]
