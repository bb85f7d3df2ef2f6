"""Checkpoints and the run directory they live in: a `save_pretrained` folder that loads anywhere, plus
`training_state/` to resume exactly. RunDir names every file of a run directory.

    RUN_DIR/checkpoint-000500/      model.safetensors, config.json, the model code, tokenizer, card
            training_state/         Accelerate's save_state (optimizer, every rank's RNG)
                trainer_state.json  step, tokens, data position, timings, last evaluation
    RUN_DIR/final/                  the same, written when the run reaches max_steps

Each is written into a temp dir and renamed, so a kill -9 at any moment leaves the previous one intact,
and only renamed (complete) checkpoints are ever resumed from. trainer_state.json also holds the sha256 of
every other file of the checkpoint: a file changed on disk afterwards (a partial copy, a bad disk) is
refused on resume instead of loading whatever bytes are there. A save that fails for lack of space
removes its temp dir and names the newest intact checkpoint and the command that continues from it.
"""

import contextlib
import hashlib
import json
import logging
import os
import pickle
import re
import shlex
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from accelerate.utils import DistributedType
from safetensors import SafetensorError

from gpt2repro.errors import UserError, first_line
from gpt2repro.fileio import share_like, write_atomically, write_files
from gpt2repro.tokenizer import save_tokenizer

STATE_FILE = Path("training_state") / "trainer_state.json"
DIGESTS = "file_sha256"  # trainer_state.json's key: {path inside the checkpoint: sha256}
# What a checkpoint takes on disk per parameter: the fp32 weights twice (the model folder and training_state/, which
# Accelerate's save_state writes for itself) and AdamW's two fp32 moments.
CHECKPOINT_BYTES_PER_PARAMETER = 16
CHECKPOINT_OVERHEAD_BYTES = 16 * 2**20  # tokenizer, model code, card, RNG states
# How torch.save's zip writer reports a write that failed (then, on closing, the short file it left)
TORCH_WRITE_FAILURES = ("inline_container", "PytorchStreamWriter", "file write failed", "iostream error")


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be resumed from: the message says which and what to do."""


class CheckpointSaveError(CheckpointError):
    """A checkpoint that could not be written (a full disk, a file size limit): the message names the newest
    intact one and the command that continues from it."""


class DiskSpaceError(UserError, ValueError):
    """The run directory's filesystem cannot hold the run's checkpoints, and --require-disk was given."""


class RunDir:
    """A run's directory, and the one place where the name of each file in it is written:

        settings.yaml       the resolved settings (train.py)
        metrics.jsonl       one row per step and per evaluation (train.py)
        curves.png          drawn from the metrics (report.plot_curves)
        report.json/.md     the run report (report.py; run_report.py re-renders it)
        checkpoint-NNNNNN/  periodic checkpoints; final/ the last one
        eval_results.json   eval_hellaswag.py --output of the final checkpoint (scripts/reproduce_gpt2.py)
        .gpt2repro.lock     while a training writes here: who it is (dir_lock.py; gone when it ends)
        .gpt2repro.lock.guard  made when a crashed run's lock was set aside; stays (dir_lock.py)
    """

    SETTINGS = "settings.yaml"
    METRICS = "metrics.jsonl"
    CURVES = "curves.png"
    REPORT_JSON = "report.json"
    REPORT_MD = "report.md"
    CHECKPOINT_PREFIX = "checkpoint-"
    FINAL = "final"
    EVAL_RESULTS = "eval_results.json"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    settings = property(lambda self: self.path / self.SETTINGS)
    metrics = property(lambda self: self.path / self.METRICS)
    curves = property(lambda self: self.path / self.CURVES)
    report_json = property(lambda self: self.path / self.REPORT_JSON)
    report_md = property(lambda self: self.path / self.REPORT_MD)
    final = property(lambda self: self.path / self.FINAL)
    eval_results = property(lambda self: self.path / self.EVAL_RESULTS)

    def checkpoint(self, step: int) -> Path:
        return self.path / f"{self.CHECKPOINT_PREFIX}{step:06d}"

    def periodic_checkpoints(self) -> list[Path]:
        """The periodic checkpoint directories, complete or not, in name order."""
        return sorted(self.path.glob(f"{self.CHECKPOINT_PREFIX}*"))


def checkpoint_optimizer(checkpoint: Path) -> str:
    """The --optimizer `checkpoint` was trained with: its trainer state's record; for a checkpoint saved before that
    record, its run report's settings; adamw for one saved before --optimizer existed (every one was AdamW's)."""
    state = read_trainer_state(checkpoint)
    if "optimizer" in state:
        return state["optimizer"]
    try:
        return json.loads((Path(checkpoint) / RunDir.REPORT_JSON).read_text())["settings"].get("optimizer", "adamw")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "adamw"


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return RunDir(run_dir).checkpoint(step)


def read_trainer_state(checkpoint: Path) -> dict:
    try:
        return json.loads((Path(checkpoint) / STATE_FILE).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"{checkpoint}: unreadable {STATE_FILE} ({type(e).__name__}); resume from another checkpoint"
        ) from None


class SaveSchedule:
    """When a run saves: every `every_steps` steps, at each step of `also_at` (a WSD run's end of its flat phase),
    and once `every_minutes` passed since the last save (bounds the work a crash can lose); 0 turns either off.
    The steps' part depends on the step alone, so every rank agrees on it without a word; the time's part must be
    agreed on (train.py reads it back with the step's losses)."""

    def __init__(self, every_steps: int, every_minutes: float, also_at: tuple[int, ...] = ()):
        self.every_steps, self.every_minutes, self.also_at = every_steps, every_minutes, set(also_at)
        self.last_save = time.perf_counter()

    def at_step(self, step: int) -> bool:
        return bool(self.every_steps and step % self.every_steps == 0) or step in self.also_at

    def due(self, step: int) -> bool:
        by_time = self.every_minutes and time.perf_counter() - self.last_save >= 60 * self.every_minutes
        return self.at_step(step) or bool(by_time)

    def saved(self) -> None:
        self.last_save = time.perf_counter()


def save_checkpoint(accelerator, model, path: Path, trainer_state: dict, tokenizer=None,
                    files: dict[str, str | bytes | Path] | None = None,
                    resume_with: str = "the same command with --resume auto") -> None:
    """Every rank saves its part of the training state; the main process writes the model folder, the tokenizer
    and `files` (name: text, bytes, or a file to copy; e.g. the card and the run report), records every file's
    digest and renames the whole into place. A write that fails for lack of space (on any rank) raises
    CheckpointSaveError on every rank, the temp dir removed; `resume_with` is the command it says continues."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    with quiet_tied_weights_save():  # save_state writes the weights too
        failure = _disk_failure(accelerator.save_state, str(tmp / "training_state"))
    # every rank's files are written (or failed) before the main process goes on: this reduction is the barrier
    _stop_if_any_failed(accelerator, failure, path, tmp, resume_with)
    weights = accelerator.get_state_dict(model)  # every rank takes part: FSDP gathers the full weights to rank 0
    failure = None
    if accelerator.is_main_process:
        failure = _disk_failure(_write_model_folder, accelerator, model, weights, tmp, tokenizer, files,
                                trainer_state, path)
    _stop_if_any_failed(accelerator, failure, path, tmp, resume_with)


def _write_model_folder(accelerator, model, weights, tmp: Path, tokenizer, files, trainer_state: dict,
                        path: Path) -> None:
    model = accelerator.unwrap_model(model)
    if accelerator.is_fsdp2:
        model = unsharded_copy(model, weights)
    with quiet_tied_weights_save():
        model.save_pretrained(tmp, save_function=accelerator.save)
    share_like(tmp.glob("*.safetensors"), tmp / "config.json")
    if tokenizer is not None:  # GPT-2's files, for every transformers version, with the context the tokenizer says
        save_tokenizer(tmp, tokenizer.model_max_length)
    write_files(tmp, files or {})
    trainer_state = {**trainer_state, DIGESTS: file_digests(tmp)}
    write_atomically(tmp / STATE_FILE, json.dumps(trainer_state, indent=2))
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def _disk_failure(write, *args) -> str | None:
    """Run `write(*args)`; None if it succeeded, the reason if it failed as a full disk does. Other errors (a bug)
    keep their traceback. torch.save reports a short write as an enforce failure of its zip writer, safetensors
    as its own error naming the OS error."""
    try:
        write(*args)
    except OSError as e:
        return e.strerror or str(e)
    except SafetensorError as e:
        return first_line(e)
    except RuntimeError as e:
        message = first_line(e)
        if not any(sign in message for sign in TORCH_WRITE_FAILURES):
            raise
        return f"torch.save could not write its file: {message}"
    return None


def _stop_if_any_failed(accelerator, failure: str | None, path: Path, tmp: Path, resume_with: str) -> None:
    """Every rank learns whether any rank failed to write (else the others would wait for it in the next
    collective until the timeout); the main process removes the temp dir; every rank raises its one line."""
    if not any_rank(accelerator, failure is not None)[0]:
        return
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    raise CheckpointSaveError(f"could not write checkpoint {path} ({failure or 'a write failed on another rank'}): "
                              f"{after_a_full_disk(path.parent, resume_with)}")


def after_a_full_disk(run_dir: Path, resume_with: str) -> str:
    """What a write into the run directory that failed for space (a checkpoint, the metrics, a tracker's files)
    leaves, and how to go on: the newest intact checkpoint and the command that continues from it."""
    intact = complete_checkpoints(run_dir)
    newest = f"the newest intact checkpoint is {intact[-1]}" if intact else "no checkpoint of this run is intact yet"
    return (f"the disk is full or a file size limit was reached; {newest}; free space (or lower --keep-checkpoints), "
            f"then continue with: {resume_with}")


def continue_command(argv: list[str], processes: int = 1) -> str:
    """The command line that continues a run from its newest complete checkpoint: its own, with --resume auto."""
    return _command(_without(argv, ("--resume",)), processes, "--resume", "auto")


def extend_command(argv: list[str], checkpoint: Path, run_dir: Path, max_steps: int, processes: int = 1) -> str:
    """The command line that trains a run longer from `checkpoint`: its own, resumed from it into `run_dir` (a new
    one: the run it came from stays as it is) with --max-steps `max_steps`."""
    args = _without(argv, ("--resume", "--run-dir", "--max-steps"))
    return _command(args, processes, "--resume", str(checkpoint), "--run-dir", str(run_dir), "--max-steps",
                    str(max_steps))


def _without(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """`argv` less `options` and their values (given as `--name value` or `--name=value`)."""
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in options:
            skip = True
        elif not arg.startswith(tuple(f"{option}=" for option in options)):
            args.append(arg)
    return args


def _command(args: list[str], processes: int, *more: str) -> str:
    launcher = "accelerate launch <the same options>" if processes > 1 else "python"
    return f"{launcher} {shlex.join([*args, *more])}"


def file_digests(folder: Path) -> dict[str, str]:
    """{path inside `folder`: sha256} of every file but the trainer state (which holds them). A thread a file:
    hashlib releases the GIL, so the weights and the optimizer state are hashed on several cores at once."""
    folder = Path(folder)
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    names = [name for name in names if name != STATE_FILE.as_posix()]

    def digest(name: str) -> str:
        with open(folder / name, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()

    with ThreadPoolExecutor(max_workers=min(8, len(names) or 1)) as pool:
        return dict(zip(names, pool.map(digest, names)))


def verify_checkpoint(checkpoint: Path, state: dict) -> None:
    """Refuse a checkpoint whose files are not the ones saved: changed, truncated or missing since. Checkpoints
    written before digests were recorded pass."""
    checkpoint = Path(checkpoint)
    saved = state.get(DIGESTS)
    if not isinstance(saved, dict):
        return
    found = file_digests(checkpoint)
    for name, digest in saved.items():
        if found.get(name) != digest:
            what = "is missing" if name not in found else "differs from the file saved (its sha256 changed)"
            raise CheckpointError(
                f"{checkpoint}: {name} {what}: the checkpoint was changed on disk after it was written (a partial "
                "copy, a bad disk); resume from another checkpoint (--resume auto picks the one before) or copy "
                "it again"
            )


def checkpoint_bytes(n_parameters: int) -> int:
    """About what one checkpoint of a model with `n_parameters` takes on disk."""
    return CHECKPOINT_BYTES_PER_PARAMETER * n_parameters + CHECKPOINT_OVERHEAD_BYTES


def disk_space_problem(run_dir: Path, n_parameters: int, periodic: int) -> str | None:
    """Whether the run directory's filesystem can hold the run's checkpoints: `periodic` kept ones, then final/ or
    the temp copy of the one being written, less the checkpoints already there. None if they fit, else why not."""
    run_dir = Path(run_dir)
    slots = periodic + 1
    existing = len(complete_checkpoints(run_dir)) if run_dir.is_dir() else 0
    each, missing = checkpoint_bytes(n_parameters), max(0, slots - existing)
    where = run_dir
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    if missing * each <= free:
        return None
    kept = f"{periodic} kept (--keep-checkpoints), " if periodic else ""
    return (
        f"the run's checkpoints need about {missing * each / 1e9:.1f} GB ({missing} x {each / 1e9:.2f} GB: {kept}"
        f"final/ and the one being written) but {where} has {free / 1e9:.1f} GB free; free space, lower "
        "--keep-checkpoints or choose another --run-dir"
    )


class _TiedWeightsNotice(logging.Filter):
    """Drops Accelerate's "Removed shared tensor {'lm_head.weight'} while saving ... check" warning: lm_head shares
    wte's storage by design (tie_word_embeddings), and save_pretrained writes it once on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()  # "[RANK 0] Removed shared tensor {...} while saving. ..."
        if "Removed shared tensor" not in message:
            return True
        names = re.findall(r"'([^']+)'", message.split("Removed shared tensor", 1)[1].split(" while saving")[0])
        return not set(names) <= TIED_KEYS


TIED_KEYS = {"lm_head.weight"}


@contextlib.contextmanager
def quiet_tied_weights_save():
    """During one save only: no warning about the tied lm_head (any other shared tensor still warns), and no
    "Writing model shards" progress bar for a model that fits one shard."""
    from transformers.utils import logging as transformers_logging

    accelerate_logger = logging.getLogger("accelerate.utils.other")
    notice = _TiedWeightsNotice()
    accelerate_logger.addFilter(notice)
    bar_was_on = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        accelerate_logger.removeFilter(notice)
        if bar_was_on:
            transformers_logging.enable_progress_bar()


def unsharded_copy(model, weights: dict):
    """A plain instance of an FSDP2-wrapped model holding the gathered `weights`. FSDP2 changes the model's class to
    FSDP<Class>: saved as is, the folder would name that class in auto_map and ship torch's FSDP source instead of
    the model's code, and the tied lm_head (a separate gathered copy) would be written twice."""
    from torch.distributed.fsdp import FSDPModule  # torch >= 2.6, as FSDP2 itself

    plain_class = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))
    with torch.device("meta"):  # no memory, no initialization: every weight comes from `weights`
        plain = plain_class(model.config)
    plain.load_state_dict(weights, assign=True)
    plain.tie_weights()
    return plain


def checkpoint_steps(run_dir: Path, include_final: bool = True) -> dict[Path, int]:
    """{checkpoint: step} of those whose rename happened (temp dirs are ignored) and whose state reads, oldest first."""
    run_dir = RunDir(run_dir)
    steps = {}
    for path in [*run_dir.periodic_checkpoints(), *([run_dir.final] if include_final else [])]:
        try:
            steps[path] = read_trainer_state(path)["step"]
        except (CheckpointError, KeyError, TypeError):
            continue
    return dict(sorted(steps.items(), key=lambda item: item[1]))


def complete_checkpoints(run_dir: Path, include_final: bool = True) -> list[Path]:
    """Complete checkpoints, oldest first."""
    return list(checkpoint_steps(run_dir, include_final))


def discard_after(run_dir: Path, step: int) -> list[Path]:
    """Remove the checkpoints (final included) of steps after `step`: when a run resumes from an earlier
    checkpoint, the later ones belong to the branch it abandons and must not be resumed from or kept instead."""
    later = [path for path, saved_step in checkpoint_steps(run_dir).items() if saved_step > step]
    for path in later:
        shutil.rmtree(path, ignore_errors=True)
    return later


def prune_checkpoints(run_dir: Path, keep: int, spare: Path | None = None) -> None:
    """Keep the newest `keep` periodic checkpoints (final is never pruned), and `spare` besides (a WSD run's last
    checkpoint of its flat phase: the one a longer run continues from)."""
    periodic = [p for p in complete_checkpoints(run_dir, include_final=False) if p != spare]
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
            f"--resume {path}: not a complete checkpoint (no {STATE_FILE}); use a {RunDir.CHECKPOINT_PREFIX}* dir or "
            "'auto'"
        )
    return [path]


def load_checkpoint(accelerator, checkpoint: Path, model, optimizer) -> dict:
    """Restore weights, optimizer and RNG into the prepared objects; return the trainer state. A checkpoint
    written by FSDP resumes under DDP (or one process) and the reverse: it is converted on the way in. The main
    process checks the files' digests first, and every rank refuses the checkpoint together if they differ."""
    state = read_trainer_state(checkpoint)
    problem = None
    if accelerator.is_main_process:
        try:
            verify_checkpoint(checkpoint, state)
        except CheckpointError as e:
            problem = str(e)
    if any_rank(accelerator, problem is not None)[0]:
        raise CheckpointError(problem or f"{checkpoint}: its files differ from those saved (checked on the main "
                              "process); resume from another checkpoint")
    training_state = Path(checkpoint) / "training_state"
    try:
        if written_by_fsdp(training_state) == (accelerator.distributed_type == DistributedType.FSDP):
            accelerator.load_state(str(training_state))
        else:
            load_other_layout(accelerator, Path(checkpoint), model, optimizer)
    except torch.OutOfMemoryError:
        raise
    # truncated safetensors or pickles, missing files, another model's shapes: the checkpoint is unloadable
    except (OSError, EOFError, KeyError, ValueError, RuntimeError, pickle.UnpicklingError, SafetensorError) as e:
        raise CheckpointError(
            f"{checkpoint}: cannot load its training state ({first_line(e, with_type=True)}); "
            "resume from another checkpoint or start afresh"
        ) from e
    return state


def any_rank(accelerator, *flags: bool) -> list[bool]:
    """Each flag, true when it is true on any rank: decisions every rank takes together (with more than one process,
    also a barrier)."""
    if accelerator.num_processes == 1:
        return [bool(flag) for flag in flags]
    values = torch.tensor([float(flag) for flag in flags], device=accelerator.device)
    return (accelerator.reduce(values, reduction="max") > 0).tolist()


def written_by_fsdp(training_state: Path) -> bool:
    """Whether Accelerate wrote this training state under FSDP (pytorch_model_fsdp*) rather than DDP or one process."""
    return any(training_state.glob("pytorch_model_fsdp*"))


def load_other_layout(accelerator, checkpoint: Path, model, optimizer) -> None:
    """Load a checkpoint written under the other layout through torch's layout-free state dicts: the weights from
    the model folder (whole in both), the optimizer from FSDP's shards or DDP's whole file, the RNG as saved."""
    import torch.distributed.checkpoint as dcp
    from accelerate.checkpointing import load_accelerator_state
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions, get_optimizer_state_dict, set_model_state_dict, set_optimizer_state_dict,
    )

    whole = StateDictOptions(full_state_dict=True, strict=False)  # strict=False: the tied lm_head is not in the file
    set_model_state_dict(model, load_file(checkpoint / "model.safetensors"), options=whole)
    training_state = checkpoint / "training_state"
    if (training_state / "optimizer_0").is_dir():  # FSDP's shards: DCP re-shards them to what this run holds
        optimizer_state = get_optimizer_state_dict(model, optimizer)
        dcp.load({"optimizer": optimizer_state}, checkpoint_id=training_state / "optimizer_0")
        set_optimizer_state_dict(model, optimizer, optimizer_state)
    else:  # torch's own format numbers parameters in the optimizer's order, the same in every layout: name them
        saved = torch.load(training_state / "optimizer.bin", map_location="cpu", weights_only=True)
        names = {id(p): name for name, p in accelerator.unwrap_model(model).named_parameters()}
        order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
        optimizer_state = {
            "state": {order[i]: value for i, value in saved["state"].items()},
            "param_groups": [
                {**group, "params": [order[i] for i in group["params"]]} for group in saved["param_groups"]
            ],
        }
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=StateDictOptions(full_state_dict=True))
    load_accelerator_state(training_state, [], [], [], [], accelerator.process_index)  # the RNG only


__all__ = [
    "STATE_FILE", "CheckpointError", "CheckpointSaveError", "DiskSpaceError", "RunDir", "SaveSchedule",
    "checkpoint_bytes", "checkpoint_optimizer", "checkpoint_path", "complete_checkpoints", "continue_command",
    "discard_after", "disk_space_problem", "extend_command", "file_digests", "find_resume_checkpoint",
    "load_checkpoint", "prune_checkpoints", "read_trainer_state", "save_checkpoint", "verify_checkpoint",
]
