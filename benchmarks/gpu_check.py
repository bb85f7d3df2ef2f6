"""GPU acceptance in one command: parity, attention kernels, training speed against two peers, data loading,
HellaSwag speed and a short real training run, printed as one markdown table and appended to RESULTS.md.

    python benchmarks/gpu_check.py                              # everything, 124M shape (aimed at ~10 min on an H100)
    python benchmarks/gpu_check.py --sections parity,attention --no-append
    python benchmarks/gpu_check.py --device cpu --no-append     # smoke test: everything at a tiny shape

Sections, each checking that its two sides agree before timing them; a section that fails reports it in its
row and the others still run (on a GPU each runs in its own process, with a time limit):
  parity       our model vs transformers' GPT2LMHeadModel from the same weights; fused vs plain loss
  attention    the kernels a training step runs, eager and compiled: flash attention, not the math fallback;
               FlashAttention-3 (kernels-community, through `kernels`) against sdpa where a Hopper GPU has it
  train        training step at T=1024: tok/s, MFU, peak memory, compile graphs; vs GPT2LMHeadModel and
               build-nanogpt's GPT, same weights, optimizer, precision and compile setting
  data         ShardedTokenLoader's time per 124M optimizer step (64 x 1024 x 8) against the GPU step time
  eval         HellaSwag items/s against one item per forward (bench_eval.py's baseline)
  shakespeare  `train.py --max-steps 200` on tiny-Shakespeare: wall time and final validation loss
  syncs        train.py's steps under torch.cuda.set_sync_debug_mode("warn"): syncs per step, logging or not
  fsdp         FSDP2 vs DDP with bf16 through train.py on every GPU here (2 or more): the same losses
"""

import argparse
import contextlib
import copy
import dataclasses
import datetime
import gc
import json
import math
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from _common import REPO, describe_machine, sync, timed  # first: puts the repository on sys.path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from configuration_gpt2repro import GPT2ReproConfig  # noqa: E402
from gpt2repro.checkpoints import RunDir  # noqa: E402
from gpt2repro.fileio import write_atomically  # noqa: E402
from gpt2repro.provenance import git_state  # noqa: E402
from gpt2repro.report import markdown_table  # noqa: E402
from modeling_gpt2repro import GPT2ReproForCausalLM  # noqa: E402
from gpt2repro.throughput import device_peak_flops, flops_per_token, keep_freed_memory_for_reuse, mfu  # noqa: E402
from gpt2repro.tokenizer import VOCAB_SIZE  # noqa: E402

RESULTS = REPO / "benchmarks" / "RESULTS.md"
SECTION_NAMES = ("parity", "attention", "train", "data", "eval", "shakespeare", "syncs", "fsdp")
# Upper bounds for one section in its own process (GPU runs); most of "train" is torch.compile.
SECTION_TIMEOUTS = dict(parity=180, attention=360, train=540, data=180, eval=240, shakespeare=420, syncs=300, fsdp=420)

# Goals for one H100 at the 124M shape (issue 12); elsewhere the figures are printed without a verdict.
GOAL_MFU = 0.50
GOAL_VS_HF = 1.2
GOAL_EVAL = 4.0
GOAL_LOADER_SHARE = 0.05  # of the GPU step, counting the loader as if nothing overlapped it

# Parity tolerances. fp32 runs with TF32 off, so only summation order differs between the sides' kernels.
# bf16 autocast rounds every matmul input to 8 mantissa bits, and the two sides use different kernels.
LOGITS_TOL = 1e-4
BF16_LOSS_TOL = 2e-2
FUSED_LOSS_TOL = 1e-5
FUSED_GRAD_TOL = 1e-4  # worst max|diff| / max|grad| over the parameters
FUSED_BF16_GRAD_SLACK = 2.0  # the fused bf16 gradient may be this many times further from fp32 than the plain one

# Quoted beside the GPU figure, not checked against it.
CPU_REFERENCE = "CPU: the `make demo` figures in benchmarks/RESULTS.md (the same tiny preset, 4,096 tokens per step)"


@dataclasses.dataclass(frozen=True)
class Profile:
    """The shapes one device runs: the 124M recipe on a GPU, a tiny model for the CPU smoke test."""

    model: dict  # n_layer, n_head, n_embd
    seq: int
    batch_sizes: tuple  # ours, section train
    peer_batch_sizes: tuple  # the peers as well (each costs a compilation)
    warmup: int
    steps: int
    small_batch: int  # parity and attention
    data: dict  # batch, seq, accum, shards, shard_tokens, steps
    eval_items: int  # the 12-item fixture repeated
    eval_batch: int
    eval_repeats: int  # timed runs of each side, interleaved; the fastest counts
    shakespeare: tuple  # train.py arguments after --max-steps


PROFILES = {
    "cuda": Profile(
        model=dict(n_layer=12, n_head=12, n_embd=768), seq=1024, batch_sizes=(16, 32, 64), peer_batch_sizes=(64,),
        warmup=3, steps=10, small_batch=4,
        data=dict(batch=64, seq=1024, accum=8, shards=4, shard_tokens=8_000_000, steps=10),
        eval_items=480, eval_batch=16, eval_repeats=2, shakespeare=(),
    ),
    "cpu": Profile(
        model=dict(n_layer=2, n_head=2, n_embd=64), seq=32, batch_sizes=(2,), peer_batch_sizes=(2,),
        warmup=1, steps=1, small_batch=1,
        data=dict(batch=4, seq=64, accum=2, shards=2, shard_tokens=20_000, steps=3),
        eval_items=4, eval_batch=16, eval_repeats=1,
        shakespeare=("--total-batch-tokens", "256", "--micro-batch-size", "2", "--seq-len", "128",
                     "--val-tokens", "512", "--sample-tokens", "4"),
    ),
}


@dataclasses.dataclass
class Row:
    section: str
    check: str
    result: str
    compared: str = ""
    goal: str = ""
    status: str = ""  # ok | FAIL | met | not met | n/a | info | error


class CheckFailed(Exception):
    """A parity check failed: what was measured after it would compare unequal things."""


# ----------------------------------------------------------------------------------------------
# helpers


def model_config(profile: Profile) -> GPT2ReproConfig:
    return GPT2ReproConfig(n_positions=profile.seq, **profile.model)


def random_tokens(batch: int, seq: int, device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1234)  # the same tokens for every side
    return torch.randint(0, VOCAB_SIZE, (batch, seq), generator=generator).to(device)


@contextlib.contextmanager
def full_fp32():
    """fp32 matmuls without TF32, for parity: TF32 keeps 10 mantissa bits and would hide real differences."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def autocast(args):
    device_type = torch.device(args.device).type
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=args.precision == "bf16")


def goals_apply(args, profile) -> bool:
    """The goals are set for the 124M shape on a GPU; a CPU smoke run prints figures only."""
    return args.device == "cuda" and profile is PROFILES["cuda"]


def verdict(args, profile, met: bool) -> str:
    return ("met" if met else "not met") if goals_apply(args, profile) else "n/a"


def ok(passed: bool) -> str:
    return "ok" if passed else "FAIL"


def release(device) -> None:
    """Drop compiled graphs and cached blocks so the next measurement starts from an empty device."""
    torch._dynamo.reset()
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def compile_counts() -> tuple[int, int]:
    """(graphs compiled, graph breaks) so far in this process, from dynamo's counters."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


def compiled(model, mode: str):
    if mode == "off":
        return model
    return torch.compile(model, backend=mode, dynamic=False)


def max_logit_diff(ours, peer_logits_fn, input_ids) -> tuple[float, float]:
    """(max |ours - peer| over the tokenizer's ids, largest |logit|), fp32 without TF32, eval mode."""
    with full_fp32(), torch.no_grad():
        reference = ours.eval()(input_ids, use_cache=False).logits
        peer = peer_logits_fn(input_ids)[..., : reference.shape[-1]]
    return (reference - peer).abs().max().item(), reference.abs().max().item()


# ----------------------------------------------------------------------------------------------
# section 1: parity on the device


def loss_and_grads(model, input_ids, fused: bool, precision_context):
    model.zero_grad(set_to_none=True)
    model.train(fused)  # train mode (with grad) takes the fused loss; eval mode (no dropout either) the plain one
    with precision_context:
        out = model(input_ids, labels=input_ids, use_cache=False)
    if (out.logits is None) != fused:
        raise CheckFailed(f"expected the {'fused' if fused else 'plain'} loss path, got the other")
    out.loss.backward()
    return out.loss.item(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def worst_relative_diff(grads: dict, reference: dict) -> float:
    return max(((grads[n] - r).abs().max() / r.abs().max().clamp_min(1e-30)).item() for n, r in reference.items())


def section_parity(args, profile, context):
    device, rows = args.device, []
    torch.manual_seed(0)
    ours = GPT2ReproForCausalLM(model_config(profile)).to(device)
    gpt2 = ours.to_gpt2().to(device)  # vocab 50,257, Conv1D weights: what transformers users load
    input_ids = random_tokens(profile.small_batch, profile.seq, device)
    shape = f"{profile.small_batch} x {profile.seq}"

    diff, largest = max_logit_diff(ours, lambda ids: gpt2.eval()(ids, use_cache=False).logits, input_ids)
    rows.append(Row("parity", f"fp32 logits, ours vs GPT2LMHeadModel (same weights, {shape})",
                    f"max abs diff {diff:.1e} (largest logit {largest:.2f})", goal=f"< {LOGITS_TOL:.0e}",
                    status=ok(diff < LOGITS_TOL)))

    ours.train()
    gpt2.train()
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        ours_loss = ours(input_ids, labels=input_ids).loss.item()  # train mode: the fused loss
        gpt2_loss = gpt2(input_ids, labels=input_ids).loss.item()
    diff = abs(ours_loss - gpt2_loss)
    rows.append(Row("parity", "bf16 autocast training loss, ours (fused) vs GPT2LMHeadModel",
                    f"{ours_loss:.4f} vs {gpt2_loss:.4f}, diff {diff:.1e}", goal=f"< {BF16_LOSS_TOL:.0e}",
                    status=ok(diff < BF16_LOSS_TOL)))
    gpt2 = None  # free its memory before the gradient checks

    with full_fp32():
        plain_loss, plain = loss_and_grads(ours, input_ids, False, contextlib.nullcontext())
        fused_loss, fused = loss_and_grads(ours, input_ids, True, contextlib.nullcontext())
    loss_diff, grad_diff = abs(fused_loss - plain_loss), worst_relative_diff(fused, plain)
    rows.append(Row("parity", "fp32 fused loss vs plain loss: value, gradients",
                    f"loss diff {loss_diff:.1e}; gradients max|diff|/max|grad| {grad_diff:.1e} (worst parameter)",
                    goal=f"< {FUSED_LOSS_TOL:.0e}; < {FUSED_GRAD_TOL:.0e}",
                    status=ok(loss_diff < FUSED_LOSS_TOL and grad_diff < FUSED_GRAD_TOL)))

    device_type = torch.device(device).type
    plain16_loss, plain16 = loss_and_grads(ours, input_ids, False, torch.autocast(device_type, dtype=torch.bfloat16))
    fused16_loss, fused16 = loss_and_grads(ours, input_ids, True, torch.autocast(device_type, dtype=torch.bfloat16))
    loss_diff = abs(fused16_loss - plain16_loss)
    fused_error, plain_error = worst_relative_diff(fused16, plain), worst_relative_diff(plain16, plain)
    passed = loss_diff < BF16_LOSS_TOL and fused_error <= FUSED_BF16_GRAD_SLACK * plain_error + 1e-3
    rows.append(Row("parity", "bf16 autocast fused loss vs plain loss: value, gradient error against fp32",
                    f"loss diff {loss_diff:.1e}; gradient error fused {fused_error:.1e}, plain {plain_error:.1e}",
                    goal=f"< {BF16_LOSS_TOL:.0e}; fused <= {FUSED_BF16_GRAD_SLACK:g} x plain + 1e-3",
                    status=ok(passed)))
    return rows


# ----------------------------------------------------------------------------------------------
# section 2: which attention kernel a training step runs


def attention_kernels(names: list[str]) -> dict:
    """Sort profiler names into flash forward / backward and the fallbacks. A flash kernel's name says
    "flash" (PyTorch's own and cuDNN's "..._flash_fprop_..."); on a CPU the aten op does."""
    flash = sorted({n for n in names if "flash" in n.lower()})
    backward = [n for n in flash if any(k in n.lower() for k in ("bwd", "bprop", "backward"))]
    return dict(
        forward=[n for n in flash if n not in backward],
        backward=backward,
        math=sorted({n for n in names if "scaled_dot_product_attention_math" in n}),
        efficient=sorted({n for n in names if "efficient_attention" in n or "fmha_cutlass" in n.lower()}),
    )


def short_kernel_name(name: str) -> str:
    return name.removeprefix("void ").split("<")[0].split("(")[0]


def section_attention(args, profile, context):
    """The kernels of a training step, eager and as train.py compiles it; then FlashAttention-3 against sdpa."""
    device = torch.device(args.device)
    modes = ["off"] + ([args.compile] if args.compile != "off" else [])
    rows = [attention_row(args, profile, device, mode) for mode in modes]
    return rows + flash_attention_3_rows(args, profile, device)


def attention_step(args, profile, device, mode: str, attention: str = "sdpa"):
    model = GPT2ReproForCausalLM(model_config(profile)).to(device).train()
    model.set_attn_implementation(attention)
    forward = compiled(model, mode)
    window = random_tokens(profile.small_batch, profile.seq + 1, device)

    def step():  # as train.py: (T+1)-token windows, shift_labels, bf16 autocast
        with autocast(args):
            loss = forward(input_ids=window[:, :-1], shift_labels=window[:, 1:]).loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    for _ in range(2):  # compilation and kernel selection happen here
        step()
    sync(device)
    return step


def attention_row(args, profile, device, mode: str) -> Row:
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile as torch_profile

    step = attention_step(args, profile, device, mode)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        step()
        sync(device)
    kind = DeviceType.CUDA if device.type == "cuda" else DeviceType.CPU
    found = attention_kernels([e.name for e in prof.events() if e.device_type == kind])
    ops = attention_kernels([e.name for e in prof.events() if e.device_type == DeviceType.CPU])
    fallbacks = found["math"] + found["efficient"] + ops["math"] + ops["efficient"]
    passed = bool(found["forward"]) and bool(found["backward"]) and not fallbacks
    names = ", ".join(short_kernel_name(n) for n in found["forward"][:1] + found["backward"][:1]) or "no flash kernel"
    what = "kernels" if device.type == "cuda" else "ops"
    result = f"flash forward {len(found['forward'])}, backward {len(found['backward'])} {what} ({names})"
    if fallbacks:
        result += f"; fallback ran: {', '.join(sorted(set(map(short_kernel_name, fallbacks))))}"
    shape = f"{profile.small_batch} x {profile.seq}, {args.precision}, compile {mode}"
    return Row("attention", f"training step of ours ({shape}): attention {what}", result,
               goal="flash forward and backward, no math/efficient fallback", status=ok(passed))


def flash_attention_3_rows(args, profile, device) -> list:
    from gpt2repro.attention import choose_attention

    attention, notice = choose_attention("auto", device)
    check = "FlashAttention-3 (kernels-community/flash-attn3) vs sdpa, training step"
    if attention == "sdpa":
        why = notice or "needs a Hopper GPU and `pip install kernels`"
        return [Row("attention", check, f"not used: {why}", status="info")]
    times = {}
    for name in ("sdpa", attention):
        step = attention_step(args, profile, device, args.compile, name)
        started = time.perf_counter()
        for _ in range(profile.steps):
            step()
        sync(device)
        times[name] = (time.perf_counter() - started) / profile.steps
    speedup = times["sdpa"] / times[attention]
    return [Row("attention", check, f"{times[attention] * 1000:.1f} ms vs sdpa {times['sdpa'] * 1000:.1f} ms per step "
                f"({speedup:.2f}x)", "sdpa (PyTorch's flash kernel)", status="info")]


# ----------------------------------------------------------------------------------------------
# section 3: training step against transformers' GPT2LMHeadModel and build-nanogpt's GPT


def build_ours(reference):
    return copy.deepcopy(reference)


def build_gpt2(reference):
    """transformers' GPT2LMHeadModel with our weights, vocab padded to ours (50,304: the same lm_head matmul)."""
    gpt2 = reference.to_gpt2()
    gpt2.resize_token_embeddings(reference.config.padded_vocab_size, mean_resizing=False)
    with torch.no_grad():
        gpt2.transformer.wte.weight.copy_(reference.transformer.wte.weight)
    gpt2.config.use_cache = False
    gpt2.loss_type = "ForCausalLM"  # unset, transformers logs a warning inside forward: a graph break
    if gpt2.config._attn_implementation != "sdpa":
        raise CheckFailed(f"GPT2LMHeadModel uses {gpt2.config._attn_implementation} attention, not sdpa")
    return gpt2


def build_nanogpt(reference):
    from nanogpt_peer import GPT, GPTConfig

    c = reference.config
    model = GPT(GPTConfig(block_size=c.n_positions, vocab_size=c.padded_vocab_size, n_layer=c.n_layer,
                          n_head=c.n_head, n_embd=c.n_embd))
    missing, unexpected = model.load_state_dict(reference.state_dict(), strict=False)
    if unexpected or any(not k.endswith(".attn.bias") for k in missing):  # attn.bias: its unused mask buffer
        raise CheckFailed(f"build-nanogpt GPT does not take our state dict: {missing} {unexpected}")
    return model


def hf_loss(model, input_ids, targets):
    return model(input_ids, labels=input_ids).loss


def nanogpt_loss(model, input_ids, targets):
    return model(input_ids, targets)[1]


SIDES = {  # name: (build from our reference weights, training loss, logits)
    "ours": (build_ours, hf_loss, lambda m, ids: m(ids, use_cache=False).logits),
    "GPT2LMHeadModel": (build_gpt2, hf_loss, lambda m, ids: m.eval()(ids, use_cache=False).logits),
    "build-nanogpt GPT": (build_nanogpt, nanogpt_loss, lambda m, ids: m.eval()(ids)[0]),
}


def time_training(side, reference, batch, args, profile) -> dict:
    """One side at one micro-batch: warm-up (compilation), then timed steps; OOM is a result, not a crash."""
    build, loss_fn, _ = SIDES[side]
    device = torch.device(args.device)
    release(device)
    try:
        model = build(reference).to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
        forward = compiled(model, args.compile)
        input_ids = random_tokens(batch, profile.seq, device)
        targets = F.pad(input_ids[:, 1:], (0, 1), value=-100)  # labels=input_ids, pre-shifted (build-nanogpt)

        def step():
            with autocast(args):
                loss = loss_fn(forward, input_ids, targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss

        start = compile_counts()
        _, warmup_s = timed(lambda: [step() for _ in range(profile.warmup)], device=device)
        warm = compile_counts()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times, losses = [], []
        for _ in range(args.steps or profile.steps):
            loss, seconds = timed(step, device=device)
            times.append(seconds)
            losses.append(loss.item())
        end = compile_counts()
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    except torch.OutOfMemoryError:
        return dict(error="out of memory")
    except Exception as e:  # e.g. a compile error on one side: the other sides still run
        traceback.print_exc()
        return dict(error=f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300])
    finally:
        model = optimizer = forward = None
        release(device)
    if not all(map(math.isfinite, losses)):
        return dict(error=f"non-finite loss {losses}")
    step_s = statistics.median(times)
    return dict(tok_s=batch * profile.seq / step_s, step_s=step_s, warmup_s=warmup_s, peak=peak,
                graphs=warm[0] - start[0], breaks=warm[1] - start[1], recompiles=end[0] - warm[0])


def section_train(args, profile, context):
    device = torch.device(args.device)
    torch.manual_seed(0)
    reference = GPT2ReproForCausalLM(model_config(profile))  # on the CPU: every side starts from these weights
    rows, sides = [], ["ours"]
    input_ids = random_tokens(profile.small_batch, profile.seq, device)
    ours = build_ours(reference).to(device)
    for side in ("GPT2LMHeadModel", "build-nanogpt GPT"):
        build, _, logits = SIDES[side]
        try:
            peer = build(reference).to(device)
            diff, largest = max_logit_diff(ours, lambda ids: logits(peer, ids), input_ids)
            passed = diff < LOGITS_TOL
            result = f"max abs diff {diff:.1e} (largest logit {largest:.2f})"
        except CheckFailed as e:
            passed, result = False, str(e)
        rows.append(Row("train", f"parity: fp32 logits, ours vs {side} (same weights)", result,
                        goal=f"< {LOGITS_TOL:.0e}", status=ok(passed)))
        sides += [side] if passed else []
        peer = None
    ours = None
    release(device)

    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    peak_flops, peak_source = device_peak_flops(device, dtype)
    per_token = flops_per_token(reference.config, profile.seq)  # the same useful work for every side
    rows.append(Row("train", "MFU denominator", peak_source, status="info"))
    batches = args.batch_sizes or profile.batch_sizes
    peer_batches = args.peer_batch_sizes or profile.peer_batch_sizes
    results = {}
    for batch in sorted(set(batches) | set(peer_batches)):
        for side in sides:
            if batch not in (batches if side == "ours" else peer_batches):
                continue
            print(f"  train: {side}, micro-batch {batch}", flush=True)
            results[side, batch] = r = time_training(side, reference, batch, args, profile)
            ours_here = results.get(("ours", batch))
            rows.append(training_row(side, batch, r, ours_here, peak_flops, per_token, args, profile))
    ours_runs = [r for (side, _), r in results.items() if side == "ours" and "error" not in r]
    if args.compile != "off" and ours_runs:
        breaks, recompiles = sum(r["breaks"] for r in ours_runs), sum(r["recompiles"] for r in ours_runs)
        rows.append(Row("train", f"ours: torch.compile ({args.compile}) graph breaks, recompiles after warm-up",
                        f"{breaks} breaks, {recompiles} recompiles ({', '.join(str(r['graphs']) for r in ours_runs)}"
                        " graph(s) per micro-batch)", goal="0 and 0", status=ok(breaks == 0 and recompiles == 0)))
    if ours_runs:
        best_batch = max(b for (side, b), r in results.items() if side == "ours" and "error" not in r)
        context["train"] = dict(tok_s=results["ours", best_batch]["tok_s"], batch=best_batch)
    return rows


def training_row(side, batch, r, ours, peak_flops, per_token, args, profile) -> Row:
    check = f"{side}, micro-batch {batch} x {profile.seq}"
    if "error" in r:
        return Row("train", check, r["error"], status="error")
    peak = f"{r['peak'] / 2**30:.1f} GiB" if r["peak"] is not None else "n/a on CPU"
    utilization = mfu(r["tok_s"], per_token, peak_flops)
    compile_info = f"{r['graphs']} graph(s), {r['breaks']} breaks, {r['recompiles']} recompiles"
    result = (f"{r['tok_s']:,.0f} tok/s, MFU {utilization:.1%}, peak memory {peak}, step {r['step_s'] * 1e3:.0f} ms; "
              f"compile {args.compile}: {compile_info}, warm-up {r['warmup_s']:.0f} s")
    if side == "ours":
        return Row("train", check, result, goal=f"MFU >= {GOAL_MFU:.0%}",
                   status=verdict(args, profile, utilization >= GOAL_MFU))
    if ours is None or "error" in ours:
        return Row("train", check, result, "ours not measured at this micro-batch", status="info")
    ratio = ours["tok_s"] / r["tok_s"]
    memory = f", peak memory ours {ours['peak'] / r['peak']:.2f}x" if r["peak"] else ""
    compared = f"ours {ratio:.2f}x tok/s{memory}"
    if side == "GPT2LMHeadModel":
        return Row("train", check, result, compared, goal=f"ours >= {GOAL_VS_HF:g}x",
                   status=verdict(args, profile, ratio >= GOAL_VS_HF))
    return Row("train", check, result, compared, status="info")


# ----------------------------------------------------------------------------------------------
# section 4: the data loader against the GPU step


def write_synthetic_shards(data_dir: Path, shards: int, shard_tokens: int, val_tokens: int) -> np.ndarray:
    """Shards whose token at stream position p is p mod the vocabulary (so a window shows where it came from),
    plus a manifest as prepare_data.py writes it. Returns the val split's tokens."""
    from gpt2repro.token_shards import MANIFEST_VERSION, write_manifest, write_shard
    from gpt2repro.tokenizer import tokenizer_fingerprint

    entries, position, val = [], 0, None
    for i, (split, n) in enumerate([("val", val_tokens)] + [("train", shard_tokens)] * shards):
        tokens = ((position + np.arange(n)) % VOCAB_SIZE).astype(np.uint16)
        val = tokens if split == "val" else val
        name = f"synthetic_{split}_{i:06d}.bin"
        entries.append(dict(file=name, split=split, tokens=n, documents=1, sha256=write_shard(data_dir / name, tokens)))
        position += n
    splits = {s: dict(tokens=sum(e["tokens"] for e in entries if e["split"] == s), documents=1,
                      shards=sum(e["split"] == s for e in entries)) for s in ("val", "train")}
    write_manifest(data_dir, dict(format_version=MANIFEST_VERSION, name="synthetic", source={"kind": "synthetic"},
                                  tokenizer=tokenizer_fingerprint(), settings=dict(val_tokens=val_tokens,
                                  shard_tokens=shard_tokens), shards=entries, splits=splits, skipped_documents=0,
                                  complete=True))
    return val


def check_windows(loader, val_tokens: np.ndarray, d: dict) -> str:
    """The loader's windows are the shards' tokens: val in file order exactly, train windows contiguous but for
    at most one shard boundary each. Returns a description; raises CheckFailed."""
    from gpt2repro.token_shards import ShardedTokenLoader

    val = ShardedTokenLoader(loader.data_dir, "val", d["batch"], d["seq"]).next_batch().numpy()
    expected = np.stack([val_tokens[i * d["seq"] : i * d["seq"] + d["seq"] + 1] for i in range(d["batch"])])
    if not np.array_equal(val, expected):
        raise CheckFailed("the val windows differ from the shard's tokens")
    batch = loader.next_batch().numpy()
    loader.reset()
    if batch.shape != (d["batch"], d["seq"] + 1):
        raise CheckFailed(f"train batch of shape {batch.shape}, expected {(d['batch'], d['seq'] + 1)}")
    jumps = ((np.diff(batch, axis=1) % VOCAB_SIZE) != 1).sum(axis=1)
    if jumps.max() > 1:
        raise CheckFailed(f"a train window is not a contiguous run of tokens ({jumps.max()} jumps)")
    return f"val windows equal the shard's tokens; train windows contiguous, shape {batch.shape}"


def section_data(args, profile, context):
    from gpt2repro.token_shards import ShardedTokenLoader

    device, d = torch.device(args.device), profile.data
    with tempfile.TemporaryDirectory() as tmp:
        val_tokens = write_synthetic_shards(Path(tmp), d["shards"], d["shard_tokens"], 4 * d["batch"] * d["seq"])
        loader = ShardedTokenLoader(tmp, "train", d["batch"], d["seq"])
        rows = [Row("data", "parity: loader windows against the written tokens", check_windows(loader, val_tokens, d),
                    status="ok")]

        def one_step():
            return [loader.next_batch().to(device, non_blocking=True) for _ in range(d["accum"])]

        one_step()  # first touch of the memory-mapped shards
        seconds = statistics.median([timed(one_step, device=device)[1] for _ in range(d["steps"])])
    tokens = d["batch"] * d["seq"] * d["accum"]
    layout = f"{d['batch']} x {d['seq']} x accumulation {d['accum']}"
    result = f"{seconds * 1e3:.1f} ms per step ({tokens / seconds:,.0f} tok/s) incl. copy to {device.type}"
    train = context.get("train")
    if train is None:
        rows.append(Row("data", f"ShardedTokenLoader, one optimizer step of {layout}", result,
                        "no GPU step time: run section train in the same command", status="info"))
        return rows
    gpu_step = tokens / train["tok_s"]
    share = seconds / gpu_step
    rows.append(Row("data", f"ShardedTokenLoader, one optimizer step of {layout}", result,
                    f"{share:.1%} of the {gpu_step:.2f} s training step (ours at micro-batch {train['batch']})",
                    goal=f"< {GOAL_LOADER_SHARE:.0%} of the step, as if not overlapped",
                    status=verdict(args, profile, share < GOAL_LOADER_SHARE)))
    return rows


# ----------------------------------------------------------------------------------------------
# section 5: HellaSwag scoring against one item per forward


def section_eval(args, profile, context):
    import bench_eval
    from gpt2repro.hellaswag import encode_requests, ending_logliks, load_hellaswag, score_hellaswag
    from gpt2repro.tokenizer import get_encoding, load_tokenizer

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = GPT2ReproForCausalLM(GPT2ReproConfig(**profile.model)).to(device).eval()  # fp32, context 1024
    tokenizer, enc = load_tokenizer(), get_encoding()
    fixture = load_hellaswag(bench_eval.FIXTURE)
    items = [fixture[i % len(fixture)] for i in range(profile.eval_items)]
    contexts, endings = encode_requests(tokenizer, items)["completion"]
    batch = profile.eval_batch
    with full_fp32():
        # parity first (doubles as the warm-up): the same completion-style log-likelihoods from both
        reference = bench_eval.baseline_logliks(model, enc, items)
        diff = float(np.abs(ending_logliks(model, contexts, endings, batch) - reference).max())
        rows = [Row("eval", f"parity: completion-style log-likelihoods vs the baseline ({len(items)} items)",
                    f"max abs diff {diff:.1e}", goal="< 1e-3", status=ok(diff < 1e-3))]
        if diff >= 1e-3:
            return rows
        runs = {"baseline": [], "completion": [], "both": []}
        for _ in range(profile.eval_repeats):  # interleaved, so background load hits all three alike
            runs["baseline"].append(timed(bench_eval.baseline_logliks, model, enc, items, device=device)[1])
            runs["completion"].append(timed(ending_logliks, model, contexts, endings, batch, device=device)[1])
            runs["both"].append(timed(score_hellaswag, model, tokenizer, items, batch, device=device)[1])
    rate = {name: len(items) / min(seconds) for name, seconds in runs.items()}
    shape = f"{model.config.n_layer} x {model.config.n_embd}, fp32"
    ratio = rate["completion"] / rate["baseline"]
    return rows + [
        Row("eval", f"one item per forward (build-nanogpt's loop, bench_eval.py), {shape}",
            f"{rate['baseline']:,.1f} items/s", status="info"),
        Row("eval", f"eval_hellaswag, completion style only (same work), {batch} items per forward",
            f"{rate['completion']:,.1f} items/s", f"{ratio:.2f}x the baseline", goal=f">= {GOAL_EVAL:g}x",
            status=verdict(args, profile, ratio >= GOAL_EVAL)),
        Row("eval", "eval_hellaswag, score_hellaswag (both conventions: twice the sequences)",
            f"{rate['both']:,.1f} items/s", f"{rate['both'] / rate['baseline']:.2f}x the baseline", status="info"),
    ]


# ----------------------------------------------------------------------------------------------
# section 6: a short real training run through train.py


def section_shakespeare(args, profile, context):
    steps = args.shakespeare_steps or (200 if args.device == "cuda" else 2)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        # in a scratch directory: train.py tokenizes the shipped tiny-Shakespeare into ./data itself
        command = [sys.executable, str(REPO / "train.py"), "--max-steps", str(steps), "--run-dir", str(run_dir),
                   "--log-with", "none", *profile.shakespeare]
        env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if args.device == "cpu" else {}))
        proc, wall = timed(subprocess.run, command, cwd=tmp, env=env, capture_output=True, text=True,
                           timeout=SECTION_TIMEOUTS["shakespeare"] - 30)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"train.py exited with {proc.returncode}: {last}")
        metrics = [json.loads(line) for line in RunDir(run_dir).metrics.read_text().splitlines()]
    evals = [(m["step"], m["val_loss"]) for m in metrics if "val_loss" in m]
    speeds = [m["tokens_per_sec"] for m in metrics if "tokens_per_sec" in m]
    if not evals:
        raise RuntimeError("train.py logged no val_loss")
    (first_step, first), (last_step, last) = evals[0], evals[-1]
    learned = math.isfinite(last) and (len(evals) == 1 or last < first)
    trend = f", from {first:.4f} at step {first_step}" if len(evals) > 1 else ""
    result = (f"{steps} steps in {wall:.0f} s (process wall time; median {statistics.median(speeds):,.0f} tok/s), "
              f"final val loss {last:.4f} at step {last_step}{trend}")
    return [Row("shakespeare", f"train.py --max-steps {steps} (tiny preset) on {args.device}", result, CPU_REFERENCE,
                goal="finite val loss, falling", status=ok(learned))]


# section 7: host syncs of train.py's steps


def section_syncs(args, profile, context):
    """train.py's own loop under set_sync_debug_mode("warn"), each warning counted in the step that made it."""
    import warnings

    if args.device != "cuda":
        return [Row("syncs", "syncs per training step", "CUDA only (tests/test_gpu_path.py counts reads on CPU)",
                    status="n/a")]
    import train
    from accelerate.state import AcceleratorState

    per_step, current, learning_rate = {}, [None], train.learning_rate
    log_every, steps = 4, 12
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        def marked(step, s):  # each step starts here: what was caught since the last start is the last step's
            if current[0] is not None:
                per_step[current[0]] = sum("synchroniz" in str(w.message) for w in caught)
            caught.clear()
            current[0] = step
            return learning_rate(step, s)

        cwd = os.getcwd()
        os.chdir(tmp)  # train.py tokenizes the shipped tiny-Shakespeare into ./data itself
        AcceleratorState._reset_state(reset_partial_state=True)
        train.learning_rate = marked
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train.main(["--max-steps", str(steps), "--log-every", str(log_every), "--run-dir", f"{tmp}/run",
                        "--log-with", "none", "--eval-every", "0",
                        "--compile" if args.compile != "off" else "--no-compile"])
        finally:
            torch.cuda.set_sync_debug_mode(0)
            train.learning_rate = learning_rate
            os.chdir(cwd)
    logging = [per_step.get(k, 0) for k in range(steps - 1) if (k + 1) % log_every == 0]
    quiet = [per_step.get(k, 0) for k in range(steps - 1) if (k + 1) % log_every]  # the last step saves: left out
    passed = max(quiet) == 0 and max(logging) <= 1
    return [Row("syncs", f"syncs per step of train.py (tiny preset, --log-every {log_every}, compile {args.compile})",
                f"steps that do not log: at most {max(quiet)}; steps that log: at most {max(logging)}",
                goal="0 between logs, 1 at a log", status=ok(passed))]


# ----------------------------------------------------------------------------------------------
# section 8: FSDP2 with bf16 against DDP with bf16, on the GPUs here


def section_fsdp(args, profile, context):
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    check = "FSDP2 vs DDP, bf16, train.py tiny preset, 8 steps: training losses and val loss"
    if gpus < 2:
        return [Row("fsdp", check, f"needs 2 GPUs or more ({gpus} here); tests/test_gpu_path.py runs it on 2 CPU "
                    "processes", status="n/a")]
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, config in (("ddp", "8gpu.yaml"), ("fsdp", "fsdp.yaml")):
            command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                       str(REPO / "accelerate_configs" / config), "--num_processes", str(gpus), str(REPO / "train.py"),
                       "--max-steps", "8", "--mixed-precision", "bf16", "--log-every", "1", "--log-with", "none",
                       "--total-batch-tokens", str(16 * 256 * gpus), "--eval-every", "0", "--run-dir", f"{tmp}/{name}"]
            proc = subprocess.run(command, cwd=tmp, capture_output=True, text=True,
                                  timeout=SECTION_TIMEOUTS["fsdp"] // 2 - 30)
            if proc.returncode != 0:
                raise RuntimeError(f"{name}: exited with {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
            rows = [json.loads(line) for line in RunDir(Path(tmp) / name).metrics.read_text().splitlines()]
            runs[name] = ([r["loss"] for r in rows if "loss" in r], [r["val_loss"] for r in rows if "val_loss" in r])
    (ddp, ddp_val), (fsdp, fsdp_val) = runs["ddp"], runs["fsdp"]
    worst = max(abs(a - b) / abs(b) for a, b in zip(fsdp + fsdp_val, ddp + ddp_val))
    passed = len(fsdp) == len(ddp) == 8 and worst <= 1e-3
    return [Row("fsdp", f"{check} on {gpus} GPUs", f"worst relative difference {worst:.1e} over {len(fsdp)} steps",
                "DDP", goal="<= 1e-3 at every step", status=ok(passed))]


SECTIONS = dict(parity=section_parity, attention=section_attention, train=section_train, data=section_data,
                eval=section_eval, shakespeare=section_shakespeare, syncs=section_syncs, fsdp=section_fsdp)


# ----------------------------------------------------------------------------------------------
# running sections, in this process or one each


def prepare_process(args) -> None:
    """The settings train.py uses: TF32 matmuls on a GPU (fp32 parity turns them off locally), glibc keeping
    freed memory on a CPU."""
    torch.manual_seed(0)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        keep_freed_memory_for_reuse()


def run_here(name, args, context) -> tuple[list[Row], dict]:
    profile = PROFILES[args.device]
    prepare_process(args)
    try:
        rows = SECTIONS[name](args, profile, context)
    except Exception as e:  # one section's failure is its row; the others still run
        traceback.print_exc()
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        rows = [Row(name, "section did not finish", f"{type(e).__name__}: {message}"[:300], status="error")]
    finally:
        release(args.device)
    return rows, context


def _section_process(name, args, context, conn) -> None:
    rows, context = run_here(name, args, context)
    conn.send(([dataclasses.asdict(r) for r in rows], context))


def run_isolated(name, args, context) -> tuple[list[Row], dict]:
    """The section in a fresh process: its memory is its own, and a crash or hang costs only its row."""
    spawn = mp.get_context("spawn")
    receiver, sender = spawn.Pipe(duplex=False)
    # not a daemon: inductor starts compile workers, which a daemonic process may not have
    proc = spawn.Process(target=_section_process, args=(name, args, context, sender))
    proc.start()
    sender.close()
    timeout = args.section_timeout or SECTION_TIMEOUTS[name]
    try:
        if receiver.poll(timeout):
            rows, context = receiver.recv()
            proc.join()
            return [Row(**r) for r in rows], context
        failure = f"timed out after {timeout} s"
    except EOFError:
        failure = "crashed"
    if proc.is_alive():
        proc.kill()
    proc.join()
    return [Row(name, "section did not finish", f"{failure} (exit code {proc.exitcode})", status="error")], context


def run_sections(args) -> list[Row]:
    rows, context = [], {}
    for name in args.sections:
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        section_rows, context = (run_isolated if args.isolate else run_here)(name, args, context)
        print("\n".join(markdown_table(TABLE_HEADER, [row_cells(r) for r in section_rows])), flush=True)
        print(f"   ({time.perf_counter() - started:.0f} s)", flush=True)
        rows += section_rows
    return rows


# ----------------------------------------------------------------------------------------------
# the report


TABLE_HEADER = ["section", "check", "result", "compared with", "goal", "status"]


def row_cells(row: Row) -> list:
    status = f"**{row.status}**" if row.status in ("FAIL", "error", "not met") else row.status
    return [row.section, row.check, row.result, row.compared, row.goal, status]


def report_markdown(rows: list[Row], machine: dict, when: datetime.datetime, command: str) -> str:
    """A dated RESULTS.md section: what ran where, then the table."""
    driver = f"driver {machine['driver']} (CUDA {machine.get('cuda')})" if "driver" in machine else "no GPU driver"
    return "\n".join([
        f"## GPU acceptance (gpu_check.py), {when:%Y-%m-%d %H:%M} UTC",
        "",
        f"Device: {machine['device']} | {driver} | torch {machine['torch']} | transformers {machine['transformers']} "
        f"| Python {machine['python']}, {machine['threads']} CPU threads | commit {machine.get('commit', 'unknown')}",
        f"Command: `{command}`",
        "",
        "\n".join(markdown_table(TABLE_HEADER, [row_cells(r) for r in rows])),
    ])


def append_results(path: Path, section: str) -> None:
    """Append a report section to RESULTS.md, keeping everything already there."""
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    write_atomically(path, old.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n")


def git_commit() -> str:
    state = git_state()
    return state["commit"][:12] + ("-dirty" if state["dirty"] else "")  # "-dirty": figures from uncommitted code


# ----------------------------------------------------------------------------------------------
# command line


def int_list(text: str) -> tuple:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 16,32,64") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: micro-batch sizes must be positive")
    return values


def section_list(text: str) -> tuple:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in SECTION_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown section {', '.join(unknown) or '(none)'}; "
                                         f"choose from {','.join(SECTION_NAMES)}")
    return names


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cuda: the 124M acceptance run; cpu: a smoke test of every section at a tiny shape")
    parser.add_argument("--sections", type=section_list, default=SECTION_NAMES,
                        help=f"comma-separated, run in this order (default: {','.join(SECTION_NAMES)})")
    parser.add_argument("--compile", choices=["inductor", "eager", "off"],
                        help="torch.compile backend for training (default: inductor on cuda, off on cpu)")
    parser.add_argument("--precision", choices=["bf16", "fp32"], help="training (default: bf16 on cuda, fp32 on cpu)")
    parser.add_argument("--batch-sizes", type=int_list, help="section train, ours (default cuda: 16,32,64)")
    parser.add_argument("--peer-batch-sizes", type=int_list,
                        help="section train, the peers too; each costs a compilation (default cuda: 64)")
    parser.add_argument("--steps", type=int, help="timed training steps per micro-batch (default cuda: 10)")
    parser.add_argument("--shakespeare-steps", type=int, help="section shakespeare (default: 200 on cuda, 2 on cpu)")
    parser.add_argument("--isolate", action=argparse.BooleanOptionalAction,
                        help="each section in its own process with a time limit (default: on with cuda)")
    parser.add_argument("--section-timeout", type=int, help="seconds per isolated section (default: per section)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the file the report is appended to")
    parser.add_argument("--no-append", action="store_true", help=f"do not touch {RESULTS.relative_to(REPO)}")
    parser.add_argument("--out", type=Path, help="also write the report to FILE (JSON if FILE ends in .json)")
    args = parser.parse_args(argv)
    for flag, path in (("--out", args.out), ("--results", None if args.no_append else args.results)):
        if path is not None and not path.parent.is_dir():
            parser.error(f"{flag} {path}: no such directory {path.parent}")
    cuda = args.device == "cuda"
    args.compile = args.compile or ("inductor" if cuda else "off")
    args.precision = args.precision or ("bf16" if cuda else "fp32")
    args.isolate = cuda if args.isolate is None else args.isolate
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda: no CUDA device is visible; run on a GPU node (or --device cpu: smoke test)")
    command = "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv)
    machine = dict(describe_machine(args.device), commit=git_commit())
    print(" | ".join(f"{k} {v}" for k, v in machine.items()), flush=True)
    rows = run_sections(args)
    report = report_markdown(rows, machine, datetime.datetime.now(datetime.timezone.utc), command.strip())
    print("\n" + report, flush=True)
    if args.out:
        if args.out.suffix == ".json":
            text = json.dumps(dict(machine=machine, command=command, rows=[dataclasses.asdict(r) for r in rows]),
                              indent=1)
        else:
            text = report
        write_atomically(args.out, text + "\n")
    if not args.no_append:
        append_results(args.results, report)
        print(f"appended to {args.results}")
    failed = [r for r in rows if r.status in ("FAIL", "error")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
