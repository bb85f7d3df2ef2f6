"""The training step of ours against transformers' GPT2LMHeadModel and build-nanogpt's GPT (benchmarks/nanogpt_peer.py):
parity of the logits from the same weights first, then tok/s, MFU, peak memory and torch.compile's graphs at each
micro-batch, every side with train.py's optimizer (make_optimizer, the gpt2-124m recipe), precision and compile
setting. MFU is gpt2repro.throughput's: the same useful FLOPs per token for every side."""

import argparse
import copy
import math
import traceback

import torch
import torch.nn.functional as F
from _common import max_logit_diff, random_tokens, release

from gpt2repro.throughput import device_peak_flops, flops_per_token, mfu
from modeling_gpt2repro import GPT2ReproForCausalLM

from .base import LOGITS_TOL, CheckFailed, Row, autocast, compiled, model_config, ok, recipe_124m, time_steps, verdict

NAME = "train"
SUMMARY = ("training step at T=1024: tok/s, MFU, peak memory, compile graphs; vs GPT2LMHeadModel and\n"
           "build-nanogpt's GPT, same weights, optimizer, precision and compile setting")
TIMEOUT = 540  # most of it is torch.compile

# Micro-batches timed: ours at each, the peers at `peers` too (each costs a compilation).
BATCHES = {"cuda": dict(ours=(16, 32, 64), peers=(64,)), "cpu": dict(ours=(2,), peers=(2,))}

# Goals for one H100 at the 124M shape (issue 12); elsewhere the figures are printed without a verdict.
GOAL_MFU = 0.50
GOAL_VS_HF = 1.2


def int_list(text: str) -> tuple:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 16,32,64") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: micro-batch sizes must be positive")
    return values


def add_arguments(parser) -> None:
    cuda = BATCHES["cuda"]
    parser.add_argument("--batch-sizes", type=int_list,
                        help=f"section train, ours (default cuda: {','.join(map(str, cuda['ours']))})")
    parser.add_argument("--peer-batch-sizes", type=int_list, help="section train, the peers too; each costs a "
                        f"compilation (default cuda: {','.join(map(str, cuda['peers']))})")
    parser.add_argument("--steps", type=int, help="timed training steps per micro-batch (default cuda: 10)")


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
    from gpt2repro.optim import make_optimizer

    build, loss_fn, _ = SIDES[side]
    device = torch.device(args.device)
    release(device)
    model = optimizer = forward = None
    try:
        model = build(reference).to(device).train()
        optimizer = make_optimizer(model, recipe_124m())
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

        r = time_steps(step, profile.warmup, args.steps or profile.steps, device)
    except torch.OutOfMemoryError:
        return dict(error="out of memory")
    except Exception as e:  # e.g. a compile error on one side: the other sides still run
        traceback.print_exc()
        return dict(error=f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300])
    finally:
        model = optimizer = forward = None
        release(device)
    if not all(map(math.isfinite, r["losses"])):
        return dict(error=f"non-finite loss {r['losses']}")
    return dict(r, tok_s=batch * profile.seq / r["step_s"])


def run(args, profile, context):
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
        rows.append(Row(NAME, f"parity: fp32 logits, ours vs {side} (same weights)", result,
                        goal=f"< {LOGITS_TOL:.0e}", status=ok(passed)))
        sides += [side] if passed else []
        peer = None
    ours = None
    release(device)

    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    peak_flops, peak_source = device_peak_flops(device, dtype)
    per_token = flops_per_token(reference.config, profile.seq)  # the same useful work for every side
    rows.append(Row(NAME, "MFU denominator", peak_source, status="info"))
    batches = args.batch_sizes or BATCHES[profile.name]["ours"]
    peer_batches = args.peer_batch_sizes or BATCHES[profile.name]["peers"]
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
        rows.append(Row(NAME, f"ours: torch.compile ({args.compile}) graph breaks, recompiles after warm-up",
                        f"{breaks} breaks, {recompiles} recompiles ({', '.join(str(r['graphs']) for r in ours_runs)}"
                        " graph(s) per micro-batch)", goal="0 and 0", status=ok(breaks == 0 and recompiles == 0)))
    if ours_runs:
        best_batch = max(b for (side, b), r in results.items() if side == "ours" and "error" not in r)
        context["train"] = dict(tok_s=results["ours", best_batch]["tok_s"], batch=best_batch)
    return rows


def training_row(side, batch, r, ours, peak_flops, per_token, args, profile) -> Row:
    check = f"{side}, micro-batch {batch} x {profile.seq}"
    if "error" in r:
        return Row(NAME, check, r["error"], status="error")
    peak = f"{r['peak'] / 2**30:.1f} GiB" if r["peak"] is not None else "n/a on CPU"
    utilization = mfu(r["tok_s"], per_token, peak_flops)
    compile_info = f"{r['graphs']} graph(s), {r['breaks']} breaks, {r['recompiles']} recompiles"
    result = (f"{r['tok_s']:,.0f} tok/s, MFU {utilization:.1%}, peak memory {peak}, step {r['step_s'] * 1e3:.0f} ms; "
              f"compile {args.compile}: {compile_info}, warm-up {r['warmup_s']:.0f} s")
    if side == "ours":
        return Row(NAME, check, result, goal=f"MFU >= {GOAL_MFU:.0%}",
                   status=verdict(args, profile, utilization >= GOAL_MFU))
    if ours is None or "error" in ours:
        return Row(NAME, check, result, "ours not measured at this micro-batch", status="info")
    ratio = ours["tok_s"] / r["tok_s"]
    memory = f", peak memory ours {ours['peak'] / r['peak']:.2f}x" if r["peak"] else ""
    compared = f"ours {ratio:.2f}x tok/s{memory}"
    if side == "GPT2LMHeadModel":
        return Row(NAME, check, result, compared, goal=f"ours >= {GOAL_VS_HF:g}x",
                   status=verdict(args, profile, ratio >= GOAL_VS_HF))
    return Row(NAME, check, result, compared, status="info")
