"""HellaSwag scoring speed (section `eval`): gpt2repro.hellaswag's batched scoring against one item per forward
(build-nanogpt's loop, benchmarks/bench_eval.py's baseline), after checking that both give the same completion-style
log-likelihoods. The items are the test fixture repeated; the weights are random (speed does not depend on them)."""

import bench_eval
import numpy as np
import torch
from _common import full_fp32, timed

from configuration_gpt2repro import GPT2ReproConfig
from gpt2repro.hellaswag import encode_requests, ending_logliks, load_hellaswag, score_hellaswag
from gpt2repro.tokenizer import get_encoding, load_tokenizer
from modeling_gpt2repro import GPT2ReproForCausalLM

from .base import Row, ok, verdict

NAME = "eval"
SUMMARY = "HellaSwag items/s against one item per forward (bench_eval.py's baseline)"
TIMEOUT = 240

# items: the 12-item fixture repeated; batch: items per forward; repeats: timed runs of each side, the fastest counts
SIZES = {"cuda": dict(items=480, batch=16, repeats=2), "cpu": dict(items=4, batch=16, repeats=1)}
GOAL_EVAL = 4.0


def run(args, profile, context):
    device, sizes = torch.device(args.device), SIZES[profile.name]
    torch.manual_seed(0)
    model = GPT2ReproForCausalLM(GPT2ReproConfig(**profile.model)).to(device).eval()  # fp32, context 1024
    tokenizer, enc = load_tokenizer(), get_encoding()
    fixture = load_hellaswag(bench_eval.FIXTURE)
    items = [fixture[i % len(fixture)] for i in range(sizes["items"])]
    contexts, endings = encode_requests(tokenizer, items)["completion"]
    batch = sizes["batch"]
    with full_fp32():
        # parity first (doubles as the warm-up): the same completion-style log-likelihoods from both
        reference = bench_eval.baseline_logliks(model, enc, items)
        diff = float(np.abs(ending_logliks(model, contexts, endings, batch) - reference).max())
        rows = [Row(NAME, f"parity: completion-style log-likelihoods vs the baseline ({len(items)} items)",
                    f"max abs diff {diff:.1e}", goal="< 1e-3", status=ok(diff < 1e-3))]
        if diff >= 1e-3:
            return rows
        runs = {"baseline": [], "completion": [], "both": []}
        for _ in range(sizes["repeats"]):  # interleaved, so background load hits all three alike
            runs["baseline"].append(timed(bench_eval.baseline_logliks, model, enc, items, device=device)[1])
            runs["completion"].append(timed(ending_logliks, model, contexts, endings, batch, device=device)[1])
            runs["both"].append(timed(score_hellaswag, model, tokenizer, items, batch, device=device)[1])
    rate = {name: len(items) / min(seconds) for name, seconds in runs.items()}
    shape = f"{model.config.n_layer} x {model.config.n_embd}, fp32"
    ratio = rate["completion"] / rate["baseline"]
    return rows + [
        Row(NAME, f"one item per forward (build-nanogpt's loop, bench_eval.py), {shape}",
            f"{rate['baseline']:,.1f} items/s", status="info"),
        Row(NAME, f"eval_hellaswag, completion style only (same work), {batch} items per forward",
            f"{rate['completion']:,.1f} items/s", f"{ratio:.2f}x the baseline", goal=f">= {GOAL_EVAL:g}x",
            status=verdict(args, profile, ratio >= GOAL_EVAL)),
        Row(NAME, "eval_hellaswag, score_hellaswag (both conventions: twice the sequences)",
            f"{rate['both']:,.1f} items/s", f"{rate['both'] / rate['baseline']:.2f}x the baseline", status="info"),
    ]
