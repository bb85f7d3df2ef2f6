"""The settings of a training run: one dataclass whose fields, with their comments, are the command line of
train.py (`--help` is generated from this source), the named presets, the ranges and choices checked before
anything is built, and the config files (YAML/JSON) that fill them.

    preset, s = parse_settings(argv, description=__doc__)   # the preset, then --config FILE, then flags
    model_config, batch, val_tokens = check_settings(s, world_size)
"""

import argparse
import dataclasses
import inspect
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from configuration_gpt2repro import PRESETS as MODEL_SIZES
from configuration_gpt2repro import GPT2ReproConfig
from gpt2repro.attention import ATTENTION_CHOICES
from gpt2repro.document_sources import DEFAULT_DATA_DIR, data_dir_for
from gpt2repro.errors import UserError, first_line
from gpt2repro.hub import HUB_FORMATS
from gpt2repro.micro_batch import MicroBatch
from gpt2repro.token_shards import check_shards, check_tokenizer
from gpt2repro.validation import resolve_val_tokens


@dataclass
class Settings:
    # what to train, on what, where to write
    model: str = "tiny"  # size preset (configuration_gpt2repro): tiny, gpt2-124m, gpt2-350m, gpt2-774m, gpt2-1558m
    init_from: str = ""  # start from these weights, their size, a fresh optimizer: gpt2 ... gpt2-xl, a Hub id, a folder
    data_dir: str = str(DEFAULT_DATA_DIR)  # token shards written by prepare_data.py
    run_dir: str = ""  # checkpoints, metrics, curves and the report; "": runs/<preset>
    # token layout of each optimizer step: total = micro-batch x seq-len x processes x accumulation
    total_batch_tokens: int = 4_096  # tokens per optimizer step, over all processes and accumulation steps
    micro_batch_size: int | str = 16  # sequences; auto: the largest that fits, halved on out-of-memory (micro_batch.py)
    seq_len: int = 256  # tokens per sequence, at most the model's context length
    # optimization: the optimizer, a linear warmup, then the schedule (gpt2repro/optim.py)
    optimizer: str = "muon"  # adamw: every parameter | muon: Muon on the blocks' matrices, AdamW on the rest
    max_steps: int = 150  # optimizer steps to train (tiny: two epochs of tiny-Shakespeare)
    lr: float = 2e-3  # peak learning rate, reached after the warmup (with muon: of the embeddings, LayerNorms, biases)
    muon_lr: float = 2e-3  # with --optimizer muon: peak learning rate of the blocks' matrices (AdamW-like scale)
    lr_schedule: str = "cosine"  # cosine: decay to the end | wsd: flat, then linear over the last --cooldown-frac
    cooldown_frac: float = 0.2  # wsd: the fraction of --max-steps over which the rate falls to its end value
    min_lr_ratio: float = 0.1  # the schedule ends at this fraction of the peak
    warmup_steps: int = 10  # steps of linear warmup from 0
    weight_decay: float = 0.1  # decoupled weight decay, on >=2-D parameters only (AdamW's and Muon's alike)
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
    keep_checkpoints: int = 2  # periodic checkpoints kept (final/, and wsd's flat phase's end, always); 0 = all
    require_disk: bool = False  # refuse to start when the run directory's disk cannot hold the checkpoints
    resume: str = ""  # auto (newest complete checkpoint of --run-dir) | a checkpoint dir; torch elastic restarts: auto
    push_to_hub: str = ""  # a Hub repo id for the final checkpoint
    hub_private: bool = False  # create that repo private
    hub_format: str = "both"  # both: GPT2LMHeadModel on main, ours on branch gpt2repro; native|gpt2repro: one, on main
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
    hellaswag="auto", save_every=5000, save_every_minutes=30.0, optimizer="adamw",
)
PRESETS = {
    "tiny": {},
    "gpt2-124m": GPT2_124M,
    "gpt2-124m-40b": {**GPT2_124M, "max_steps": 76_292},  # four epochs of the 10B sample, as llm.c's longer runs
    "gpt2-124m-fineweb": {**GPT2_124M, "data_dir": str(data_dir_for("fineweb-10b"))},  # vs llm.c's FineWeb val target
    # the same data, batch and model, Muon + WSD: modded-nanogpt record #4's rates and trapezoid, in 6,500 steps
    # (README, "Muon, and a plan for GPT-2 in a third of the steps": why 6,500; it awaits a GPU run). Like every WSD
    # run it also saves at the end of its flat phase and keeps that checkpoint: a longer run continues from there.
    "gpt2-124m-muon": {**GPT2_124M, "optimizer": "muon", "lr": 3.6e-3, "muon_lr": 3.6e-3, "weight_decay": 0.0,
                       "lr_schedule": "wsd", "cooldown_frac": 0.3, "min_lr_ratio": 0.0, "warmup_steps": 250,
                       "max_steps": 6_500},
    "gpt2-350m": {**GPT2_124M, "model": "gpt2-350m", "micro_batch_size": 32, "lr": 3e-4},  # GPT-3 paper's 350M lr
}


# Settings with a fixed set of values (fp16 is not offered: bf16 needs no loss scaling, and GPUs without bf16
# train in fp32).
CHOICES = {"mixed_precision": ("auto", "bf16", "no"), "log_with": ("tensorboard", "wandb", "trackio", "none"),
           "attention": ATTENTION_CHOICES, "hub_format": HUB_FORMATS, "optimizer": ("adamw", "muon"),
           "lr_schedule": ("cosine", "wsd")}


# Settings with a range: (test, what the value must be). Checked before anything is built.
POSITIVE, NOT_NEGATIVE = (lambda v: v > 0, "positive"), (lambda v: v >= 0, "0 or more (0 turns it off)")
BETA = (lambda v: 0 <= v < 1, "in [0, 1)")
RANGES = {
    **dict.fromkeys(("max_steps", "seq_len", "total_batch_tokens", "lr", "muon_lr", "grad_clip", "max_bad_steps",
                     "collective_timeout_minutes"), POSITIVE),
    "micro_batch_size": (lambda v: v == "auto" or v > 0, "positive, or auto"),
    **dict.fromkeys(("warmup_steps", "weight_decay", "eval_every", "save_every", "save_every_minutes",
                     "keep_checkpoints", "val_tokens", "hellaswag_limit", "sample_tokens", "gpu_hour_usd"),
                    NOT_NEGATIVE),
    "min_lr_ratio": (lambda v: 0 <= v <= 1, "between 0 and 1"),
    "cooldown_frac": (lambda v: 0 <= v <= 1, "between 0 and 1"),
    "beta1": BETA,
    "beta2": BETA,
    "seed": (lambda v: 0 <= v < 2**32, "in [0, 2^32)"),
}


class SettingsError(UserError, ValueError):
    """A setting that cannot work: the message says which and what to do instead."""


# What a flag's value is, where its name alone would not say.
METAVARS = {"model": "PRESET", "data_dir": "DIR", "run_dir": "DIR", "hellaswag": "off|auto|FILE",
            "resume": "auto|DIR", "push_to_hub": "REPO_ID", "init_from": "NAME|HUB_ID|DIR"}


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


def settings_parser(description: str = "") -> argparse.ArgumentParser:
    """train.py's command line: --preset, --config, and a flag for each Settings field, grouped under its heading."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", type=str.lower, choices=sorted(PRESETS),
                        help="named settings to start from (default: tiny)")
    parser.add_argument("--config", metavar="FILE", help="YAML or JSON file of settings (overrides the preset)")
    groups, helps = {}, settings_help()  # once: it reads the source of Settings
    for f in dataclasses.fields(Settings):
        heading, comment = helps[f.name]
        group = groups.get(heading) or groups.setdefault(heading, parser.add_argument_group(heading))
        flag, text = "--" + f.name.replace("_", "-"), f"{comment} ({default_help(f.name)})".replace("%", "%%")
        if f.type in (bool, bool | None):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            kind = {int: int, float: float, int | str: int_or_auto}.get(f.type, str)
            metavar = METAVARS.get(f.name) or {int: "N", float: "NUM", int_or_auto: "N|auto"}.get(kind)
            group.add_argument(flag, type=kind, default=None, choices=CHOICES.get(f.name),
                               metavar=None if f.name in CHOICES else metavar, help=text)
    return parser


def parse_settings(argv=None, description: str = "") -> tuple[str, Settings]:
    """(preset name, settings): the preset, then --config FILE, then flags; `description` heads --help."""
    args = settings_parser(description).parse_args(argv)

    values = dict(PRESETS[args.preset])
    chosen = read_config(Path(args.config)) if args.config else {}
    chosen.update({k: v for k, v in vars(args).items() if k not in ("preset", "config") and v is not None})
    values.update(chosen)
    values["run_dir"] = values.get("run_dir") or f"runs/{args.preset}"
    if values.get("init_from") and "model" not in chosen:
        values["model"] = ""  # the size of the weights (check_settings); a --model given too must match them
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


def initial_config(s: Settings, chosen: GPT2ReproConfig | None) -> GPT2ReproConfig:
    """--init-from: the config of its weights, which set the model's size; a --model of another size is refused.
    Sets s.model to the size preset of the weights' shape, if one has it."""
    from gpt2repro.export import SHAPE, ConversionError, pretrained_config

    try:
        config = pretrained_config(s.init_from)
    except ConversionError as e:
        raise SettingsError(f"--init-from {s.init_from}: {e}") from None
    shape = lambda c: tuple(getattr(c, key) for key in SHAPE)  # noqa: E731
    size = f"{config.n_layer} layers of width {config.n_embd}, {config.n_head} heads, context {config.n_positions}"
    if chosen is not None and shape(chosen) != shape(config):
        raise SettingsError(f"--model {s.model} conflicts with --init-from {s.init_from}, whose weights have {size}; "
                            "drop --model: the size comes from the weights")
    # named as the preset of that size, if there is one ("" stays: the size of the weights)
    named = [name for name in MODEL_SIZES if shape(GPT2ReproConfig.from_preset(name)) == shape(config)]
    s.model = s.model or (named[0] if named else "")
    return config


def check_settings(s: Settings, world_size: int) -> tuple[GPT2ReproConfig, MicroBatch, int]:
    """Refuse settings that cannot work, up front; return the model config, the micro-batch and accumulation,
    and the number of validation targets."""
    try:
        model_config = GPT2ReproConfig.from_preset(s.model) if s.model else None
    except ValueError as e:
        raise SettingsError(f"--model: {e}") from None
    if s.init_from:
        model_config = initial_config(s, model_config)
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
