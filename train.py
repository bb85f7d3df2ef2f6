"""Train GPT-2 with Accelerate: from a laptop CPU (tiny-Shakespeare) to many GPUs (FineWeb-Edu 10B).

    .venv/bin/python train.py                         # the tiny preset on tiny-Shakespeare, minutes on a CPU
    accelerate launch train.py --preset gpt2-124m     # the GPT-2 (124M) reproduction
    accelerate launch --config_file accelerate_configs/8gpu.yaml train.py --preset gpt2-124m --resume auto

Settings: a preset fills them all, then `--config FILE` (YAML/JSON, the names below with underscores), then flags.
"""

import argparse
import contextlib
import dataclasses
import datetime
import functools
import inspect
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, InitProcessGroupKwargs, set_seed
from torch.distributed.fsdp import MixedPrecisionPolicy
from torch.distributed.tensor import DTensor

from gpt2repro.attention import ATTENTION_CHOICES, choose_attention
from gpt2repro.checkpoints import (
    CheckpointError,
    DiskSpaceError,
    RunDir,
    SaveSchedule,
    any_rank,
    complete_checkpoints,
    continue_command,
    discard_after,
    disk_space_problem,
    find_resume_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    read_trainer_state,
    save_checkpoint,
)
from configuration_gpt2repro import GPT2ReproConfig
from gpt2repro.document_sources import DEFAULT_DATA_DIR, data_dir_for
from gpt2repro.errors import UserError, cli, first_line
from gpt2repro.hellaswag import HellaSwagDataError, load_hellaswag, score_hellaswag
from gpt2repro.micro_batch import MicroBatch
from gpt2repro.model_card import PublishError, card_files, check_push_access, push_to_hub
from modeling_gpt2repro import GPT2ReproForCausalLM
from gpt2repro.fileio import write_atomically
from gpt2repro.report import SAMPLE_PROMPT, describe_data, plot_curves, val_loss_reference, write_report
from gpt2repro.throughput import device_peak_flops, flops_per_token, keep_freed_memory_for_reuse, mfu
from gpt2repro.token_shards import ShardedTokenLoader, check_shards, check_tokenizer
from gpt2repro.tokenizer import load_tokenizer
from gpt2repro.validation import resolve_val_tokens, validation_loss



@dataclass
class Settings:
    # what to train, on what, where to write
    model: str = "tiny"  # size preset (configuration_gpt2repro): tiny, gpt2-124m, gpt2-350m, gpt2-774m, gpt2-1558m
    data_dir: str = str(DEFAULT_DATA_DIR)  # token shards written by prepare_data.py
    run_dir: str = ""  # checkpoints, metrics, curves and the report; "": runs/<preset>
    # token layout of each optimizer step: total = micro-batch x seq-len x processes x accumulation
    total_batch_tokens: int = 4_096  # tokens per optimizer step, over all processes and accumulation steps
    micro_batch_size: int | str = 16  # sequences; auto: the largest that fits, halved on out-of-memory (micro_batch.py)
    seq_len: int = 256  # tokens per sequence, at most the model's context length
    # optimization: AdamW, linear warmup then cosine to min_lr_ratio x lr
    max_steps: int = 150  # optimizer steps to train (tiny: two epochs of tiny-Shakespeare)
    lr: float = 2e-3  # peak learning rate, reached after the warmup
    min_lr_ratio: float = 0.1  # the cosine ends at this fraction of --lr
    warmup_steps: int = 10  # steps of linear warmup from 0
    weight_decay: float = 0.1  # AdamW weight decay, on >=2-D parameters only
    beta1: float = 0.9  # AdamW's first-moment decay
    beta2: float = 0.95  # AdamW's second-moment decay
    grad_clip: float = 1.0  # clip the global gradient norm to this
    # evaluation, samples, checkpoints
    eval_every: int = 50  # steps between evaluations (validation loss, HellaSwag, samples); 0 = only at the end
    val_tokens: int = 0  # targets of the val split scored at each evaluation; 0 = all of it (validation.py)
    hellaswag: str = "off"  # off | auto (cached or downloaded, skipped if unavailable) | path to a jsonl
    hellaswag_limit: int = 0  # score only the first N HellaSwag items; 0 = all items
    sample_tokens: int = 32  # tokens of each sample printed at an evaluation; 0 = no samples
    save_every: int = 0  # steps between checkpoints; 0 = only the final checkpoint
    save_every_minutes: float = 0.0  # also save once this much time passed since the last save: bounds lost work
    keep_checkpoints: int = 2  # periodic checkpoints kept (final/ is always kept); 0 = keep all
    require_disk: bool = False  # refuse to start when the run directory's disk cannot hold the checkpoints
    resume: str = ""  # auto (newest complete checkpoint of --run-dir) | a checkpoint dir; torch elastic restarts: auto
    push_to_hub: str = ""  # a Hub repo id for the final checkpoint
    hub_private: bool = False  # create that repo private
    # system
    seed: int = 1337  # initial weights, data order and samples
    mixed_precision: str = "auto"  # auto (bf16 where the hardware has it) | bf16 | no (fp32)
    compile: bool | None = None  # torch.compile the model; unset: on with CUDA, off on CPU
    attention: str = "auto"  # auto (FlashAttention-3 on Hopper with `pip install kernels`, else sdpa) | sdpa | eager
    log_with: str = "tensorboard"  # Accelerate tracker: tensorboard | wandb | trackio | none
    max_bad_steps: int = 5  # abort after this many non-finite steps in a row (counted at the steps that log)
    log_every: int = 0  # steps between progress lines (the only steps that read the device); 0: 1 on CPU, 10 on GPU
    collective_timeout_minutes: float = 10.0  # a rank that stops answering ends the others after this long
    gpu_hour_usd: float = 3.0  # USD per GPU-hour, for the report's cost estimate (nanochat's 8xH100 node at $24/h)


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
    "gpt2-124m-fineweb": {**GPT2_124M, "data_dir": str(data_dir_for("fineweb-10b"))},  # vs llm.c's FineWeb val target
    "gpt2-350m": {**GPT2_124M, "model": "gpt2-350m", "micro_batch_size": 32, "lr": 3e-4},  # GPT-3 paper's 350M lr
}


# Settings with a fixed set of values (fp16 is not offered: bf16 needs no loss scaling, and GPUs without bf16
# train in fp32).
CHOICES = {"mixed_precision": ("auto", "bf16", "no"), "log_with": ("tensorboard", "wandb", "trackio", "none"),
           "attention": ATTENTION_CHOICES}


# Settings with a range: (test, what the value must be). Checked before anything is built.
POSITIVE, NOT_NEGATIVE = (lambda v: v > 0, "positive"), (lambda v: v >= 0, "0 or more (0 turns it off)")
BETA = (lambda v: 0 <= v < 1, "in [0, 1)")
RANGES = {
    **dict.fromkeys(("max_steps", "seq_len", "total_batch_tokens", "lr", "grad_clip", "max_bad_steps",
                     "collective_timeout_minutes"), POSITIVE),
    "micro_batch_size": (lambda v: v == "auto" or v > 0, "positive, or auto"),
    **dict.fromkeys(("warmup_steps", "weight_decay", "eval_every", "save_every", "save_every_minutes",
                     "keep_checkpoints", "val_tokens", "hellaswag_limit", "sample_tokens", "gpu_hour_usd"),
                    NOT_NEGATIVE),
    "min_lr_ratio": (lambda v: 0 <= v <= 1, "between 0 and 1"),
    "beta1": BETA,
    "beta2": BETA,
    "seed": (lambda v: 0 <= v < 2**32, "in [0, 2^32)"),
}


class SettingsError(UserError, ValueError):
    """A setting that cannot work: the message says which and what to do instead."""


class DivergedError(UserError, RuntimeError):
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
    micro_batch_size: int = 0  # the size the run settled on: what --micro-batch-size auto continues with

    def advance(self, tokens: int, seconds: float) -> None:
        self.step += 1
        self.tokens_seen += tokens
        self.train_seconds += seconds


# ----------------------------------------------------------------------------------------------
# settings


# What a flag's value is, where its name alone would not say.
METAVARS = {"model": "PRESET", "data_dir": "DIR", "run_dir": "DIR", "hellaswag": "off|auto|FILE",
            "resume": "auto|DIR", "push_to_hub": "REPO_ID"}


def settings_help() -> dict[str, tuple[str, str]]:
    """{setting: (its heading, its comment)}, read from the Settings source: --help says what the dataclass says."""
    heading, found = "", {}
    for line in inspect.getsource(Settings).splitlines()[2:]:
        line = line.strip()
        if line.startswith("#"):
            heading = line.lstrip("# ")
        elif ":" in line:
            found[line.split(":")[0]] = (heading, line.split("  # ", 1)[1] if "  # " in line else "")
    return found


def default_help(name: str) -> str:
    """The tiny default and what the other presets set instead, e.g. "default: 150; gpt2-124m: 19073"."""
    default = getattr(Settings, name)
    by_value = {}
    for preset, values in PRESETS.items():
        if name in values and values[name] != default:
            by_value.setdefault(values[name], []).append(preset)
    shown = "runs/PRESET" if name == "run_dir" else {"": "none", None: "unset"}.get(default, default)
    return "; ".join([f"default: {shown}", *(f"{', '.join(p)}: {v}" for v, p in by_value.items())])


def parse_settings(argv=None) -> tuple[str, Settings]:
    """(preset name, settings): the preset, then --config FILE, then flags."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", type=str.lower, choices=sorted(PRESETS),
                        help="named settings to start from (default: tiny)")
    parser.add_argument("--config", metavar="FILE", help="YAML or JSON file of settings (overrides the preset)")
    groups = {}
    for f in dataclasses.fields(Settings):
        heading, comment = settings_help()[f.name]
        group = groups.get(heading) or groups.setdefault(heading, parser.add_argument_group(heading))
        flag, text = "--" + f.name.replace("_", "-"), f"{comment} ({default_help(f.name)})".replace("%", "%%")
        if f.type in (bool, bool | None):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            kind = {int: int, float: float, int | str: int_or_auto}.get(f.type, str)
            metavar = METAVARS.get(f.name) or {int: "N", float: "NUM", int_or_auto: "N|auto"}.get(kind)
            group.add_argument(flag, type=kind, default=None, choices=CHOICES.get(f.name),
                               metavar=None if f.name in CHOICES else metavar, help=text)
    args = parser.parse_args(argv)

    values = dict(PRESETS[args.preset])
    if args.config:
        values.update(read_config(Path(args.config)))
    values.update({k: v for k, v in vars(args).items() if k not in ("preset", "config") and v is not None})
    values["run_dir"] = values.get("run_dir") or f"runs/{args.preset}"
    settings = Settings(**values)
    check_ranges(settings)
    return args.preset, settings


def check_ranges(s: Settings) -> None:
    """Refuse, in one line, a number out of its setting's range (a negative learning rate, a beta of 1, ...)."""
    for name, (within, what) in RANGES.items():
        value = getattr(s, name)
        finite = not isinstance(value, float) or math.isfinite(value)
        if not (finite and within(value)):
            raise SettingsError(f"--{name.replace('_', '-')} {value}: must be {what}")


def int_or_auto(value: str) -> int | str:
    return "auto" if value == "auto" else int(value)


def _as_field_type(kind, value):
    if kind == int | str:
        return value if value == "auto" else _as_field_type(int, value)
    if kind in (bool, bool | None):
        if isinstance(value, bool) or value is None:
            return value
        raise ValueError
    if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
        raise ValueError
    return kind(value) if kind in (int, float) else str(value)


def read_config(path: Path) -> dict:
    """Settings from a YAML or JSON file, each converted to its field's type (YAML reads 6e-4 as a string)."""
    if not path.is_file():
        raise SettingsError(f"--config {path}: no such file; pass a YAML or JSON file of settings")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}  # YAML is a superset of JSON
    except yaml.YAMLError as e:
        raise SettingsError(f"--config {path}: not valid YAML or JSON ({first_line(e)}); fix the file") from None
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    if not isinstance(loaded, dict) or set(loaded) - set(fields):
        unknown = sorted(set(loaded) - set(fields)) if isinstance(loaded, dict) else "not a mapping"
        raise SettingsError(f"--config {path}: unknown settings {unknown}; see python train.py --help")
    values = {}
    for name, value in loaded.items():
        try:
            values[name] = _as_field_type(fields[name].type, value)
        except (TypeError, ValueError):
            kind = getattr(fields[name].type, "__name__", fields[name].type)
            raise SettingsError(f"--config {path}: {name}: {value!r} is not a {kind}; fix that value") from None
        if name in CHOICES and value not in CHOICES[name]:
            raise SettingsError(f"--config {path}: {name}: {value!r}; choose one of {', '.join(CHOICES[name])}")
    return values


def check_settings(s: Settings, world_size: int) -> tuple[GPT2ReproConfig, MicroBatch, int]:
    """Refuse settings that cannot work, up front; return the model config, the micro-batch and accumulation,
    and the number of validation targets."""
    try:
        model_config = GPT2ReproConfig.from_preset(s.model)
    except ValueError as e:
        raise SettingsError(f"--model: {e}") from None
    if s.seq_len > model_config.n_positions:
        raise SettingsError(
            f"--seq-len {s.seq_len} exceeds the model's context ({model_config.n_positions}); lower --seq-len"
        )
    micro = 1 if s.micro_batch_size == "auto" else s.micro_batch_size
    tokens_per_micro_step = micro * s.seq_len * world_size
    if s.total_batch_tokens % tokens_per_micro_step:
        raise SettingsError(
            f"--total-batch-tokens {s.total_batch_tokens} is not a multiple of micro-batch x seq-len x processes "
            f"= {micro} x {s.seq_len} x {world_size} = {tokens_per_micro_step}; use a multiple of it"
        )
    if not Path(s.data_dir).is_dir():
        raise SettingsError(f"--data-dir {s.data_dir}: no such directory; create it with python prepare_data.py")
    check_tokenizer(s.data_dir)  # shards from another tokenizer would train on the wrong ids
    check_shards(s.data_dir)  # damaged since preparation, or ids outside the vocabulary: named before a step
    val_tokens = resolve_val_tokens(s.data_dir, s.val_tokens)
    if s.hellaswag not in ("off", "auto") and not Path(s.hellaswag).is_file():
        raise SettingsError(f"--hellaswag {s.hellaswag}: no such file; pass a hellaswag jsonl, 'auto' or 'off'")
    return model_config, MicroBatch(s.micro_batch_size, s.total_batch_tokens // (s.seq_len * world_size)), val_tokens


def mixed_precision_for(setting: str) -> str:
    """bf16 where the hardware computes it natively (Ampere+ GPUs, CPUs with AVX512-BF16/AMX), else fp32."""
    if setting != "auto":
        return setting
    if torch.cuda.is_available():  # by default torch also counts emulated bf16 (V100, T4): slower than fp32 there
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "no"
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
    # NCCL's default (1) has its watchdog kill a process whose collective failed or timed out, before Python sees it;
    # 2 aborts the communicator and raises in Python, so that run() prints its one line as over gloo.
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")
    start_restarted_group(timeout)
    accelerator = Accelerator(
        mixed_precision=mixed_precision_for(s.mixed_precision), log_with=None if s.log_with == "none" else s.log_with,
        project_dir=s.run_dir, cpu=multi_cpu, kwargs_handlers=[InitProcessGroupKwargs(timeout=timeout)],
    )
    if multi_cpu and os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        keep_fsdp(accelerator)
    set_fsdp_precision(accelerator)
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


def check_disk_space(s: Settings, model, accelerator) -> None:
    """Warn (refuse, with --require-disk) when the run directory's filesystem cannot hold the run's checkpoints."""
    saves = (s.max_steps - 1) // s.save_every if s.save_every else int(s.save_every_minutes > 0)  # none at the end
    periodic = min(s.keep_checkpoints, saves) if s.keep_checkpoints else saves  # --keep-checkpoints 0 keeps all
    n_params = sum(p.numel() for p in model.parameters())
    problem = disk_space_problem(Path(s.run_dir), n_params, periodic)
    if problem and s.require_disk:
        raise DiskSpaceError(problem)
    if problem and accelerator.is_main_process:
        print(f"warning: {problem} (--require-disk refuses to start then)", flush=True)


def set_fsdp_precision(accelerator) -> None:
    """FSDP2 under bf16: bf16 parameters for compute, gradients reduced in fp32, outputs (the loss) not cast, as under
    DDP. Accelerate's own bf16 policy reduces gradients in bf16 and casts the loss to bf16 (steps of 1/64 near 3.3)."""
    if accelerator.distributed_type == DistributedType.FSDP and accelerator.mixed_precision == "bf16":
        plugin = accelerator.state.fsdp_plugin
        if plugin.fsdp_version == 2:
            plugin.mixed_precision_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


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
    # fused on every device: its `found_inf` lets train_step skip a non-finite update without reading the device
    return torch.optim.AdamW(groups, lr=s.lr, betas=(s.beta1, s.beta2), eps=1e-8, fused=True)


def train_step(accelerator, model, train_model, optimizer, loader, s: Settings, lr: float, grad_accum_steps: int):
    """One optimizer step over total_batch_tokens: (mean loss, grad norm, whether the update was skipped), as tensors
    on the device. Nothing is read back here: a read stops the host until the GPU has caught up (see read_back)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
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
    # on the device where found_inf is 1, the hook GradScaler uses.
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


def resume_candidates(s: Settings) -> list[Path]:
    """The checkpoints to resume from, newest first. A group that torch elastic restarted after losing a rank
    continues from the run's own newest checkpoint (else from where its first start did); a fresh run never mixes
    into another run's directory."""
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    own = find_resume_checkpoint("auto", s.run_dir) if restarted else []
    if not s.resume and not restarted and complete_checkpoints(s.run_dir):
        raise SettingsError(f"--run-dir {s.run_dir} holds another run's checkpoints; continue it with --resume auto, "
                            "or choose another --run-dir")
    return own or find_resume_checkpoint(s.resume, s.run_dir)


def finished_run(s: Settings, candidates: list[Path]) -> str | None:
    """What to say when the checkpoint to resume from is this run's own final one at --max-steps: the run is done,
    and resuming would re-save it, re-measure it and rewrite its report."""
    run_dir = RunDir(s.run_dir)
    if not candidates or candidates[0] != run_dir.final:
        return None
    if read_trainer_state(run_dir.final).get("step", -1) < s.max_steps:
        return None
    return (f"{s.run_dir} is finished: {run_dir.final} holds step {read_trainer_state(run_dir.final)['step']} of "
            f"--max-steps {s.max_steps}; nothing to do, no file changed.\nreport: {run_dir.report_md} | curves: "
            f"{run_dir.curves}\nto train longer, raise --max-steps; to start afresh, use another --run-dir")


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
                     "world_size": accelerator.num_processes}
    files = None
    if accelerator.is_main_process:
        facts = log.facts(state)
        report = write_report(log.run_dir.path, facts)
        context = accelerator.unwrap_model(model).config.n_positions  # the card states it
        files = card_files(dict(report, context_length=context), log.settings.push_to_hub or None, log.run_dir.path)
    resume_with = continue_command(log.command, accelerator.num_processes)
    save_checkpoint(accelerator, model, path, trainer_state, tokenizer, files, resume_with)


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


class RunLog:
    """Where a run reports as it goes: the console, metrics.jsonl and the Accelerate trackers; and the facts of the
    run that its report states (report.py draws the curves and writes the report)."""

    def __init__(self, accelerator, s: Settings, preset: str, argv=None):
        self.accelerator, self.settings, self.preset, self.run_dir = accelerator, s, preset, RunDir(s.run_dir)
        self.command = ["train.py", *(sys.argv[1:] if argv is None else argv)]
        self.write_settings()
        accelerator.init_trackers("gpt2repro", config={k: v for k, v in dataclasses.asdict(s).items() if v is not None})

    def write_settings(self) -> None:
        if self.accelerator.is_main_process:
            self.run_dir.path.mkdir(parents=True, exist_ok=True)
            settings = yaml.safe_dump({"preset": self.preset, **dataclasses.asdict(self.settings)}, sort_keys=False)
            write_atomically(self.run_dir.settings, settings)

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
        if self.accelerator.is_main_process and self.run_dir.metrics.exists():
            kept = [row for row in read_metrics(self.run_dir.metrics) if row["step"] <= state.step]
            write_atomically(self.run_dir.metrics, "".join(json.dumps(row) + "\n" for row in kept))
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
        self.accelerator.log(metrics, step=step)
        if self.accelerator.is_main_process:
            with open(self.run_dir.metrics, "a") as f:  # appended: a torn last line is skipped on reading
                f.write(json.dumps({"step": step, **metrics}) + "\n")

    def evaluation(self, step: int, results: dict, samples: list[str]) -> None:
        self.metrics(step, results)
        values = (f"{k} {v:,}" if isinstance(v, int) else f"{k} {v:.4f}" for k, v in results.items())
        self.print(" | ".join([f"eval {step:5d}/{self.settings.max_steps}", *values]))
        for text in samples:
            self.print(f"  sample: {text!r}")
        if self.accelerator.is_main_process:
            reference = val_loss_reference(describe_data(self.settings.data_dir))
            plot_curves(read_metrics(self.run_dir.metrics), self.run_dir.curves, reference)


# ----------------------------------------------------------------------------------------------


def main(argv=None):
    preset, s = parse_settings(argv)
    accelerator = make_accelerator(s)
    device, world = accelerator.device, accelerator.num_processes
    prepare_default_data(s, accelerator)
    model_config, batch, val_tokens = check_settings(s, world)
    checkpoints = resume_candidates(s)
    if finished := finished_run(s, checkpoints):
        return accelerator.print(finished)  # a rerun of a finished run (make demo twice) changes nothing
    check_push(s, accelerator, accelerator.print)  # seconds now, not after hours of training

    model = GPT2ReproForCausalLM(model_config)
    check_disk_space(s, model, accelerator)
    attention, notice = choose_attention(s.attention, device)
    model.set_attn_implementation(attention)
    if notice and accelerator.is_main_process:
        print(notice, flush=True)
    optimizer = make_optimizer(model, s, device)
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
    saves = SaveSchedule(s.save_every, s.save_every_minutes)  # --save-every-minutes counts from here

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
                stop_now, save_now = False, bool(s.save_every and state.step % s.save_every == 0)
            if not stop_now and (done or (s.eval_every and state.step % s.eval_every == 0)):  # a stop saves first
                state.last_eval = evaluate(accelerator, raw_model, tokenizer, s, val_tokens, hellaswag_items)
                samples = generate_samples(accelerator, raw_model, tokenizer, s, state.step)
                log.evaluation(state.step, state.last_eval, samples if accelerator.is_main_process else [])
            if not done and (stop_now or save_now):
                save(accelerator, model, tokenizer, log.run_dir.checkpoint(state.step), state, loader, log)
                saves.saved()
                if accelerator.is_main_process:
                    prune_checkpoints(log.run_dir.path, s.keep_checkpoints)
            if stop_now:
                log.print(f"stop requested: saved {log.run_dir.checkpoint(state.step)}; continue: --resume auto")
                break
    # ================================================================================================

    if state.step == s.max_steps:
        final = log.run_dir.final
        log.tick(state)
        save(accelerator, model, tokenizer, final, state, loader, log)
        log.print(f"final checkpoint: {final}\nreport: {log.run_dir.report_md} | curves: {log.run_dir.curves}")
        if s.push_to_hub and accelerator.is_main_process:
            push_to_hub(final, s.push_to_hub, private=s.hub_private)
            log.print(f"pushed to https://huggingface.co/{s.push_to_hub}")
    # A last barrier, waited on without the GIL: gloo's worker thread frees the previous collective's tensors, which
    # needs the GIL, and the process group's destructor (when the DDP model is freed) would otherwise wait for that
    # thread while holding the GIL: a hang at exit.
    accelerator.wait_for_everyone()
    accelerator.end_training()


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


class LostProcessError(UserError, RuntimeError):
    """Another process of the run died or stopped answering: the message says how to continue."""


def lost_a_process(e: RuntimeError) -> bool:
    """A collective failed because another rank died, or stopped answering for --collective-timeout-minutes:
    gloo reports it from its transport layer, NCCL as a DistError."""
    return isinstance(e, torch.distributed.DistError) or "gloo/transport/" in str(e)


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
