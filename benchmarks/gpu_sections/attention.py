"""Which attention a training step runs: the kernels of one step of ours, eager and compiled, read from the profiler
(flash forward and backward, never the math or memory-efficient fallback); then FlashAttention-3 against sdpa where
gpt2repro.attention.choose_attention (train.py's `--attention auto`) finds it."""

import torch
from _common import random_tokens, sync, timed

from gpt2repro.attention import choose_attention
from modeling_gpt2repro import GPT2ReproForCausalLM

from .base import Row, autocast, compiled, model_config, ok

NAME = "attention"
SUMMARY = ("the kernels a training step runs, eager and compiled: flash attention, not the math fallback;\n"
           "FlashAttention-3 (kernels-community, through `kernels`) against sdpa where a Hopper GPU has it")
TIMEOUT = 360


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


def run(args, profile, context):
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
    return Row(NAME, f"training step of ours ({shape}): attention {what}", result,
               goal="flash forward and backward, no math/efficient fallback", status=ok(passed))


def flash_attention_3_rows(args, profile, device) -> list:
    attention, notice = choose_attention("auto", device)
    check = "FlashAttention-3 (kernels-community/flash-attn3) vs sdpa, training step"
    if attention == "sdpa":
        why = notice or "needs a Hopper GPU and `pip install kernels`"
        return [Row(NAME, check, f"not used: {why}", status="info")]
    times = {}
    for name in ("sdpa", attention):
        step = attention_step(args, profile, device, args.compile, name)
        _, seconds = timed(lambda: [step() for _ in range(profile.steps)], device=device)
        times[name] = seconds / profile.steps
    speedup = times["sdpa"] / times[attention]
    return [Row(NAME, check, f"{times[attention] * 1000:.1f} ms vs sdpa {times['sdpa'] * 1000:.1f} ms per step "
                f"({speedup:.2f}x)", "sdpa (PyTorch's flash kernel)", status="info")]
