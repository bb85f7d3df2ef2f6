"""Train GPT-2 with Accelerate: from a laptop CPU (tiny-Shakespeare) to many GPUs (FineWeb-Edu 10B).

    python train.py                                   # tiny preset on tiny-Shakespeare, minutes on a CPU
    accelerate launch train.py --preset gpt2-124m     # the GPT-2 (124M) reproduction
    accelerate launch --config_file accelerate_configs/8gpu.yaml train.py --preset gpt2-124m --resume auto

Settings: one dataclass below; a preset fills it, then `--config FILE` (YAML/JSON), then flags.
"""

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed

from configuration_gpt2repro import PRESETS as MODEL_PRESETS
from eval_hellaswag import load_hellaswag, score_hellaswag, validation_loss
from configuration_gpt2repro import GPT2ReproConfig
from modeling_gpt2repro import GPT2ReproForCausalLM
from throughput import device_peak_flops, flops_per_token, keep_freed_memory_for_reuse, mfu
from token_shards import ShardedTokenLoader, ShardError, check_tokenizer, load_manifest
from tokenization_gpt2repro import load_tokenizer

GPT2_124M_FINEWEB_EDU_VAL_LOSS = 3.2924  # official GPT-2 124M on FineWeb-Edu val (build-nanogpt)
GPT2_124M_HELLASWAG = 0.2955  # official GPT-2 124M, completion-style acc_norm
SAMPLE_PROMPT = "Hello, I'm a language model,"


@dataclass
class Settings:
    # what to train, on what, where to write
    model: str = "tiny"  # size preset: tiny, gpt2, gpt2-medium, gpt2-large, gpt2-xl
    data_dir: str = "data/tinyshakespeare"  # prepare_data.py output
    run_dir: str = "runs/tiny-shakespeare"
    # token layout of each optimizer step: total = micro-batch x seq-len x processes x accumulation
    total_batch_tokens: int = 4_096
    micro_batch_size: int = 16
    seq_len: int = 256
    # optimization: AdamW, linear warmup then cosine to min_lr_ratio x lr
    max_steps: int = 150  # 614k tokens (2 epochs) of tiny-Shakespeare: ~4 minutes on a 2-core CPU
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.1  # on >=2-D parameters only
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    # evaluation, samples, checkpoints
    eval_every: int = 50  # validation loss, HellaSwag and samples; 0 = only at the end
    val_tokens: int = 16_384
    hellaswag: str = "off"  # off | auto (cached or downloaded, skipped if unavailable) | path to a jsonl
    hellaswag_limit: int = 0  # 0 = all items
    sample_tokens: int = 32
    save_every: int = 0  # 0 = only the final checkpoint
    keep_checkpoints: int = 2
    resume: str = ""  # "" | auto | a checkpoint directory
    push_to_hub: str = ""  # a Hub repo id for the final checkpoint
    # system
    seed: int = 1337
    mixed_precision: str = "auto"  # auto (bf16 where the hardware has it) | bf16 | fp16 | no
    compile: bool | None = None  # None: on with CUDA
    log_with: str = "tensorboard"  # Accelerate tracker: tensorboard | wandb | trackio | none
    max_bad_steps: int = 5  # abort after this many non-finite steps in a row


PRESETS = {
    "tiny-shakespeare": {},
    # build-nanogpt's GPT-2 (124M) recipe: 10B FineWeb-Edu tokens, 0.5M-token batches.
    "gpt2-124m": dict(
        model="gpt2", data_dir="data/fineweb-edu-10B", run_dir="runs/gpt2-124m", total_batch_tokens=524_288,
        micro_batch_size=64, seq_len=1024, max_steps=19_073, lr=6e-4, warmup_steps=715, eval_every=250,
        val_tokens=10_485_760, hellaswag="auto", save_every=5000,
    ),
    "gpt2-124m-40B": dict(  # four epochs of the 10B sample, as in llm.c's longer runs
        model="gpt2", data_dir="data/fineweb-edu-10B", run_dir="runs/gpt2-124m-40B", total_batch_tokens=524_288,
        micro_batch_size=64, seq_len=1024, max_steps=76_292, lr=6e-4, warmup_steps=715, eval_every=250,
        val_tokens=10_485_760, hellaswag="auto", save_every=5000,
    ),
    "gpt2-350m": dict(  # GPT-3 paper's 350M learning rate
        model="gpt2-medium", data_dir="data/fineweb-edu-10B", run_dir="runs/gpt2-350m",
        total_batch_tokens=524_288, micro_batch_size=32, seq_len=1024, max_steps=19_073, lr=3e-4,
        warmup_steps=715, eval_every=250, val_tokens=10_485_760, hellaswag="auto", save_every=5000,
    ),
}


class SettingsError(ValueError):
    """A setting that cannot work: the message says which and what to do instead."""


# ----------------------------------------------------------------------------------------------
# settings


def parse_settings(argv=None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny-shakespeare", choices=sorted(PRESETS))
    parser.add_argument("--config", help="YAML or JSON file of settings (overrides the preset)")
    for field in dataclasses.fields(Settings):
        flag = "--" + field.name.replace("_", "-")
        if field.type == bool | None:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            parser.add_argument(flag, type=field.type if field.type in (int, float) else str, default=None)
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
    return Settings(**values)


def check_settings(s: Settings, model_config: GPT2ReproConfig, world_size: int) -> int:
    """Refuse settings that cannot work; return the gradient accumulation steps."""
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
    val_available = load_manifest(s.data_dir)["splits"]["val"]["tokens"] - 1  # -1: the last one is only a target
    if s.val_tokens > val_available:  # found now, not after hours of training at the first evaluation
        raise SettingsError(
            f"--val-tokens {s.val_tokens:,} exceeds the {val_available:,} validation tokens in {s.data_dir}; lower it"
        )
    if s.hellaswag not in ("off", "auto") and not Path(s.hellaswag).is_file():
        raise SettingsError(f"--hellaswag {s.hellaswag}: no such file; pass a hellaswag jsonl, 'auto' or 'off'")
    for name in ("max_steps", "micro_batch_size", "seq_len", "total_batch_tokens"):
        if getattr(s, name) <= 0:
            raise SettingsError(f"--{name.replace('_', '-')} must be positive")
    return s.total_batch_tokens // tokens_per_micro_step


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


# ----------------------------------------------------------------------------------------------
# checkpoints: a save_pretrained folder (loads anywhere) + training_state/ (resumes exactly)


def save_checkpoint(accelerator, model, path: Path, trainer_state: dict, settings: Settings) -> None:
    """Write into a temp dir and rename: a kill -9 at any moment leaves the previous checkpoint intact."""
    tmp = path.with_name(f".tmp-{path.name}")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp / "training_state"))  # optimizer, every rank's RNG
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(tmp, save_function=accelerator.save)
        load_tokenizer().save_pretrained(tmp)
        write_model_card(tmp, trainer_state, settings)
        (tmp / "training_state" / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    accelerator.wait_for_everyone()


def complete_checkpoints(run_dir: Path, include_final: bool = True) -> list[Path]:
    """Checkpoints whose rename happened (temp dirs are ignored), oldest first."""
    pattern = [*run_dir.glob("checkpoint-*"), run_dir / "final"] if include_final else run_dir.glob("checkpoint-*")
    found = [p for p in pattern if (p / "training_state" / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: json.loads((p / "training_state" / "trainer_state.json").read_text())["step"])


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    periodic = complete_checkpoints(run_dir, include_final=False)
    for old in periodic[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def find_resume_checkpoint(setting: str, run_dir: Path) -> Path | None:
    if not setting:
        return None
    if setting == "auto":
        candidates = complete_checkpoints(run_dir)
        return candidates[-1] if candidates else None
    path = Path(setting)
    if not (path / "training_state" / "trainer_state.json").is_file():
        raise SettingsError(f"--resume {path}: not a complete checkpoint (no training_state/); use a checkpoint-* dir or 'auto'")
    return path


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
        f"- HellaSwag acc_norm (completion style): {metrics.get('hellaswag_acc_norm', 'n/a')}", "",
        "![training curves](curves.png)" if (Path(s.run_dir) / "curves.png").exists() else "", "",
        "## Settings", "", "```yaml", yaml.safe_dump(dataclasses.asdict(s), sort_keys=False).strip(), "```", "",
    ]
    (folder / "README.md").write_text("\n".join(lines))
    curves = Path(s.run_dir) / "curves.png"
    if curves.exists():
        shutil.copy(curves, folder / "curves.png")


def push_to_hub(folder: Path, repo_id: str) -> None:
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="Upload gpt2repro checkpoint")
    except Exception as e:  # offline, no token, no permission: the local checkpoint stays as it is
        raise RuntimeError(
            f"could not push {folder} to {repo_id} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); the "
            f"checkpoint is intact: retry with `hf upload {repo_id} {folder}` once online and logged in"
        ) from None


# ----------------------------------------------------------------------------------------------
# evaluation and logging


def evaluate(accelerator, model, tokenizer, s: Settings, hellaswag_items) -> dict:
    """Validation loss and HellaSwag on the uncompiled module, so no shape triggers a recompile."""
    model.eval()
    results = {}
    # Evaluation returns full (windows x seq x vocab) logits. On CPU, where the heap keeps what it once held
    # (keep_freed_memory_for_reuse), ~1,024 tokens per forward: 16 tiny-preset windows per forward took the demo's
    # peak RSS from 1.7 to 4.5 GB.
    val_batch = s.micro_batch_size if accelerator.device.type == "cuda" else max(1, 1024 // s.seq_len)
    with torch.no_grad(), accelerator.autocast():
        results["val_loss"] = validation_loss(
            model, s.data_dir, s.val_tokens, seq_len=s.seq_len, batch_size=val_batch, accelerator=accelerator
        )
        if hellaswag_items:
            scores = score_hellaswag(model, tokenizer, hellaswag_items, batch_size=16, accelerator=accelerator)
            results["hellaswag_acc_norm"] = scores["completion_acc_norm"]
            results["hellaswag_lm_eval_acc_norm"] = scores["lm_eval_acc_norm"]
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
    except (OSError, ValueError) as e:
        print0(f"notice: HellaSwag skipped ({str(e).splitlines()[0]})")
        return []


def plot_curves(run_dir: Path, fineweb: bool) -> None:
    """Loss and HellaSwag curves, with the official GPT-2 124M lines when the data is FineWeb-Edu."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    fig, (ax_loss, ax_hella) = plt.subplots(1, 2, figsize=(12, 4.5))
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    hella = [(r["step"], r["hellaswag_acc_norm"]) for r in rows if "hellaswag_acc_norm" in r]
    if train:
        ax_loss.plot(*zip(*train), label="train loss", alpha=0.6)
    if val:
        ax_loss.plot(*zip(*val), "o-", label="val loss")
    if fineweb:
        ax_loss.axhline(GPT2_124M_FINEWEB_EDU_VAL_LOSS, color="r", ls="--", label="OpenAI GPT-2 124M val")
    ax_loss.set(xlabel="step", ylabel="loss", title="loss")
    ax_loss.legend()
    if hella:
        ax_hella.plot(*zip(*hella), "o-", label="HellaSwag acc_norm")
    if fineweb or hella:
        ax_hella.axhline(GPT2_124M_HELLASWAG, color="r", ls="--", label="OpenAI GPT-2 124M")
    ax_hella.set(xlabel="step", ylabel="accuracy", title="HellaSwag" if hella else "HellaSwag (not evaluated)")
    if ax_hella.get_legend_handles_labels()[0]:
        ax_hella.legend()
    fig.tight_layout()
    tmp = run_dir / ".curves.png.tmp"
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, run_dir / "curves.png")


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


# ----------------------------------------------------------------------------------------------


def main(argv=None):
    s = parse_settings(argv)
    run_dir = Path(s.run_dir)
    precision = mixed_precision_for(s.mixed_precision)
    log_with = None if s.log_with == "none" else s.log_with
    # Without GPUs, several processes are DDP over gloo on the CPU; Accelerate needs cpu=True to pick that.
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(mixed_precision=precision, log_with=log_with, project_dir=str(run_dir), cpu=multi_cpu)
    device, world = accelerator.device, accelerator.num_processes

    def print0(*args, **kwargs):
        if accelerator.is_main_process:
            print(*args, **kwargs, flush=True)

    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: free speed for the fp32 parts
        torch.backends.cudnn.allow_tf32 = True
    elif device.type == "cpu":
        keep_freed_memory_for_reuse()  # no page faults re-zeroing each step's buffers: 1.6-1.9x on CPU
    set_seed(s.seed)  # the same initial weights on every rank

    # the tiny default trains out of the box: tokenize the shipped corpus on first use
    if not Path(s.data_dir).exists() and s.data_dir == Settings.data_dir:
        if accelerator.is_main_process:
            import prepare_data

            prepare_data.main(["--out", s.data_dir])
        accelerator.wait_for_everyone()

    if s.model not in MODEL_PRESETS:
        raise SettingsError(f"--model {s.model}: unknown; choose one of {', '.join(MODEL_PRESETS)}")
    model_config = GPT2ReproConfig.from_preset(s.model)
    grad_accum_steps = check_settings(s, model_config, world)
    resume_from = find_resume_checkpoint(s.resume, run_dir)
    compile_model = s.compile if s.compile is not None else device.type == "cuda"

    model = GPT2ReproForCausalLM(model_config)
    tokenizer = load_tokenizer()
    optimizer = make_optimizer(model, s, device)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)  # uncompiled: evaluation, sampling, saving
    train_model = torch.compile(model) if compile_model else model

    train_loader = ShardedTokenLoader(
        s.data_dir, "train", s.micro_batch_size, s.seq_len, accelerator.process_index, world, seed=s.seed
    )
    hellaswag_items = load_hellaswag_items(s, print0)
    fineweb = "fineweb" in s.data_dir.lower()

    step, tokens_seen = 0, 0
    if resume_from is not None:
        accelerator.load_state(str(resume_from / "training_state"))
        state = json.loads((resume_from / "training_state" / "trainer_state.json").read_text())
        step, tokens_seen = state["step"], state["tokens_seen"]
        train_loader.load_state_dict(state["train_loader"])
        print0(f"resumed from {resume_from} at step {step} ({tokens_seen:,} tokens)")

    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "settings.yaml").write_text(yaml.safe_dump(dataclasses.asdict(s), sort_keys=False))
    accelerator.init_trackers("gpt2repro", config={k: v for k, v in dataclasses.asdict(s).items() if v is not None})
    flops_token = flops_per_token(model_config, s.seq_len)
    peak_flops, peak_source = device_peak_flops(device, torch.bfloat16 if precision == "bf16" else torch.float32)
    n_params = sum(p.numel() for p in raw_model.parameters())
    print0(
        f"model {s.model}: {n_params / 1e6:.1f}M parameters | {world} process(es) on {device.type} | "
        f"precision {precision} | compile {compile_model}\n"
        f"batch: {s.total_batch_tokens:,} tokens/step = {s.micro_batch_size} x {s.seq_len} x {world} processes "
        f"x {grad_accum_steps} accumulation | {s.max_steps} steps | peak FLOP/s: {peak_source}"
    )

    def log_metrics(metrics: dict):
        accelerator.log(metrics, step=step)
        if accelerator.is_main_process:
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")

    def trainer_state(last_eval: dict) -> dict:
        return {
            "step": step, "tokens_seen": tokens_seen, "train_loader": train_loader.state_dict(),
            "last_eval": last_eval, "world_size": world,
        }

    def evaluate_and_sample() -> dict:
        results = evaluate(accelerator, raw_model, tokenizer, s, hellaswag_items)
        log_metrics(results)
        print0(" | ".join(f"{k} {v:.4f}" for k, v in results.items()))
        if accelerator.is_main_process:
            for text in generate_samples(accelerator, raw_model, tokenizer, s, step):
                print0(f"  sample: {text!r}")
            plot_curves(run_dir, fineweb)
        return results

    stop = StopRequest()
    bad_steps = 0
    last_eval = {}
    progress = None
    if accelerator.is_main_process:
        from tqdm.auto import tqdm

        progress = tqdm(total=s.max_steps, initial=step, desc="train", unit="step", dynamic_ncols=True)

    # =========================================== the loop ===========================================
    train_model.train()
    while step < s.max_steps:
        t0 = time.perf_counter()
        lr = learning_rate(step, s)
        for group in optimizer.param_groups:
            group["lr"] = lr

        loss_sum = torch.zeros((), device=device)
        for micro_step in range(grad_accum_steps):
            window = train_loader.next_batch().to(device, non_blocking=True)  # (B, T+1)
            # DDP all-reduces gradients only on the last micro-step
            sync = micro_step == grad_accum_steps - 1
            with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                loss = train_model(input_ids=window[:, :-1], shift_labels=window[:, 1:]).loss
                accelerator.backward(loss / grad_accum_steps)  # mean over the whole step's tokens
            loss_sum += loss.detach()
        norm = accelerator.clip_grad_norm_(model.parameters(), s.grad_clip)
        mean_loss = accelerator.reduce(loss_sum / grad_accum_steps, reduction="mean").item()

        if math.isfinite(mean_loss) and math.isfinite(norm.item()):
            optimizer.step()
            bad_steps = 0
        else:  # skip the update: one bad batch must not poison the weights
            bad_steps += 1
            print0(f"warning: step {step}: non-finite loss {mean_loss} or grad norm {norm.item()}; update skipped")
            if bad_steps >= s.max_bad_steps:
                raise RuntimeError(
                    f"{bad_steps} non-finite steps in a row at step {step}: training diverged; lower --lr "
                    "or resume from an earlier checkpoint"
                )
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        step += 1
        tokens_seen += s.total_batch_tokens
        tokens_per_sec = s.total_batch_tokens / dt
        utilization = mfu(tokens_per_sec / world, flops_token, peak_flops)
        print0(
            f"step {step:5d} | loss {mean_loss:.6f} | lr {lr:.4e} | norm {norm.item():.4f} | "
            f"dt {dt * 1000:.0f}ms | tok/s {tokens_per_sec:,.0f} | mfu {utilization * 100:.1f}%",
            file=sys.stdout,
        )
        log_metrics({"loss": mean_loss, "lr": lr, "grad_norm": norm.item(), "tokens_per_sec": tokens_per_sec,
                     "mfu": utilization, "tokens_seen": tokens_seen})
        if progress is not None:
            progress.update(1)

        done = step == s.max_steps
        stop_now = accelerator.reduce(torch.tensor(float(stop.requested), device=device), reduction="max").item() > 0
        if done or (s.eval_every and step % s.eval_every == 0):
            last_eval = evaluate_and_sample()
        if not done and (stop_now or (s.save_every and step % s.save_every == 0)):
            save_checkpoint(accelerator, model, run_dir / f"checkpoint-{step:06d}", trainer_state(last_eval), s)
            if accelerator.is_main_process:
                prune_checkpoints(run_dir, s.keep_checkpoints)
        if stop_now and not done:
            print0(f"stop requested: saved {run_dir / f'checkpoint-{step:06d}'}; continue with --resume auto")
            break
    # ================================================================================================

    if progress is not None:
        progress.close()
    if step == s.max_steps:
        final = run_dir / "final"
        save_checkpoint(accelerator, model, final, trainer_state(last_eval), s)
        print0(f"final checkpoint: {final}")
        if s.push_to_hub and accelerator.is_main_process:
            push_to_hub(final, s.push_to_hub)
            print0(f"pushed to https://huggingface.co/{s.push_to_hub}")
    accelerator.end_training()


def run(argv=None):
    try:
        main(argv)
    except (SettingsError, ShardError, RuntimeError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    run()
