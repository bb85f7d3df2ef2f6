"""Where a run reports as it goes, and what it carries from start to resume: the run state saved in every
checkpoint, the progress line on the console, metrics.jsonl, the Accelerate trackers and the facts the report
states."""

import contextlib
import dataclasses
import json
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from gpt2repro.checkpoints import RunDir, after_a_full_disk, any_rank, continue_command
from gpt2repro.errors import UserError, first_line
from gpt2repro.fileio import write_atomically
from gpt2repro.micro_batch import MicroBatch
from gpt2repro.report import describe_data, plot_curves, val_loss_reference
from gpt2repro.settings import Settings
from gpt2repro.throughput import device_peak_flops, flops_per_token, mfu


@dataclass
class RunState:
    """What changes as the run goes. Saved in every checkpoint, so a resumed run carries all of it on."""

    step: int = 0
    tokens_seen: int = 0
    train_seconds: float = 0.0  # inside optimizer steps, over every start and resume
    total_seconds: float = 0.0  # wall time, evaluation and saving included, over every start and resume
    last_eval: dict = field(default_factory=dict)
    bad_steps: int = 0  # non-finite steps in a row
    micro_batch_size: int = 0  # the size the run settled on: what --micro-batch-size auto continues with

    def advance(self, tokens: int, seconds: float) -> None:
        self.step += 1
        self.tokens_seen += tokens
        self.train_seconds += seconds


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics file. A crash mid-append can leave a torn last line: it is skipped, not fatal."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def quiet_tracker_thread(previous):
    """threading.excepthook, less the write errors of tensorboard's writer thread: the thread hands its error to the
    main thread (raised at the next flush, where RunLog.writing makes it the run's one line), and its traceback
    printed as well would bury that line."""
    def hook(args):
        if not (isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread"):
            previous(args)

    hook.quiet_tracker_thread = True
    return hook


class LogWriteError(UserError, RuntimeError):
    """The run's logs (settings, metrics.jsonl, the curves, a tracker's files) could not be written: the message names
    the newest intact checkpoint and the command that continues from it."""


def train_command(argv=None) -> list[str]:
    """The training's command line as the run records it (report, continue commands): train.py and its arguments."""
    return ["train.py", *(sys.argv[1:] if argv is None else argv)]


class RunLog:
    """Where a run reports as it goes: the console, metrics.jsonl and the Accelerate trackers; and the facts of the
    run that its report states (report.py draws the curves and writes the report)."""

    def __init__(self, accelerator, s: Settings, preset: str, argv=None):
        self.accelerator, self.settings, self.preset, self.run_dir = accelerator, s, preset, RunDir(s.run_dir)
        self.command = train_command(argv)
        self.write_settings()
        if not getattr(threading.excepthook, "quiet_tracker_thread", False):
            threading.excepthook = quiet_tracker_thread(threading.excepthook)
        with self.writing():
            accelerator.init_trackers("gpt2repro",
                                      config={k: v for k, v in dataclasses.asdict(s).items() if v is not None})

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """A write of the logs that fails (a full disk, a file size limit) ends the run in one line. Nothing the
        resume needs is lost: the checkpoints are intact, and the resume drops the metrics after its step (a torn
        last row included) and logs those steps again."""
        try:
            yield
        except OSError as e:
            resume_with = continue_command(self.command, self.accelerator.num_processes)
            raise LogWriteError(f"could not write the run's logs in {self.run_dir.path} ({first_line(e)}): "
                                f"{after_a_full_disk(self.run_dir.path, resume_with)}") from None

    def on_main_for_all(self, write, *args):
        """`write(*args)` on the main process (None elsewhere), at a point every rank reaches: a write of the logs
        that fails there ends every rank with its line, not only the main process while the others wait for it in
        their next collective."""
        failure = result = None
        if self.accelerator.is_main_process:
            try:
                with self.writing():
                    result = write(*args)
            except LogWriteError as e:
                failure = e
        if any_rank(self.accelerator, failure is not None)[0]:
            resume_with = continue_command(self.command, self.accelerator.num_processes)
            raise failure or LogWriteError(
                f"could not write the run's logs in {self.run_dir.path} (on the main process, see its error): "
                f"{after_a_full_disk(self.run_dir.path, resume_with)}")
        return result

    def write_settings(self) -> None:
        settings = yaml.safe_dump({"preset": self.preset, **dataclasses.asdict(self.settings)}, sort_keys=False)
        if self.accelerator.is_main_process:
            self.run_dir.path.mkdir(parents=True, exist_ok=True)
        self.on_main_for_all(write_atomically, self.run_dir.settings, settings)  # every rank reaches this point

    def start(self, state: RunState, model, model_config, batch: MicroBatch, compiled: bool) -> None:
        """Note what the run is (for the banner, MFU and the report), print the banner, start the clocks (elapsed
        time carries on from the saved state, the ETA counts from here), and forget the metrics of steps after the
        state: they belong to a branch a resume abandoned, or to an abandoned start."""
        s, device, world = self.settings, self.accelerator.device, self.accelerator.num_processes
        self.compiled, self.precision = compiled, self.accelerator.mixed_precision
        self.n_params = sum(p.numel() for p in model.parameters())
        self.flops_per_token = flops_per_token(model_config, s.seq_len)
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        self.peak_flops, self.peak_source = device_peak_flops(device, dtype)
        self.print(
            f"model {s.model}: {self.n_params / 1e6:.1f}M parameters | {world} process(es) on {device.type} | "
            f"precision {self.precision} | compile {compiled}\n"
            f"batch: {s.total_batch_tokens:,} tokens/step = {batch.size}{' (auto)' * batch.auto} x {s.seq_len} x "
            f"{world} processes x {batch.accumulation} accumulation | {s.max_steps} steps | peak FLOP/s: "
            f"{self.peak_source}"
        )
        def keep_until(step):
            if self.run_dir.metrics.exists():
                kept = [row for row in read_metrics(self.run_dir.metrics) if row["step"] <= step]
                write_atomically(self.run_dir.metrics, "".join(json.dumps(row) + "\n" for row in kept))

        self.on_main_for_all(keep_until, state.step)
        self.started = time.perf_counter()
        self.first_step, self.total_before = state.step, state.total_seconds

    def tick(self, state: RunState) -> None:
        state.total_seconds = self.total_before + time.perf_counter() - self.started

    def step(self, state: RunState, loss: float, lr: float, norm: float, dt: float) -> None:
        """The progress line and the step's metrics."""
        self.tick(state)
        if state.bad_steps:
            self.print(f"warning: step {state.step}: non-finite loss {loss} or grad norm {norm}; update skipped")
        tokens_per_sec = self.settings.total_batch_tokens / dt
        utilization = self.mfu(tokens_per_sec)
        mean_step = (time.perf_counter() - self.started) / (state.step - self.first_step)  # evaluations included
        eta = mean_step * (self.settings.max_steps - state.step)
        self.print(
            f"step {state.step:5d}/{self.settings.max_steps} | loss {loss:.6f} | lr {lr:.4e} | norm {norm:.4f} | "
            f"dt {dt * 1000:.0f}ms | tok/s {tokens_per_sec:,.0f} | mfu {utilization * 100:.1f}% | "
            f"elapsed {format_duration(state.total_seconds)} | eta {format_duration(eta)}"
        )
        self.metrics(state.step, {"loss": loss, "lr": lr, "grad_norm": norm, "tokens_per_sec": tokens_per_sec,
                                  "mfu": utilization, "tokens_seen": state.tokens_seen})

    def mfu(self, tokens_per_sec: float) -> float:
        return mfu(tokens_per_sec / self.accelerator.num_processes, self.flops_per_token, self.peak_flops)

    def facts(self, state: RunState) -> dict:
        """What the run report needs from the trainer (run_report.write_report collects the rest)."""
        tokens_per_sec = state.tokens_seen / state.train_seconds if state.train_seconds else None
        return {
            "command": self.command, "preset": self.preset, "settings": dataclasses.asdict(self.settings),
            "world_size": self.accelerator.num_processes, "device_type": self.accelerator.device.type,
            "precision": self.precision, "compile": self.compiled, "n_params": self.n_params,
            "steps": state.step, "tokens": state.tokens_seen, "train_seconds": state.train_seconds,
            "total_seconds": state.total_seconds, "mean_tokens_per_sec": tokens_per_sec,
            "mean_mfu": self.mfu(tokens_per_sec) if tokens_per_sec else None, "peak_flops_source": self.peak_source,
            "final_eval": state.last_eval,
        }

    def print(self, *args, **kwargs):
        if self.accelerator.is_main_process:
            print(*args, **kwargs, flush=True)

    def metrics(self, step: int, metrics: dict) -> None:
        with self.writing():
            self.accelerator.log(metrics, step=step)  # tensorboard's writer thread's error surfaces at its flush here
            if self.accelerator.is_main_process:
                with open(self.run_dir.metrics, "a") as f:  # appended: a torn last line is skipped on reading
                    f.write(json.dumps({"step": step, **metrics}) + "\n")

    def evaluation(self, step: int, results: dict, samples: list[str]) -> None:
        self.metrics(step, results)
        values = (f"{k} {v:,}" if isinstance(v, int) else f"{k} {v:.4f}" for k, v in results.items())
        self.print(" | ".join([f"eval {step:5d}/{self.settings.max_steps}", *values]))
        for text in samples:
            self.print(f"  sample: {text!r}")
        main = self.accelerator.is_main_process
        reference = val_loss_reference(describe_data(self.settings.data_dir)) if main else None
        self.on_main_for_all(lambda: plot_curves(read_metrics(self.run_dir.metrics), self.run_dir.curves, reference))

    def finish(self) -> None:
        """Close the trackers (their last buffered writes happen here)."""
        with self.writing():
            self.accelerator.end_training()
