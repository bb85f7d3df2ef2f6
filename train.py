"""Train GPT-2 with Accelerate: from a laptop CPU (tiny-Shakespeare) to many GPUs (FineWeb-Edu 10B).

    python train.py                                   # the tiny preset on tiny-Shakespeare, minutes on a CPU
    accelerate launch train.py --preset gpt2-124m     # the GPT-2 (124M) reproduction
    accelerate launch --config_file accelerate_configs/8gpu.yaml train.py --preset gpt2-124m --resume auto

Settings: one dataclass below; a preset fills it, then `--config FILE` (YAML/JSON), then flags.
"""

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, InitProcessGroupKwargs, set_seed

from checkpoints import (
    CheckpointError,
    checkpoint_path,
    find_resume_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from configuration_gpt2repro import GPT2ReproConfig
from eval_hellaswag import HellaSwagDataError, load_hellaswag, score_hellaswag
from modeling_gpt2repro import GPT2ReproForCausalLM
from prepare_data import data_dir_for
from throughput import device_peak_flops, flops_per_token, keep_freed_memory_for_reuse, mfu
from token_shards import ShardedTokenLoader, ShardError, check_tokenizer
from tokenization_gpt2repro import load_tokenizer
from validation import ValidationError, resolve_val_tokens, validation_loss

GPT2_124M_FINEWEB_EDU_VAL_LOSS = 3.2924  # official GPT-2 124M on FineWeb-Edu val (build-nanogpt)
GPT2_124M_HELLASWAG = 0.2955  # official GPT-2 124M, completion-style acc_norm
SAMPLE_PROMPT = "Hello, I'm a language model,"


@dataclass
class Settings:
    # what to train, on what, where to write
    model: str = "tiny"  # size preset (configuration_gpt2repro): tiny, gpt2-124m, gpt2-350m, gpt2-774m, gpt2-1558m
    data_dir: str = str(data_dir_for("tinyshakespeare"))  # prepare_data.py output
    run_dir: str = ""  # "": runs/<preset>
    # token layout of each optimizer step: total = micro-batch x seq-len x processes x accumulation
    total_batch_tokens: int = 4_096
    micro_batch_size: int = 16
    seq_len: int = 256
    # optimization: AdamW, linear warmup then cosine to min_lr_ratio x lr
    max_steps: int = 150  # two epochs of tiny-Shakespeare
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.1  # on >=2-D parameters only
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    # evaluation, samples, checkpoints
    eval_every: int = 50  # validation loss, HellaSwag and samples; 0 = only at the end
    val_tokens: int = 0  # targets of the val split scored at each evaluation; 0 = all of it (validation.py)
    hellaswag: str = "off"  # off | auto (cached or downloaded, skipped if unavailable) | path to a jsonl
    hellaswag_limit: int = 0  # 0 = all items
    sample_tokens: int = 32
    save_every: int = 0  # steps; 0 = only the final checkpoint
    save_every_minutes: float = 0.0  # also save once this much time passed since the last save: bounds lost work
    keep_checkpoints: int = 2
    resume: str = ""  # "" | auto | a checkpoint directory (a torch-elastic restart resumes as auto by itself)
    push_to_hub: str = ""  # a Hub repo id for the final checkpoint
    hub_private: bool = False  # create that repo private
    # system
    seed: int = 1337
    mixed_precision: str = "auto"  # auto (bf16 where the hardware has it) | bf16 | fp16 | no
    compile: bool | None = None  # None: on with CUDA
    log_with: str = "tensorboard"  # Accelerate tracker: tensorboard | wandb | trackio | none
    max_bad_steps: int = 5  # abort after this many non-finite steps in a row
    collective_timeout_minutes: float = 10.0  # a rank that stops answering ends the others after this long
    gpu_hour_usd: float = 3.0  # the report's cost estimate (nanochat's 8xH100 node at $24/h)


# Training presets, named like every preset in this project: the model size they train, then what differs.
GPT2_124M = dict(  # build-nanogpt's GPT-2 (124M) recipe: 10B FineWeb-Edu tokens, 0.5M-token batches
    model="gpt2-124m", data_dir=str(data_dir_for("fineweb-edu-10b")), total_batch_tokens=524_288,
    micro_batch_size=64, seq_len=1024, max_steps=19_073, lr=6e-4, warmup_steps=715, eval_every=250,
    hellaswag="auto", save_every=5000, save_every_minutes=30.0,
)
PRESETS = {
    "tiny": {},
    "gpt2-124m": GPT2_124M,
    "gpt2-124m-40b": {**GPT2_124M, "max_steps": 76_292},  # four epochs of the 10B sample, as llm.c's longer runs
    "gpt2-124m-fineweb": {**GPT2_124M, "data_dir": str(data_dir_for("fineweb-10b"))},  # vs the FineWeb 3.28 target
    "gpt2-350m": {**GPT2_124M, "model": "gpt2-350m", "micro_batch_size": 32, "lr": 3e-4},  # GPT-3 paper's 350M lr
}


class SettingsError(ValueError):
    """A setting that cannot work: the message says which and what to do instead."""


class DivergedError(RuntimeError):
    """Training produced non-finite steps in a row: the message says what to do."""


@dataclass
class RunState:
    """What changes as the run goes. Saved in every checkpoint, so a resumed run carries all of it on."""

    step: int = 0
    tokens_seen: int = 0
    train_seconds: float = 0.0  # inside optimizer steps, over every start and resume
    total_seconds: float = 0.0  # wall time, evaluation and saving included, over every start and resume
    last_eval: dict = field(default_factory=dict)
    bad_steps: int = 0  # non-finite steps in a row


# ----------------------------------------------------------------------------------------------
# settings


def parse_settings(argv=None) -> tuple[str, Settings]:
    """(preset name, settings): the preset, then --config FILE, then flags."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", type=str.lower, choices=sorted(PRESETS))
    parser.add_argument("--config", help="YAML or JSON file of settings (overrides the preset)")
    for f in dataclasses.fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, bool | None):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            parser.add_argument(flag, type=f.type if f.type in (int, float) else str, default=None)
    args = parser.parse_args(argv)

    values = dict(PRESETS[args.preset])
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise SettingsError(f"--config {path}: no such file")
        loaded = yaml.safe_load(path.read_text()) or {}  # YAML is a superset of JSON
        unknown = set(loaded) - {f.name for f in dataclasses.fields(Settings)}
        if unknown:
            raise SettingsError(f"--config {path}: unknown settings {sorted(unknown)}")
        values.update(loaded)
    values.update({k: v for k, v in vars(args).items() if k not in ("preset", "config") and v is not None})
    values["run_dir"] = values.get("run_dir") or f"runs/{args.preset}"
    return args.preset, Settings(**values)


def check_settings(s: Settings, world_size: int) -> tuple[GPT2ReproConfig, int, int]:
    """Refuse settings that cannot work, up front; return the model config, the gradient accumulation steps
    and the number of validation targets."""
    for name in ("max_steps", "micro_batch_size", "seq_len", "total_batch_tokens"):
        if getattr(s, name) <= 0:
            raise SettingsError(f"--{name.replace('_', '-')} must be positive")
    try:
        model_config = GPT2ReproConfig.from_preset(s.model)
    except ValueError as e:
        raise SettingsError(f"--model: {e}") from None
    if s.seq_len > model_config.n_positions:
        raise SettingsError(
            f"--seq-len {s.seq_len} exceeds the model's context ({model_config.n_positions}); lower --seq-len"
        )
    tokens_per_micro_step = s.micro_batch_size * s.seq_len * world_size
    if s.total_batch_tokens % tokens_per_micro_step:
        raise SettingsError(
            f"--total-batch-tokens {s.total_batch_tokens} is not a multiple of micro-batch x seq-len x processes "
            f"= {s.micro_batch_size} x {s.seq_len} x {world_size} = {tokens_per_micro_step}; use a multiple of it"
        )
    if not Path(s.data_dir).is_dir():
        raise SettingsError(f"--data-dir {s.data_dir}: no such directory; create it with python prepare_data.py")
    check_tokenizer(s.data_dir)  # shards from another tokenizer would train on the wrong ids
    val_tokens = resolve_val_tokens(s.data_dir, s.val_tokens)
    if s.hellaswag not in ("off", "auto") and not Path(s.hellaswag).is_file():
        raise SettingsError(f"--hellaswag {s.hellaswag}: no such file; pass a hellaswag jsonl, 'auto' or 'off'")
    return model_config, s.total_batch_tokens // tokens_per_micro_step, val_tokens


def mixed_precision_for(setting: str) -> str:
    """bf16 where the hardware computes it natively (Ampere+ GPUs, CPUs with AVX512-BF16/AMX), else fp32."""
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "no"
    return "bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "no"


def make_accelerator(s: Settings) -> Accelerator:
    # Without GPUs, several processes are DDP over gloo on the CPU; Accelerate needs cpu=True to pick that.
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    # A lost rank leaves the others waiting in a collective: end them after this long, not the default 30 minutes.
    timeout = datetime.timedelta(minutes=s.collective_timeout_minutes)
    start_restarted_group(timeout)
    accelerator = Accelerator(
        mixed_precision=mixed_precision_for(s.mixed_precision), log_with=None if s.log_with == "none" else s.log_with,
        project_dir=s.run_dir, cpu=multi_cpu, kwargs_handlers=[InitProcessGroupKwargs(timeout=timeout)],
    )
    if multi_cpu and os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        keep_fsdp(accelerator)
    if accelerator.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: free speed for the fp32 parts
        torch.backends.cudnn.allow_tf32 = True
    elif accelerator.device.type == "cpu":
        keep_freed_memory_for_reuse()  # no page faults re-zeroing each step's buffers (benchmarks/RESULTS.md)
    set_seed(s.seed)  # the same initial weights on every rank
    return accelerator


def start_restarted_group(timeout: datetime.timedelta) -> None:
    """Start the process group of a torch-elastic restart on keys of its own. torch stopped scoping the group's keys
    by attempt when its c10d rendezvous began making a new store for each restart (pytorch#135712), but the static
    rendezvous (Accelerate's default) keeps one store: a restarted rank can read a dead rank's address and fail to
    connect. Accelerate then finds the group started and uses it."""
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if attempt == "0" or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return
    store = torch.distributed.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                       timeout=timeout)
    torch.distributed.init_process_group(
        store=torch.distributed.PrefixStore(f"gpt2repro-restart-{attempt}", store), rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]), timeout=timeout,
    )


def keep_fsdp(accelerator) -> None:
    """Accelerate silently turns an FSDP launch into DDP without GPUs; keep FSDP, so that it runs (and is tested)
    on CPU processes over gloo too."""
    plugin = FullyShardedDataParallelPlugin()  # from the launcher's environment, as Accelerator reads it
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    accelerator.state.fsdp_plugin = plugin
    for state in (PartialState(), accelerator.state):  # both, as Accelerate's own FSDP set-up does
        state.distributed_type = DistributedType.FSDP


def prepare_default_data(s: Settings, accelerator) -> None:
    """The tiny default trains out of the box: tokenize the shipped corpus on first use."""
    if s.data_dir == Settings.data_dir and not Path(s.data_dir).exists():
        if accelerator.is_main_process:
            import prepare_data

            prepare_data.main(["--out", s.data_dir])
        accelerator.wait_for_everyone()


# ----------------------------------------------------------------------------------------------
# optimization


def learning_rate(step: int, s: Settings) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio * lr at max_steps. Set by hand each step, so
    it cannot be stretched by the number of processes (Accelerate's prepared schedulers can)."""
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    progress = min(1.0, (step - s.warmup_steps) / max(1, s.max_steps - s.warmup_steps))
    min_lr = s.lr * s.min_lr_ratio
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (s.lr - min_lr)


def make_optimizer(model, s: Settings, device: torch.device) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices and embeddings only (>=2-D), never on biases and LayerNorms."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": s.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=s.lr, betas=(s.beta1, s.beta2), eps=1e-8, fused=device.type == "cuda"
    )


def train_step(accelerator, model, train_model, optimizer, loader, s: Settings, lr: float, grad_accum_steps: int):
    """One optimizer step over total_batch_tokens: (mean loss, grad norm, whether the update was applied)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss_sum = torch.zeros((), device=accelerator.device)
    for micro_step in range(grad_accum_steps):
        window = loader.next_batch().to(accelerator.device, non_blocking=True)  # (B, T+1)
        # DDP all-reduces gradients only on the last micro-step
        sync = micro_step == grad_accum_steps - 1
        with contextlib.nullcontext() if sync else accelerator.no_sync(model):
            loss = train_model(input_ids=window[:, :-1], shift_labels=window[:, 1:]).loss
            accelerator.backward(loss / grad_accum_steps)  # mean over the whole step's tokens
        loss_sum += loss.detach()
    norm = accelerator.clip_grad_norm_(model.parameters(), s.grad_clip).item()
    mean_loss = accelerator.reduce(loss_sum / grad_accum_steps, reduction="mean").item()
    finite = math.isfinite(mean_loss) and math.isfinite(norm)
    if finite:  # else skip the update: one bad batch must not poison the weights
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if accelerator.device.type == "cuda":
        torch.cuda.synchronize()
    return mean_loss, norm, finite


# ----------------------------------------------------------------------------------------------
# evaluation, samples, checkpoints, logs


def evaluate(accelerator, model, tokenizer, s: Settings, val_tokens: int, hellaswag_items) -> dict:
    """Validation loss and bits per byte, and HellaSwag in both conventions, on the uncompiled module."""
    model.eval()
    # FSDP gathers weights in each forward, so every rank must run the same forwards, and the evaluations' split
    # across ranks can give one rank a forward more: under FSDP every rank evaluates everything.
    split = None if accelerator.distributed_type == DistributedType.FSDP else accelerator
    with torch.no_grad(), accelerator.autocast():
        results = validation_loss(model, s.data_dir, val_tokens, seq_len=s.seq_len, accelerator=split)
        if hellaswag_items:
            scores = score_hellaswag(model, tokenizer, hellaswag_items, batch_size=16, accelerator=split)
            for key in ("items", "completion_acc", "completion_acc_norm", "lm_eval_acc", "lm_eval_acc_norm"):
                results[f"hellaswag_{key}"] = scores[key]
    model.train()
    return results


def generate_samples(accelerator, model, tokenizer, s: Settings, step: int, count: int = 4) -> list[str]:
    """A few sampled continuations (KV cache), seeded per step, without touching the training RNG."""
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


def load_hellaswag_items(s: Settings, print0) -> list:
    if s.hellaswag == "off":
        return []
    try:
        return load_hellaswag(None if s.hellaswag == "auto" else s.hellaswag, limit=s.hellaswag_limit or None)
    except (OSError, HellaSwagDataError) as e:
        print0(f"notice: HellaSwag skipped ({str(e).splitlines()[0]})")
        return []


def resume(accelerator, model, optimizer, candidates: list[Path], loader, print0) -> RunState:
    """Load the newest loadable checkpoint of `candidates` (newest first) and return its run state."""
    for checkpoint in candidates:
        try:
            saved = load_checkpoint(accelerator, checkpoint, model, optimizer)
            loader.load_state_dict(saved["train_loader"])
        except (CheckpointError, ValueError, KeyError) as e:
            if checkpoint == candidates[-1]:
                raise CheckpointError(f"{checkpoint}: {e}" if not isinstance(e, CheckpointError) else str(e)) from e
            print0(f"warning: {e}; trying the checkpoint before it")
            continue
        state = RunState(**{f.name: saved[f.name] for f in dataclasses.fields(RunState) if f.name in saved})
        print0(f"resumed from {checkpoint} at step {state.step} ({state.tokens_seen:,} tokens)")
        return state
    return RunState()


def write_model_card(folder: Path, state: dict, s: Settings) -> None:
    metrics = state.get("last_eval", {})
    lines = [
        "---", "library_name: transformers", "tags: [gpt2, gpt2repro, text-generation]", "---", "",
        f"# GPT-2 reproduction ({s.model})", "",
        "Trained with [gpt2repro](https://github.com/) (`train.py`). Load with:", "",
        "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "model = AutoModelForCausalLM.from_pretrained(REPO, trust_remote_code=True)",
        "tokenizer = AutoTokenizer.from_pretrained(REPO)", "```", "",
        f"- steps: {state['step']}, tokens seen: {state['tokens_seen']:,}",
        f"- validation loss: {metrics.get('val_loss', 'n/a')}",
        f"- HellaSwag acc_norm (completion style): {metrics.get('hellaswag_completion_acc_norm', 'n/a')}", "",
        "## Settings", "", "```yaml", yaml.safe_dump(dataclasses.asdict(s), sort_keys=False).strip(), "```", "",
    ]
    (folder / "README.md").write_text("\n".join(lines))


class PushError(RuntimeError):
    """The final checkpoint could not be pushed; it is intact locally."""


def push_to_hub(folder: Path, repo_id: str, private: bool = False) -> None:
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo_id, exist_ok=True, private=private)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="Upload gpt2repro checkpoint")
    except Exception as e:  # offline, no token, no permission: the local checkpoint stays as it is
        raise PushError(
            f"could not push {folder} to {repo_id} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); the "
            f"checkpoint is intact: retry with `hf upload {repo_id} {folder}` once online and logged in"
        ) from None


def save(accelerator, model, tokenizer, path: Path, state: RunState, loader, s: Settings) -> None:
    trainer_state = {**dataclasses.asdict(state), "train_loader": loader.state_dict(),
                     "world_size": accelerator.num_processes}

    def extras(folder: Path) -> None:  # what a user of the checkpoint needs beside the weights
        tokenizer.save_pretrained(folder)
        write_model_card(folder, trainer_state, s)

    save_checkpoint(accelerator, model, path, trainer_state, extras)


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def plot_curves(run_dir: Path, fineweb: bool) -> None:
    """Loss, bits-per-byte and HellaSwag curves, with the official GPT-2 124M lines on FineWeb-Edu."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]

    def series(key):
        return list(zip(*[(r["step"], r[key]) for r in rows if key in r])) or [(), ()]

    fig, (ax_loss, ax_bpb, ax_hella) = plt.subplots(1, 3, figsize=(16, 4.5))
    ax_loss.plot(*series("loss"), label="train loss", alpha=0.6)
    ax_loss.plot(*series("val_loss"), "o-", label="val loss")
    if fineweb:
        ax_loss.axhline(GPT2_124M_FINEWEB_EDU_VAL_LOSS, color="r", ls="--", label="OpenAI GPT-2 124M val")
    ax_loss.set(xlabel="step", ylabel="loss (nats/token)", title="loss")
    ax_bpb.plot(*series("val_bpb"), "o-", label="val bits per byte")
    ax_bpb.set(xlabel="step", ylabel="bits per byte", title="validation bits per byte")
    hella = series("hellaswag_completion_acc_norm")
    ax_hella.plot(*hella, "o-", label="HellaSwag acc_norm (completion)")
    ax_hella.plot(*series("hellaswag_lm_eval_acc_norm"), "s-", label="HellaSwag acc_norm (lm-eval)")
    if fineweb or hella[0]:
        ax_hella.axhline(GPT2_124M_HELLASWAG, color="r", ls="--", label="OpenAI GPT-2 124M (completion)")
    ax_hella.set(xlabel="step", ylabel="accuracy", title="HellaSwag" if hella[0] else "HellaSwag (not evaluated)")
    for ax in (ax_loss, ax_bpb, ax_hella):
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    tmp = run_dir / ".curves.png.tmp"
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, run_dir / "curves.png")


class RunLog:
    """Where a run reports: the progress line, metrics.jsonl, the Accelerate trackers, the curves."""

    def __init__(self, accelerator, s: Settings, preset: str):
        self.accelerator, self.run_dir = accelerator, Path(s.run_dir)
        self.fineweb = "fineweb" in s.data_dir.lower()
        if accelerator.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "settings.yaml").write_text(
                yaml.safe_dump({"preset": preset, **dataclasses.asdict(s)}, sort_keys=False)
            )
        accelerator.init_trackers("gpt2repro", config={k: v for k, v in dataclasses.asdict(s).items() if v is not None})

    def print(self, *args, **kwargs):
        if self.accelerator.is_main_process:
            print(*args, **kwargs, flush=True)

    def metrics(self, step: int, metrics: dict) -> None:
        self.accelerator.log(metrics, step=step)
        if self.accelerator.is_main_process:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")

    def evaluation(self, step: int, results: dict, samples: list[str]) -> None:
        self.metrics(step, results)
        self.print(" | ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v:.4f}" for k, v in results.items()))
        for text in samples:
            self.print(f"  sample: {text!r}")
        if self.accelerator.is_main_process:
            plot_curves(self.run_dir, self.fineweb)


# ----------------------------------------------------------------------------------------------


def main(argv=None):
    preset, s = parse_settings(argv)
    accelerator = make_accelerator(s)
    device, world = accelerator.device, accelerator.num_processes
    prepare_default_data(s, accelerator)
    model_config, grad_accum_steps, val_tokens = check_settings(s, world)
    # A torch-elastic restart (a lost rank's group, started again) continues from the run's own newest checkpoint,
    # else from where the first start did.
    elastic_restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    own_checkpoints = find_resume_checkpoint("auto", Path(s.run_dir)) if elastic_restart else []
    checkpoints = own_checkpoints or find_resume_checkpoint(s.resume, Path(s.run_dir))

    model = GPT2ReproForCausalLM(model_config)
    optimizer = make_optimizer(model, s, device)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)  # uncompiled: evaluation, sampling, saving
    compile_model = s.compile if s.compile is not None else device.type == "cuda"
    train_model = torch.compile(model) if compile_model else model
    loader = ShardedTokenLoader(s.data_dir, "train", s.micro_batch_size, s.seq_len, accelerator.process_index, world,
                                seed=s.seed)
    tokenizer = load_tokenizer()
    log = RunLog(accelerator, s, preset)
    state = resume(accelerator, model, optimizer, checkpoints, loader, log.print)
    hellaswag_items = load_hellaswag_items(s, log.print)
    precision = accelerator.mixed_precision
    flops_token = flops_per_token(model_config, s.seq_len)
    peak_flops, peak_source = device_peak_flops(device, torch.bfloat16 if precision == "bf16" else torch.float32)
    log.print(
        f"model {s.model}: {sum(p.numel() for p in raw_model.parameters()) / 1e6:.1f}M parameters | {world} "
        f"process(es) on {device.type} | precision {precision} | compile {compile_model}\n"
        f"batch: {s.total_batch_tokens:,} tokens/step = {s.micro_batch_size} x {s.seq_len} x {world} processes "
        f"x {grad_accum_steps} accumulation | {s.max_steps} steps | peak FLOP/s: {peak_source}"
    )
    stop = StopRequest()
    started, first_step, total_before = time.perf_counter(), state.step, state.total_seconds
    last_save = started

    # =========================================== the loop ===========================================
    train_model.train()
    while state.step < s.max_steps:
        t0 = time.perf_counter()
        lr = learning_rate(state.step, s)
        loss, norm, applied = train_step(accelerator, model, train_model, optimizer, loader, s, lr, grad_accum_steps)
        dt = time.perf_counter() - t0
        state.step += 1
        state.tokens_seen += s.total_batch_tokens
        state.train_seconds += dt
        state.total_seconds = total_before + time.perf_counter() - started
        state.bad_steps = 0 if applied else state.bad_steps + 1
        if not applied:
            log.print(f"warning: step {state.step}: non-finite loss {loss} or grad norm {norm}; update skipped")
            if state.bad_steps >= s.max_bad_steps:
                raise DivergedError(f"{state.bad_steps} non-finite steps in a row at step {state.step}: training "
                                    "diverged; lower --lr or resume from an earlier checkpoint")
        tokens_per_sec = s.total_batch_tokens / dt
        utilization = mfu(tokens_per_sec / world, flops_token, peak_flops)
        eta = (time.perf_counter() - started) / (state.step - first_step) * (s.max_steps - state.step)
        log.print(
            f"step {state.step:5d}/{s.max_steps} | loss {loss:.6f} | lr {lr:.4e} | norm {norm:.4f} | "
            f"dt {dt * 1000:.0f}ms | tok/s {tokens_per_sec:,.0f} | mfu {utilization * 100:.1f}% | "
            f"elapsed {format_duration(state.total_seconds)} | eta {format_duration(eta)}"
        )
        log.metrics(state.step, {"loss": loss, "lr": lr, "grad_norm": norm, "tokens_per_sec": tokens_per_sec,
                                 "mfu": utilization, "tokens_seen": state.tokens_seen})

        done = state.step == s.max_steps
        time_to_save = bool(s.save_every_minutes) and time.perf_counter() - last_save >= 60 * s.save_every_minutes
        flags = torch.tensor([float(stop.requested), float(time_to_save)], device=device)
        stop_now, time_to_save = (accelerator.reduce(flags, reduction="max") > 0).tolist()  # all ranks agree
        if done or (s.eval_every and state.step % s.eval_every == 0):
            state.last_eval = evaluate(accelerator, raw_model, tokenizer, s, val_tokens, hellaswag_items)
            samples = generate_samples(accelerator, raw_model, tokenizer, s, state.step)
            log.evaluation(state.step, state.last_eval, samples if accelerator.is_main_process else [])
        if not done and (stop_now or time_to_save or (s.save_every and state.step % s.save_every == 0)):
            save(accelerator, model, tokenizer, checkpoint_path(s.run_dir, state.step), state, loader, s)
            last_save = time.perf_counter()
            if accelerator.is_main_process:
                prune_checkpoints(Path(s.run_dir), s.keep_checkpoints)
        if stop_now and not done:
            log.print(f"stop requested: saved {checkpoint_path(s.run_dir, state.step)}; continue with --resume auto")
            break
    # ================================================================================================

    if state.step == s.max_steps:
        final = Path(s.run_dir) / "final"
        state.total_seconds = total_before + time.perf_counter() - started
        save(accelerator, model, tokenizer, final, state, loader, s)
        log.print(f"final checkpoint: {final}")
        if s.push_to_hub and accelerator.is_main_process:
            push_to_hub(final, s.push_to_hub, private=s.hub_private)
            log.print(f"pushed to https://huggingface.co/{s.push_to_hub}")
    accelerator.end_training()


class StopRequest:
    """SIGTERM (preemption) or Ctrl-C: finish the current step, save, exit 0."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        self.requested = True


# The project's own errors are one line for the user; anything else (a torch RuntimeError, a bug) keeps its traceback.
USER_ERRORS = (SettingsError, ShardError, CheckpointError, ValidationError, HellaSwagDataError, DivergedError, PushError)


def lost_a_process(e: RuntimeError) -> bool:
    """A collective failed because another rank died, or stopped answering for --collective-timeout-minutes:
    gloo reports it from its transport layer, NCCL as a DistError."""
    return isinstance(e, torch.distributed.DistError) or "gloo/transport/" in str(e)


def run(argv=None):
    try:
        main(argv)
    except USER_ERRORS as e:
        sys.exit(f"error: {e}")
    except RuntimeError as e:
        if not lost_a_process(e):
            raise
        detail = re.sub(r"^\[[^\]]*\]\s*", "", str(e).strip().splitlines()[0]).split(". ")[0]  # no source path
        sys.exit(f"error: rank {os.environ.get('RANK', '0')}: another process died or stopped answering ({detail}); "
                 "continue from the newest checkpoint with --resume auto (accelerate launch --max_restarts N does so "
                 "by itself)")


if __name__ == "__main__":
    run()
