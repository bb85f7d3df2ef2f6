"""The whole GPT-2 (124M) reproduction in one command on a GPU node, like nanochat's speedrun.sh.

    python scripts/reproduce_gpt2.py                                  # data -> train -> evaluate -> report
    python scripts/reproduce_gpt2.py --dry-run [--gpus 8]             # print the commands, run nothing (any machine)
    python scripts/reproduce_gpt2.py --preset gpt2-124m-muon --dry-run  # Muon: its plan and cost next to AdamW's
    python scripts/reproduce_gpt2.py --preset gpt2-124m-fineweb -- --max-steps 100   # after --: train.py flags

  1. data      prepare_data.py for the preset's data directory: skipped when complete, resumed when half done;
               its GPT-2 tokens downloaded from the Hub (--from-hub) where the data preset has them, tokenized
               here if that download fails (or with --tokenize)
  2. train     accelerate launch ... train.py --resume auto, for the GPUs found: skipped when RUN/final exists
  3. evaluate  eval_hellaswag.py: RUN/final next to OpenAI's gpt2 (HellaSwag both ways, val loss and bpb)
  4. report    run_report.py: RUN/report.md and report.json with the evaluation in them

An interrupted run (crash, preemption, Ctrl-C) continues where it stopped: rerun the same command.
Commands run in the repository root, so paths after -- are relative to it, as in train.py.
"""

import argparse
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the project's modules live at the repository root

import torch  # noqa: E402

from gpt2repro.checkpoints import CheckpointError, RunDir, read_trainer_state  # noqa: E402
from gpt2repro.document_sources import DATA_PRESETS, DEFAULT_DATA_DIR, HUB_TOKENS, data_dir_for  # noqa: E402
from gpt2repro.errors import UserError, cli  # noqa: E402
from gpt2repro.hub_data import downloading  # noqa: E402
from gpt2repro.settings import PRESETS, Settings, parse_settings  # noqa: E402
from gpt2repro.throughput import datasheet_bf16_peak, flops_per_token  # noqa: E402
from gpt2repro.token_shards import MANIFEST_NAME, load_manifest  # noqa: E402
from configuration_gpt2repro import GPT2ReproConfig  # noqa: E402

STEPS = 4
ACCELERATE_CONFIGS = {0: "accelerate_configs/cpu.yaml", 1: "accelerate_configs/1gpu.yaml",
                      8: "accelerate_configs/8gpu.yaml"}
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


class ReproduceError(UserError, ValueError):
    """The reproduction cannot start or go on: the message says why and what to do."""


class StepFailed(UserError, RuntimeError):
    """A step's command failed: the message says how to continue; the exit status is the command's."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@cli
def main(argv=None) -> None:
    args, extra = parse_args(argv)
    gpus = count_gpus(args.gpus, args.allow_cpu, args.dry_run)
    train_args, s = training_args(args, extra, gpus)
    note(f"preset {args.preset} on {f'{gpus} GPU(s)' if gpus else 'the CPU'} | data {s.data_dir} | run {s.run_dir}")
    steps = Steps(args.dry_run)
    prepare_data_step(steps, s.data_dir, download=not args.tokenize)
    train_step(steps, launcher(gpus) + ["train.py", *train_args], s.run_dir, s.max_steps)
    evaluate_step(steps, s.run_dir, s.data_dir)
    report_step(steps, s.run_dir)
    if args.dry_run:
        plan_cost(s, args.preset, max(gpus, 1))


# ----------------------------------------------------------------------------------------------
# the four steps


def prepare_data_step(steps, data_dir: str, download: bool = True) -> None:
    """Download the data preset's tokens from the Hub where it has them (minutes), else tokenize (an hour for
    FineWeb-Edu 10B); a failed download falls back to tokenizing. A half-tokenized directory resumes tokenizing."""
    if data_state(ROOT / data_dir) == "complete":
        return steps.skip("data", f"{data_dir} is complete")
    command, streams = prepare_command(data_dir)
    offline = [name for name in OFFLINE_VARIABLES if os.environ.get(name, "").lower() in ("1", "true", "yes", "on")]
    if offline and streams:
        raise ReproduceError(f"{data_dir} is not prepared yet and {offline[0]} is set: preparing it streams from the "
                             f"Hub; unset {' and '.join(offline)}, or copy a prepared {data_dir} here")
    half_tokenized = (ROOT / data_dir / MANIFEST_NAME).is_file() and downloading(ROOT / data_dir) is None
    repo = HUB_TOKENS.get(command[2]) if streams else None
    if not (download and repo and not half_tokenized):
        return steps.run("data", command)
    note(f"data: downloading the tokens of {command[2]} from the Hub dataset {repo} instead of tokenizing; "
         "if that fails, tokenizing them here")
    if steps.run("data", command + ["--from-hub"], stop_on_failure=False):
        return
    note(f"data: the download failed, so tokenizing {data_dir} here instead")
    steps.run("data", command + ["--overwrite"], again=True)  # --overwrite: the download's leftovers go


def train_step(steps, command: list[str], run_dir: str, max_steps: int) -> None:
    final = RunDir(run_dir).final
    if (ROOT / final).is_dir():
        try:
            trained = read_trainer_state(ROOT / final)["step"]
        except (CheckpointError, KeyError) as e:
            raise ReproduceError(f"{final}: not a checkpoint train.py wrote ({e}); move it away and rerun") from None
        if trained < max_steps:  # e.g. a short trial run in the same directory
            raise ReproduceError(f"{final} was trained for {trained} steps, this run asks for {max_steps}; pass "
                                 "another --run-dir, or remove that run")
        return steps.skip("train", f"{final} exists ({trained} steps)")
    steps.run("train", command)
    if not steps.dry_run and not (ROOT / final).is_dir():  # train.py exits 0 after saving on SIGTERM or Ctrl-C
        raise ReproduceError(f"training stopped before the end (no {final}); rerun the same command to continue")


def evaluate_step(steps, run_dir: str, data_dir: str) -> None:
    final, results = RunDir(run_dir).final, RunDir(run_dir).eval_results
    if (ROOT / final).is_dir() and (ROOT / results).is_file() and \
            (ROOT / results).stat().st_mtime >= (ROOT / final).stat().st_mtime:
        return steps.skip("evaluate", f"{results} is newer than {final}")
    steps.run("evaluate", [sys.executable, "eval_hellaswag.py", "--model", str(final), "--model", "gpt2",
                           "--val-data", data_dir, "--output", str(results)])


def report_step(steps, run_dir: str) -> None:
    steps.run("report", [sys.executable, "run_report.py", run_dir,
                         "--eval-results", str(RunDir(run_dir).eval_results)])


# ----------------------------------------------------------------------------------------------
# what to run


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    """Our arguments, and those after `--` (for train.py)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    ours = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     usage="%(prog)s [options] [-- train.py flags]")
    parser.add_argument("--preset", default="gpt2-124m", type=str.lower,
                        help=f"train.py's training preset: {', '.join(PRESETS)} (default: gpt2-124m)")
    parser.add_argument("--run-dir", help="where train.py writes (default: runs/<preset>)")
    parser.add_argument("--gpu-hour-usd", type=float, help="price of one GPU-hour, for the report's cost estimate")
    parser.add_argument("--gpus", type=int, help="use this many GPUs (default: all that torch sees)")
    parser.add_argument("--allow-cpu", action="store_true", help="go on without a GPU (rehearsals, tests)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands (stdout, one per line), run none")
    parser.add_argument("--tokenize", action="store_true",
                        help="tokenize the data here even where its tokens can be downloaded from the Hub")
    args = parser.parse_args(ours)
    if args.preset not in PRESETS:
        raise ReproduceError(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    if args.gpus is not None and args.gpus < 0:
        raise ReproduceError(f"--gpus {args.gpus}: must be 0 or more")
    return args, extra


# What a dry run plans for on a machine without GPUs: the node one rents for the reproduction.
DRY_RUN_GPUS = 8


def count_gpus(override: int | None, allow_cpu: bool, dry_run: bool = False) -> int:
    gpus = torch.cuda.device_count() if override is None else override
    if gpus == 0 and override is None and dry_run and not allow_cpu:  # reading the plan before renting GPUs
        note(f"no GPU here: planning for {DRY_RUN_GPUS} GPUs; --gpus N plans for N")
        return DRY_RUN_GPUS
    if gpus == 0 and not allow_cpu:
        why = ("--gpus 0" if override is not None else f"torch {torch.__version__} is a CPU-only build"
               if torch.version.cuda is None else "torch sees no CUDA device (check nvidia-smi, CUDA_VISIBLE_DEVICES)")
        raise ReproduceError(f"no GPU found: {why}; for a CPU rehearsal run train.py directly (see README); "
                             "--dry-run --gpus N shows the plan for N GPUs")
    return gpus


def training_args(args, extra: list[str], gpus: int) -> tuple[list[str], Settings]:
    """train.py's arguments, and the settings they resolve to (train.py's own parser decides those)."""
    train_args = ["--preset", args.preset, "--resume", "auto"]  # --resume auto starts fresh without a checkpoint
    if args.run_dir:
        train_args += ["--run-dir", from_user(args.run_dir)]
    if args.gpu_hour_usd is not None:
        train_args += ["--gpu-hour-usd", str(args.gpu_hour_usd)]
    train_args += extra
    _, s = parse_settings(train_args)
    micro_batch = s.micro_batch_size if s.micro_batch_size == "auto" else fitting_micro_batch(s, max(gpus, 1))
    if micro_batch != s.micro_batch_size:  # auto picks one that divides by itself
        note(f"--micro-batch-size {micro_batch}, not {s.micro_batch_size}: {s.micro_batch_size} x {s.seq_len} x "
             f"{gpus} GPUs does not divide the {s.total_batch_tokens:,}-token batch")
        train_args += ["--micro-batch-size", str(micro_batch)]
    return train_args, s


def fitting_micro_batch(s, processes: int) -> int:
    """The largest micro-batch, up to the preset's, whose tokens over all processes divide the total batch."""
    for micro_batch in range(s.micro_batch_size, 0, -1):
        if s.total_batch_tokens % (micro_batch * s.seq_len * processes) == 0:
            return micro_batch
    raise ReproduceError(
        f"a {s.total_batch_tokens:,}-token batch does not split over {processes} GPUs x {s.seq_len}-token sequences; "
        f"use --gpus with a power of two, or pass -- --total-batch-tokens N with N a multiple of "
        f"{s.seq_len * processes}"
    )


def launcher(gpus: int) -> list[str]:
    """accelerate launch (of this interpreter's accelerate) with the config for this many GPUs."""
    accelerate = [sys.executable, "-m", "accelerate.commands.launch"]
    if gpus in ACCELERATE_CONFIGS:
        return accelerate + ["--config_file", ACCELERATE_CONFIGS[gpus]]
    return accelerate + ["--multi_gpu", "--num_processes", str(gpus)]


def data_state(data_dir: Path) -> str:
    """"complete", "partial" (prepare_data resumes it) or "absent"; a directory it cannot resume is an error."""
    if not (data_dir / MANIFEST_NAME).is_file() and not any(data_dir.glob("part-*-of-*")):
        if any(data_dir.glob("*.bin")):
            raise ReproduceError(f"{data_dir} holds shards but no {MANIFEST_NAME}, so it cannot be resumed; delete it "
                                 "(or prepare it again with prepare_data.py --overwrite) and rerun")
        return "absent"
    manifest = load_manifest(data_dir)  # a corrupt one raises ShardError, which says what to do
    if manifest["complete"]:
        return "complete"
    if not (data_dir / MANIFEST_NAME).is_file():
        raise ReproduceError(f"{data_dir} was prepared in parts and some are unfinished; rerun each part's "
                             "prepare_data.py --num-shards K --shard-index I command on its machine")
    return "partial"


def prepare_command(data_dir: str) -> tuple[list[str], bool]:
    """prepare_data.py for a data directory named after a data preset (or the tiny preset's corpus), and whether it
    streams from the Hub."""
    recipes = {data_dir_for(name): [name] for name in DATA_PRESETS}
    recipes[DEFAULT_DATA_DIR] = []  # the shipped tiny-Shakespeare
    for default_dir, corpus in recipes.items():
        if Path(data_dir).name == default_dir.name:
            out = [] if Path(data_dir) == default_dir else ["--out", data_dir]
            return [sys.executable, "prepare_data.py", *corpus, *out], bool(corpus)
    presets = ", ".join(DATA_PRESETS)
    raise ReproduceError(f"{data_dir}: not prepared, and not named after a data preset ({presets}); prepare it with "
                         f"python prepare_data.py CORPUS --out {data_dir}")


def from_user(path: str) -> str:
    """A path typed relative to the user's directory, as seen from the repository root where commands run."""
    absolute = Path(path).expanduser().absolute()
    return str(absolute.relative_to(ROOT)) if absolute.is_relative_to(ROOT) else str(absolute)


# What a plan assumes, an assumption until a GPU run of ours measures it (benchmarks/gpu_check.py, section train):
# this model FLOP utilization, on the GPUs here, or on H100s where there are none (or torch does not know their peak).
PLAN_MFU = 0.40
PLAN_GPU = "NVIDIA H100 80GB HBM3"
# The recipe a faster preset is compared with.
BASELINE_PRESET = "gpt2-124m"


def plan_cost(s: Settings, preset: str, gpus: int) -> None:
    """The preset's training time and cost, and the AdamW recipe's next to it (stderr, like the banners)."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else PLAN_GPU
    gpu = gpu if datasheet_bf16_peak(gpu) else PLAN_GPU
    note(f"estimate: training only, at {PLAN_MFU:.0%} MFU of {gpu}'s bf16 peak on {gpus} GPU(s), "
         f"${s.gpu_hour_usd:.2f}/GPU-hour (--gpu-hour-usd)")
    plans = [(preset, s)]
    if preset != BASELINE_PRESET:
        plans.append((BASELINE_PRESET, parse_settings(["--preset", BASELINE_PRESET,
                                                       "--gpu-hour-usd", str(s.gpu_hour_usd)])[1]))
    for name, plan in plans:
        note(f"  {name} ({plan.optimizer}, {plan.lr_schedule}): {estimate(plan, gpus, gpu)}")


def estimate(s: Settings, gpus: int, gpu_name: str) -> str:
    tokens = s.max_steps * s.total_batch_tokens
    flops = tokens * flops_per_token(GPT2ReproConfig.from_preset(s.model), s.seq_len)
    hours = flops / (gpus * datasheet_bf16_peak(gpu_name) * PLAN_MFU) / 3600
    return (f"{s.max_steps:,} steps x {s.total_batch_tokens:,} tokens = {tokens / 1e9:.2f}B tokens | "
            f"{hours:.2f} h | {hours * gpus:.1f} GPU-hours | ${hours * gpus * s.gpu_hour_usd:,.0f}")


# ----------------------------------------------------------------------------------------------
# running


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Steps:
    """Numbered banners (stderr), each step's command (stdout, shell-quoted), and running it unless a dry run."""

    def __init__(self, dry_run: bool):
        self.dry_run, self.number = dry_run, 0

    def skip(self, name: str, why: str) -> None:
        self.number += 1
        note(f"== step {self.number}/{STEPS}: {name} == skipped: {why}")

    def run(self, name: str, command: list[str], stop_on_failure=True, again=False) -> bool:
        """Run `command` as the next step (`again`: as another try of the same step); whether it succeeded.
        A failure exits with the command's code, unless not `stop_on_failure`."""
        self.number += not again
        note(f"== step {self.number}/{STEPS}: {name}{' (again)' if again else ''} ==")
        print(shlex.join(command), flush=True)
        return self.dry_run or run_command(name, command, stop_on_failure)


def run_command(name: str, command: list[str], stop_on_failure: bool = True) -> bool:
    """Run `command` in the repository root; if it fails, raise StepFailed saying how to continue, with its code
    (or, unless `stop_on_failure`, return False).

    Ctrl-C reaches the child by itself (same process group) and SIGTERM is passed on to it; meanwhile this process
    waits instead of killing it, so train.py can finish its step and save a checkpoint to resume from."""
    previous = signal.signal(signal.SIGINT, lambda *_: None), signal.getsignal(signal.SIGTERM)
    try:
        with subprocess.Popen(command, cwd=ROOT) as child:
            signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
            code = child.wait()
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
    interrupted = code in (-signal.SIGINT, -signal.SIGTERM, 128 + signal.SIGINT, 128 + signal.SIGTERM)
    if code and not stop_on_failure and not interrupted:  # Ctrl-C stops the whole run, not just this try
        return False
    if code:
        code = code if code > 0 else 128 - code  # killed by signal N: the shell's 128 + N
        raise StepFailed(f"{name} failed (exit {code}); rerun the same command to continue", code)
    return True


if __name__ == "__main__":
    main()
