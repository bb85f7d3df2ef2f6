"""Checkpoints: a `save_pretrained` folder that loads anywhere, plus `training_state/` to resume exactly.

    RUN_DIR/checkpoint-000500/      model.safetensors, config.json, the model code, tokenizer, card
            training_state/         Accelerate's save_state (optimizer, every rank's RNG)
                trainer_state.json  step, tokens, data position, timings, last evaluation
    RUN_DIR/final/                  the same, written when the run reaches max_steps

Each is written into a temp dir and renamed, so a kill -9 at any moment leaves the previous one intact,
and only renamed (complete) checkpoints are ever resumed from.
"""

import json
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError

STATE_FILE = Path("training_state") / "trainer_state.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from: the message says which and what to do."""


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"checkpoint-{step:06d}"


def read_trainer_state(checkpoint: Path) -> dict:
    try:
        return json.loads((Path(checkpoint) / STATE_FILE).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"{checkpoint}: unreadable {STATE_FILE} ({type(e).__name__}); resume from another checkpoint"
        ) from None


def save_checkpoint(accelerator, model, path: Path, trainer_state: dict, extras: Callable[[Path], None] = None):
    """Every rank saves its part of the training state; the main process writes the model folder, calls
    `extras(folder)` (tokenizer, card) and renames the whole into place."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp / "training_state"))
    accelerator.wait_for_everyone()  # every rank's files are written before the main process renames the folder
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(tmp, save_function=accelerator.save)
        if extras is not None:
            extras(tmp)
        state_file = tmp / STATE_FILE
        state_file.with_name(state_file.name + ".tmp").write_text(json.dumps(trainer_state, indent=2))
        os.replace(state_file.with_name(state_file.name + ".tmp"), state_file)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    accelerator.wait_for_everyone()


def complete_checkpoints(run_dir: Path, include_final: bool = True) -> list[Path]:
    """Checkpoints whose rename happened (temp dirs are ignored) and whose state reads, oldest first."""
    run_dir = Path(run_dir)
    candidates = [*run_dir.glob("checkpoint-*"), *([run_dir / "final"] if include_final else [])]
    steps = {}
    for path in candidates:
        try:
            steps[path] = read_trainer_state(path)["step"]
        except (CheckpointError, KeyError, TypeError):
            continue
    return sorted(steps, key=steps.get)


def discard_after(run_dir: Path, step: int) -> list[Path]:
    """Remove the checkpoints (final included) of steps after `step`: when a run resumes from an earlier
    checkpoint, the later ones belong to the branch it abandons and must not be resumed from or kept instead."""
    later = [p for p in complete_checkpoints(run_dir) if read_trainer_state(p)["step"] > step]
    for path in later:
        shutil.rmtree(path, ignore_errors=True)
    return later


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Keep the newest `keep` periodic checkpoints (final is never pruned)."""
    periodic = complete_checkpoints(run_dir, include_final=False)
    for old in periodic[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def find_resume_checkpoint(setting: str, run_dir: Path) -> list[Path]:
    """What `--resume` names, newest first: [] for a fresh run, all complete checkpoints for `auto` (a
    corrupt newest one falls back to the one before), or the one directory given."""
    if not setting:
        return []
    if setting == "auto":
        return complete_checkpoints(run_dir)[::-1]
    path = Path(setting)
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(
            f"--resume {path}: not a complete checkpoint (no {STATE_FILE}); use a checkpoint-* dir or 'auto'"
        )
    return [path]


def load_checkpoint(accelerator, checkpoint: Path) -> dict:
    """Restore weights, optimizer and RNG into the prepared objects; return the trainer state."""
    state = read_trainer_state(checkpoint)
    try:
        accelerator.load_state(str(Path(checkpoint) / "training_state"))
    except torch.OutOfMemoryError:
        raise
    # truncated safetensors or pickles, missing files, another model's shapes: the checkpoint is unloadable
    except (OSError, EOFError, KeyError, ValueError, RuntimeError, pickle.UnpicklingError, SafetensorError) as e:
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{checkpoint}: cannot load its training state ({type(e).__name__}: {reason}); "
            "resume from another checkpoint or start afresh"
        ) from e
    return state


__all__ = [
    "STATE_FILE", "CheckpointError", "checkpoint_path", "complete_checkpoints", "discard_after",
    "find_resume_checkpoint", "load_checkpoint", "prune_checkpoints", "read_trainer_state", "save_checkpoint",
]
