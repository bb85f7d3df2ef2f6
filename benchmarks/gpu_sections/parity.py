"""Parity on the device: our model against transformers' GPT2LMHeadModel from the same weights, and our fused loss
against the plain one (value and gradients), in fp32 and under bf16 autocast."""

import contextlib

import torch
from _common import full_fp32, max_logit_diff, random_tokens

from modeling_gpt2repro import GPT2ReproForCausalLM

from .base import LOGITS_TOL, CheckFailed, Row, model_config, ok

NAME = "parity"
SUMMARY = "our model vs transformers' GPT2LMHeadModel from the same weights; fused vs plain loss"
TIMEOUT = 180  # seconds, in its own process on a GPU

# bf16 autocast rounds every matmul input to 8 mantissa bits, and the two sides use different kernels.
BF16_LOSS_TOL = 2e-2
FUSED_LOSS_TOL = 1e-5
FUSED_GRAD_TOL = 1e-4  # worst max|diff| / max|grad| over the parameters
FUSED_BF16_GRAD_SLACK = 2.0  # the fused bf16 gradient may be this many times further from fp32 than the plain one


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


def run(args, profile, context):
    device, rows = args.device, []
    torch.manual_seed(0)
    ours = GPT2ReproForCausalLM(model_config(profile)).to(device)
    gpt2 = ours.to_gpt2().to(device)  # vocab 50,257, Conv1D weights: what transformers users load
    input_ids = random_tokens(profile.small_batch, profile.seq, device)
    shape = f"{profile.small_batch} x {profile.seq}"

    diff, largest = max_logit_diff(ours, lambda ids: gpt2.eval()(ids, use_cache=False).logits, input_ids)
    rows.append(Row(NAME, f"fp32 logits, ours vs GPT2LMHeadModel (same weights, {shape})",
                    f"max abs diff {diff:.1e} (largest logit {largest:.2f})", goal=f"< {LOGITS_TOL:.0e}",
                    status=ok(diff < LOGITS_TOL)))

    ours.train()
    gpt2.train()
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        ours_loss = ours(input_ids, labels=input_ids).loss.item()  # train mode: the fused loss
        gpt2_loss = gpt2(input_ids, labels=input_ids).loss.item()
    diff = abs(ours_loss - gpt2_loss)
    rows.append(Row(NAME, "bf16 autocast training loss, ours (fused) vs GPT2LMHeadModel",
                    f"{ours_loss:.4f} vs {gpt2_loss:.4f}, diff {diff:.1e}", goal=f"< {BF16_LOSS_TOL:.0e}",
                    status=ok(diff < BF16_LOSS_TOL)))
    gpt2 = None  # free its memory before the gradient checks

    with full_fp32():
        plain_loss, plain = loss_and_grads(ours, input_ids, False, contextlib.nullcontext())
        fused_loss, fused = loss_and_grads(ours, input_ids, True, contextlib.nullcontext())
    loss_diff, grad_diff = abs(fused_loss - plain_loss), worst_relative_diff(fused, plain)
    rows.append(Row(NAME, "fp32 fused loss vs plain loss: value, gradients",
                    f"loss diff {loss_diff:.1e}; gradients max|diff|/max|grad| {grad_diff:.1e} (worst parameter)",
                    goal=f"< {FUSED_LOSS_TOL:.0e}; < {FUSED_GRAD_TOL:.0e}",
                    status=ok(loss_diff < FUSED_LOSS_TOL and grad_diff < FUSED_GRAD_TOL)))

    device_type = torch.device(device).type
    plain16_loss, plain16 = loss_and_grads(ours, input_ids, False, torch.autocast(device_type, dtype=torch.bfloat16))
    fused16_loss, fused16 = loss_and_grads(ours, input_ids, True, torch.autocast(device_type, dtype=torch.bfloat16))
    loss_diff = abs(fused16_loss - plain16_loss)
    fused_error, plain_error = worst_relative_diff(fused16, plain), worst_relative_diff(plain16, plain)
    passed = loss_diff < BF16_LOSS_TOL and fused_error <= FUSED_BF16_GRAD_SLACK * plain_error + 1e-3
    rows.append(Row(NAME, "bf16 autocast fused loss vs plain loss: value, gradient error against fp32",
                    f"loss diff {loss_diff:.1e}; gradient error fused {fused_error:.1e}, plain {plain_error:.1e}",
                    goal=f"< {BF16_LOSS_TOL:.0e}; fused <= {FUSED_BF16_GRAD_SLACK:g} x plain + 1e-3",
                    status=ok(passed)))
    return rows
