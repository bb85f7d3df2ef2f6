"""Train GPT-2 with Accelerate: from a laptop CPU (tiny-Shakespeare) to many GPUs (FineWeb-Edu 10B).

    .venv/bin/python train.py                         # the tiny preset on tiny-Shakespeare, minutes on a CPU
    accelerate launch train.py --preset gpt2-124m     # the GPT-2 (124M) reproduction
    accelerate launch --config_file accelerate_configs/8gpu.yaml train.py --preset gpt2-124m --resume auto

Settings: a preset fills them all, then `--config FILE` (YAML/JSON, the names below with underscores), then flags.
"""

import contextlib
import dataclasses
import functools
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor

from gpt2repro.attention import choose_attention
from gpt2repro.checkpoints import (
    CheckpointError,
    DiskSpaceError,
    SaveSchedule,
    any_rank,
    continue_command,
    discard_after,
    disk_space_problem,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from gpt2repro.errors import UserError, cli, first_line
from gpt2repro.export import load_pretrained, weights_source
from gpt2repro.hellaswag import HellaSwagDataError, load_hellaswag, score_hellaswag
from gpt2repro.launch import LostProcessError, lost_a_process, make_accelerator
from gpt2repro.model_card import PublishError, card_files, check_push_access, push_to_hub
from gpt2repro.optim import check_optimizer, flat_phase_end, learning_rate, make_optimizer, set_learning_rates
from gpt2repro.report import SAMPLE_PROMPT, write_report
from gpt2repro.resume import check_resume_optimizer, finished_run, hold_run_dir, resume_candidates
from gpt2repro.run_log import RunLog, RunState
from gpt2repro.settings import Settings, SettingsError, check_settings, parse_settings
from gpt2repro.token_shards import ShardedTokenLoader
from gpt2repro.tokenizer import load_tokenizer
from gpt2repro.validation import validation_loss
from modeling_gpt2repro import GPT2ReproForCausalLM


class DivergedError(UserError, RuntimeError):
    """Training produced non-finite steps in a row: the message says what to do."""


# ----------------------------------------------------------------------------------------------
# before the first step


def check_disk_space(s: Settings, model, accelerator) -> None:
    """Warn (refuse, with --require-disk) when the run directory's filesystem cannot hold the run's checkpoints."""
    saves = (s.max_steps - 1) // s.save_every if s.save_every else int(s.save_every_minutes > 0)  # none at the end
    flat = flat_phase_end(s)
    saves += bool(flat and not (s.save_every and flat % s.save_every == 0))
    kept = s.keep_checkpoints + bool(flat)  # the flat phase's end is kept besides --keep-checkpoints
    periodic = min(kept, saves) if s.keep_checkpoints else saves  # --keep-checkpoints 0 keeps all
    n_params = sum(p.numel() for p in model.parameters())
    problem = disk_space_problem(Path(s.run_dir), n_params, periodic)
    if problem and s.require_disk:
        raise DiskSpaceError(problem)
    if problem and accelerator.is_main_process:
        print(f"warning: {problem} (--require-disk refuses to start then)", flush=True)


def initial_model(s: Settings, model_config, checkpoints: list[Path], accelerator) -> GPT2ReproForCausalLM:
    """The model the first step trains: --init-from's weights (its size, checked by check_settings), or GPT-2's
    initialization; a resumed run loads its checkpoint over either, so it does not read the weights again."""
    if not s.init_from or checkpoints:
        return GPT2ReproForCausalLM(model_config)
    with accelerator.main_process_first():  # one download; the other ranks read it from the cache
        model = load_pretrained(s.init_from)
    if accelerator.is_main_process:
        print(f"weights from {weights_source(s.init_from)}; a fresh optimizer and learning-rate schedule", flush=True)
    return model


def prepare_default_data(s: Settings, accelerator) -> None:
    """The tiny default trains out of the box: tokenize the shipped corpus on first use."""
    if s.data_dir == Settings.data_dir and not Path(s.data_dir).exists():
        if accelerator.is_main_process:  # the command, not an import: an entry point never imports another
            command = [sys.executable, str(Path(__file__).with_name("prepare_data.py")), "--out", s.data_dir]
            if subprocess.run(command).returncode:
                raise SettingsError(f"could not prepare {s.data_dir} (see above); run {' '.join(command[1:])}")
        accelerator.wait_for_everyone()


# ----------------------------------------------------------------------------------------------
# optimization


def train_step(accelerator, model, train_model, optimizer, loader, s: Settings, lr: float, grad_accum_steps: int):
    """One optimizer step over total_batch_tokens: (mean loss, grad norm, whether the update was skipped), as tensors
    on the device. Nothing is read back here: a read stops the host until the GPU has caught up (see read_back)."""
    set_learning_rates(optimizer, lr, s)
    loss_sum = torch.zeros((), device=accelerator.device)
    for micro_step in range(grad_accum_steps):
        window = loader.next_batch(accelerator.device)  # (B, T+1); the next one is read and copied meanwhile
        # DDP all-reduces gradients only on the last micro-step
        sync = micro_step == grad_accum_steps - 1
        with contextlib.nullcontext() if sync else accelerator.no_sync(model):
            loss = train_model(input_ids=window[:, :-1], shift_labels=window[:, 1:]).loss
            accelerator.backward(loss / grad_accum_steps)  # mean over the whole step's tokens
        loss_sum += loss.detach()
    norm = accelerator.clip_grad_norm_(model.parameters(), s.grad_clip)
    if isinstance(norm, DTensor):  # FSDP2 with one mesh: the norm over all shards
        norm = norm.full_tensor()
    mean_loss = accelerator.reduce(loss_sum / grad_accum_steps, reduction="mean")
    skipped = ~(torch.isfinite(mean_loss) & torch.isfinite(norm))
    # One bad batch must not poison the weights: fused AdamW skips the whole update (moments and step count too)
    # on the device where found_inf is 1, the hook GradScaler uses; MuonAdamW (optim.py) does so for Muon's part.
    optimizer.optimizer.found_inf = skipped.float()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return mean_loss, norm, skipped


def read_back(accelerator, values: list, *flags: bool) -> tuple[list[float], list[bool]]:
    """`values` (device scalars, the same on every rank) and each flag, true when it is true on any rank, in one read
    from the device: the only one of a training step, made on the steps that log."""
    flags = torch.tensor(flags, dtype=torch.float32).to(accelerator.device, non_blocking=True)  # no sync: a copy
    flags = accelerator.reduce(flags, reduction="max")
    read = torch.cat([torch.stack(values).float(), flags]).tolist()
    return read[: len(values)], [flag > 0 for flag in read[len(values) :]]


# ----------------------------------------------------------------------------------------------
# evaluation, samples, checkpoints, logs


def evaluate(accelerator, model, tokenizer, s: Settings, val_tokens: int, hellaswag_items) -> dict:
    """Validation loss and bits per byte, and HellaSwag in both conventions, on the uncompiled module."""
    model.eval()
    # Ranks share the work; under FSDP, which gathers weights in each forward, they run as many forwards (padded).
    with torch.no_grad(), accelerator.autocast():
        results = validation_loss(model, s.data_dir, val_tokens, seq_len=s.seq_len, accelerator=accelerator)
        if hellaswag_items:
            scores = score_hellaswag(model, tokenizer, hellaswag_items, batch_size=16, accelerator=accelerator)
            scores.pop("per_item")
            results.update(scores)
    model.train()
    return results


def generate_samples(accelerator, model, tokenizer, s: Settings, step: int, count: int = 4) -> list[str]:
    """A few sampled continuations (KV cache), seeded per step, without touching the training RNG."""
    if not s.sample_tokens:
        return []
    model.eval()
    prompt = tokenizer(SAMPLE_PROMPT, return_tensors="pt").to(accelerator.device)
    with torch.random.fork_rng(devices=[accelerator.device] if accelerator.device.type == "cuda" else []):
        torch.manual_seed(s.seed + step)
        with torch.no_grad(), accelerator.autocast():
            out = model.generate(
                **prompt, max_new_tokens=s.sample_tokens, do_sample=True, top_k=50, num_return_sequences=count,
                pad_token_id=tokenizer.eos_token_id, use_cache=True,
            )
    model.train()
    return tokenizer.batch_decode(out, skip_special_tokens=True)


def load_hellaswag_items(s: Settings, accelerator, print0) -> list:
    """HellaSwag on every rank or on none (scoring gathers across ranks). `auto` downloads once, on the main
    process, and skips HellaSwag if that fails; a file named by --hellaswag must load."""
    limit = s.hellaswag_limit or None
    if s.hellaswag == "off":
        return []
    if s.hellaswag != "auto":
        return load_hellaswag(s.hellaswag, limit=limit)  # the same file fails the same way on every rank
    items, reason = [], "not available on another rank"
    with accelerator.main_process_first():  # the others read the main process's download from the cache
        try:
            items = load_hellaswag(None, limit=limit, flag="--hellaswag")
        except (OSError, HellaSwagDataError) as e:
            reason = first_line(e)
    if any_rank(accelerator, not items)[0]:
        print0(f"notice: HellaSwag skipped ({reason})")
        return []
    return items


def check_push(s: Settings, accelerator, print0) -> None:
    """--push-to-hub: the login and write access are checked now, on the main process, not after training."""
    if not s.push_to_hub:  # the same setting on every rank: all return here together
        return
    problem = None
    if accelerator.is_main_process:
        try:
            print0(check_push_access(s.push_to_hub, s.hub_private))
        except PublishError as e:
            problem = e
    if any_rank(accelerator, problem is not None)[0]:
        raise problem or PublishError(f"--push-to-hub {s.push_to_hub}: refused on the main process (see its error)")


def resume(accelerator, model, optimizer, candidates: list[Path], loader, run_dir: Path, print0) -> RunState:
    """Load the newest loadable checkpoint of `candidates` (newest first) and return its run state."""
    for checkpoint in candidates:
        problem = None
        try:
            saved = load_checkpoint(accelerator, checkpoint, model, optimizer)
            loader.load_state_dict(saved["train_loader"])
        except (CheckpointError, ValueError, KeyError) as e:
            problem = str(e) if isinstance(e, CheckpointError) else f"{checkpoint}: {e}"
        if any_rank(accelerator, problem is not None)[0]:  # every rank falls back together, or none does
            problem = problem or f"{checkpoint}: unloadable on another rank"
            if checkpoint == candidates[-1]:
                raise CheckpointError(problem)
            print0(f"warning: {problem}; trying the checkpoint before it")
            continue
        state = RunState(**{f.name: saved[f.name] for f in dataclasses.fields(RunState) if f.name in saved})
        print0(f"resumed from {checkpoint} at step {state.step} ({state.tokens_seen:,} tokens)")
        if accelerator.is_main_process:
            for later in discard_after(run_dir, state.step):  # in this run's directory, never the source's
                print0(f"removed {later}: after step {state.step}, on the branch this resume abandons")
        return state
    return RunState()


def save(accelerator, model, tokenizer, path: Path, state: RunState, loader, log: "RunLog") -> None:
    """A checkpoint, with the run's report (rewritten at each save) and the model card made from it: the facts
    go to the report, the report to the card, and the card and report files to the checkpoint writer."""
    trainer_state = {**dataclasses.asdict(state), "train_loader": loader.state_dict(),
                     "world_size": accelerator.num_processes, "optimizer": log.settings.optimizer}
    report = log.on_main_for_all(lambda: write_report(log.run_dir.path, log.facts(state)))  # every rank meets here
    files = None
    if accelerator.is_main_process:
        context = accelerator.unwrap_model(model).config.n_positions  # the card states it
        files = card_files(dict(report, context_length=context), log.settings.push_to_hub or None, log.run_dir.path)
    resume_with = continue_command(log.command, accelerator.num_processes)
    save_checkpoint(accelerator, model, path, trainer_state, tokenizer, files, resume_with)


# ----------------------------------------------------------------------------------------------


def main(argv=None):
    """The training, its run directory held from before its first write until it ends (hold_run_dir)."""
    with contextlib.ExitStack() as held:
        return training(argv, held)


def training(argv, held: contextlib.ExitStack):
    preset, s = parse_settings(argv, description=__doc__)
    accelerator = make_accelerator(s)
    device, world = accelerator.device, accelerator.num_processes
    prepare_default_data(s, accelerator)
    model_config, batch, val_tokens = check_settings(s, world)
    check_optimizer(s, accelerator.distributed_type)
    checkpoints = resume_candidates(s)
    if finished := finished_run(s, checkpoints, argv, world):
        return accelerator.print(finished)  # a rerun of a finished run (make demo twice) changes nothing
    check_resume_optimizer(s, checkpoints)
    check_push(s, accelerator, accelerator.print)  # seconds now, not after hours of training
    held.enter_context(hold_run_dir(s, accelerator))  # before the first write into it: resume may remove a branch

    model = initial_model(s, model_config, checkpoints, accelerator)
    check_disk_space(s, model, accelerator)
    attention, notice = choose_attention(s.attention, device)
    model.set_attn_implementation(attention)
    if notice and accelerator.is_main_process:
        print(notice, flush=True)
    optimizer = make_optimizer(model, s)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)  # uncompiled: evaluation, sampling, saving
    compile_model = s.compile if s.compile is not None else device.type == "cuda"
    train_model = torch.compile(model) if compile_model else model
    loader = ShardedTokenLoader(s.data_dir, "train", batch.size, s.seq_len, accelerator.process_index, world,
                                seed=s.seed)
    tokenizer = load_tokenizer()
    tokenizer.model_max_length = model_config.n_positions  # what the saved tokenizer tells its users
    log = RunLog(accelerator, s, preset, argv)
    state = resume(accelerator, model, optimizer, checkpoints, loader, log.run_dir.path, log.print)
    batch.resume_at(state.micro_batch_size, loader)
    hellaswag_items = load_hellaswag_items(s, accelerator, log.print)
    log.start(state, raw_model, model_config, batch, compile_model)
    flat = flat_phase_end(s)
    saves = SaveSchedule(s.save_every, s.save_every_minutes, (flat,) if flat else ())  # minutes count from here

    # =========================================== the loop ===========================================
    train_model.train()
    log_every = s.log_every or (1 if device.type == "cpu" else 10)
    bad_run = torch.zeros((), device=device)  # non-finite steps in a row, counted on the device
    last_log = (state.step, state.train_seconds)
    with StopRequest() as stop:
        while state.step < s.max_steps:
            t0 = time.perf_counter()
            lr = learning_rate(state.step, s)
            one_step = functools.partial(train_step, accelerator, model, train_model, optimizer, loader, s, lr)
            loss, norm, skipped = batch.step(one_step, loader, optimizer, log.print)  # auto: halved on out-of-memory
            if state.micro_batch_size != batch.size:  # settled: recorded in settings.yaml, the report, checkpoints
                state.micro_batch_size = s.micro_batch_size = batch.size
                log.write_settings()
            bad_run = (bad_run + 1) * skipped
            done = state.step + 1 == s.max_steps
            logs = done or (state.step + 1) % log_every == 0
            if logs:  # it waits for the device, so inside the step's time: dt and tok/s cover the steps since the last
                (loss, norm, bad), (stop_now, save_now) = read_back(
                    accelerator, [loss, norm, bad_run], stop.requested and not done, saves.due(state.step + 1)
                )
            state.advance(s.total_batch_tokens, time.perf_counter() - t0)
            if logs:
                state.bad_steps = int(bad)
                dt = (state.train_seconds - last_log[1]) / (state.step - last_log[0])
                last_log = (state.step, state.train_seconds)
                log.step(state, loss, lr, norm, dt)
                if state.bad_steps >= s.max_bad_steps:
                    raise DivergedError(f"{state.bad_steps} non-finite steps in a row at step {state.step}: training "
                                        "diverged; lower --lr or resume from an earlier checkpoint")
            else:  # stops and time-based saves wait for the next step that logs, as ranks must agree on them
                stop_now, save_now = False, saves.at_step(state.step)
            if not stop_now and (done or (s.eval_every and state.step % s.eval_every == 0)):  # a stop saves first
                state.last_eval = evaluate(accelerator, raw_model, tokenizer, s, val_tokens, hellaswag_items)
                samples = generate_samples(accelerator, raw_model, tokenizer, s, state.step)
                log.evaluation(state.step, state.last_eval, samples if accelerator.is_main_process else [])
            if not done and (stop_now or save_now):
                save(accelerator, model, tokenizer, log.run_dir.checkpoint(state.step), state, loader, log)
                saves.saved()
                if accelerator.is_main_process:
                    spare = log.run_dir.checkpoint(flat) if flat else None
                    prune_checkpoints(log.run_dir.path, s.keep_checkpoints, spare)
            if stop_now:
                log.print(f"stop requested: saved {log.run_dir.checkpoint(state.step)}; continue: --resume auto")
                break
    # ================================================================================================

    if state.step == s.max_steps:
        final = log.run_dir.final
        log.tick(state)
        save(accelerator, model, tokenizer, final, state, loader, log)
        log.print(f"final checkpoint: {final}\nreport: {log.run_dir.report_md} | curves: {log.run_dir.curves}")
    # A last barrier, waited on without the GIL: gloo's worker thread frees the previous collective's tensors, which
    # needs the GIL, and the process group's destructor (when the DDP model is freed) would otherwise wait for that
    # thread while holding the GIL: a hang at exit.
    accelerator.wait_for_everyone()
    log.finish()
    # After the barrier: an upload may take longer than --collective-timeout-minutes, and the other ranks are done.
    if state.step == s.max_steps and s.push_to_hub and accelerator.is_main_process:
        push_to_hub(log.run_dir.final, s.push_to_hub, private=s.hub_private, hub_format=s.hub_format)
        log.print(f"pushed to https://huggingface.co/{s.push_to_hub}")


class StopRequest:
    """SIGTERM (preemption) or Ctrl-C while training: finish the current step, save, exit 0. The previous
    handlers are back once the loop ends, so a caller of main() keeps its own Ctrl-C."""

    def __enter__(self):
        self.requested = False
        self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        self.requested = True


@cli
def run(argv=None):
    """main() as the command: the project's errors (UserError) end it with one line, as does a lost process."""
    try:
        main(argv)
    except RuntimeError as e:
        if isinstance(e, UserError) or not lost_a_process(e):
            raise
        detail = re.sub(r"^\[[^\]]*\]\s*", "", first_line(e, limit=1000)).split(". ")[0]  # no source path
        raise LostProcessError(
            f"rank {os.environ.get('RANK', '0')}: another process died or stopped answering ({detail}); continue "
            "from the newest checkpoint with --resume auto (accelerate launch --max_restarts N does so by itself)"
        ) from None


if __name__ == "__main__":
    run()
