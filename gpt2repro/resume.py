"""Where a run continues from, and who may write its directory: the checkpoints to resume from (--resume, torch
elastic restarts), what a rerun of a finished run says (and how to train it longer), the optimizer a checkpoint was
trained with, and the run directory held by one training at a time."""

import contextlib
from collections.abc import Iterator
from pathlib import Path

from gpt2repro.checkpoints import (
    CheckpointError,
    RunDir,
    any_rank,
    checkpoint_optimizer,
    complete_checkpoints,
    extend_command,
    find_resume_checkpoint,
    read_trainer_state,
)
from gpt2repro.dir_lock import DirectoryInUseError, exclusive
from gpt2repro.launch import restart_count
from gpt2repro.optim import flat_phase_end
from gpt2repro.run_log import train_command
from gpt2repro.settings import Settings, SettingsError


# A torch elastic restart may start on another node before the replaced process's lock is released there (a lost
# node's lock on a network filesystem lasts until its lease runs out): it waits this long before refusing.
RESTART_LOCK_WAIT_SECONDS = 120


@contextlib.contextmanager
def hold_run_dir(s: Settings, accelerator) -> Iterator[None]:
    """One training at a time in a run directory: the main process holds its lock (gpt2repro/dir_lock.py) until the
    run ends, however it ends; if it cannot, every rank stops with the main process's line."""
    restarted = restart_count() > 0
    with contextlib.ExitStack() as held:
        problem = None
        if accelerator.is_main_process:
            try:
                held.enter_context(exclusive(s.run_dir, "--run-dir", "use another --run-dir",
                                             wait=RESTART_LOCK_WAIT_SECONDS if restarted else 0))
            except DirectoryInUseError as e:
                problem = e
        if any_rank(accelerator, problem is not None)[0]:
            raise problem or DirectoryInUseError(f"--run-dir {s.run_dir}: in use (see the main process's error)")
        yield


def resume_candidates(s: Settings) -> list[Path]:
    """The checkpoints to resume from, newest first. A group that torch elastic restarted after losing a rank
    continues from the run's own newest checkpoint (else from where its first start did); a fresh run never mixes
    into another run's directory."""
    restarted = restart_count() > 0
    own = find_resume_checkpoint("auto", s.run_dir) if restarted else []
    if not s.resume and not restarted and complete_checkpoints(s.run_dir):
        raise SettingsError(f"--run-dir {s.run_dir} holds another run's checkpoints; continue it with --resume auto, "
                            "or choose another --run-dir")
    return own or find_resume_checkpoint(s.resume, s.run_dir)


def finished_run(s: Settings, candidates: list[Path], argv=None, processes: int = 1) -> str | None:
    """What to say when the checkpoint to resume from is this run's own final one at --max-steps: the run is done,
    and resuming would re-save it, re-measure it and rewrite its report. How to train it longer: a cosine run
    resumes with a larger --max-steps; a WSD run's final/ has cooled down, so the longer run starts from the end of
    its flat phase, in a new run directory (this one keeps the finished run)."""
    run_dir = RunDir(s.run_dir)
    if not candidates or candidates[0] != run_dir.final:
        return None
    step = read_trainer_state(run_dir.final).get("step", -1)
    if step < s.max_steps:
        return None
    done = (f"{s.run_dir} is finished: {run_dir.final} holds step {step} of "
            f"--max-steps {s.max_steps}; nothing to do, no file changed.\nreport: {run_dir.report_md} | curves: "
            f"{run_dir.curves}\n")
    if (flat := flat_phase_end(s)) is None:
        return done + "to train longer, raise --max-steps; to start afresh, use another --run-dir"
    flat_checkpoint = run_dir.checkpoint(flat)
    if flat_checkpoint not in complete_checkpoints(s.run_dir, include_final=False):
        return done + (f"its flat phase's last checkpoint ({flat_checkpoint}) is gone, and final/ has cooled down: "
                       "to train longer, start afresh in another --run-dir with a larger --max-steps")
    longer = 2 * s.max_steps
    command = extend_command(train_command(argv), flat_checkpoint, Path(f"{s.run_dir}-{longer}"), longer, processes)
    return done + (f"to train longer (final/ has cooled down), continue from the end of its flat phase, "
                   f"{flat_checkpoint}, into a new --run-dir with any larger --max-steps:\n  {command}")


def check_resume_optimizer(s: Settings, candidates: list[Path]) -> None:
    """Refuse, in one line, to resume a checkpoint trained with the other --optimizer (its state has other groups:
    every load would fail). The newest readable candidate is the one resume() loads, or falls back from."""
    for checkpoint in candidates:
        try:
            trained = checkpoint_optimizer(checkpoint)
        except CheckpointError:
            continue  # unreadable: resume() falls back past it and says so
        if trained != s.optimizer:
            raise SettingsError(f"{checkpoint} was trained with --optimizer {trained}; pass --optimizer {trained} to "
                                "continue it")
        return
