"""HellaSwag scoring speed: eval_hellaswag's batched scoring vs one item per forward.

The baseline is build-nanogpt's hellaswag.py method: per item, tiktoken ctx + " " + ending
tokens for the 4 endings, zero-padded into a (4, T) batch, one forward, cross-entropy over all
positions, masked to the endings. Both run on the same randomly initialised model (speed does
not depend on the weights) and the same items: the test fixture repeated. The completion-style
log-likelihoods of both must agree, so the comparison is between equal results.

    python benchmarks/bench_eval.py [--preset gpt2-124m] [--items 96] [--batch-size 16] [--repeats 2] [--threads N]
"""

import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F
from _common import REPO, timed  # first: puts the repository on sys.path

from configuration_gpt2repro import PRESETS, GPT2ReproConfig
from gpt2repro.hellaswag import encode_requests, ending_logliks, load_hellaswag, score_hellaswag
from modeling_gpt2repro import GPT2ReproForCausalLM
from gpt2repro.throughput import device_name, keep_freed_memory_for_reuse
from gpt2repro.tokenizer import get_encoding, load_tokenizer

FIXTURE = REPO / "tests" / "fixtures" / "hellaswag_tiny.jsonl"


def render_example(enc, item):
    """build-nanogpt's render_example: (4, T) tokens and the mask of ending positions."""
    ctx_tokens = enc.encode(item["ctx"])
    rows = [ctx_tokens + enc.encode(" " + ending) for ending in item["endings"]]
    tokens = torch.zeros((4, max(map(len, rows))), dtype=torch.long)
    mask = torch.zeros_like(tokens)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row)
        mask[i, len(ctx_tokens) : len(row)] = 1
    return tokens, mask


@torch.no_grad()
def baseline_logliks(model, enc, items) -> np.ndarray:
    """build-nanogpt's evaluation loop, one item per forward; returns summed log-likelihoods."""
    device = next(model.parameters()).device
    result = []
    for item in items:
        tokens, mask = (t.to(device) for t in render_example(enc, item))
        logits = model(tokens, use_cache=False).logits  # its GPT has no KV cache either
        shift_logits = logits[..., :-1, :].contiguous()
        shift_tokens = tokens[..., 1:].contiguous()
        losses = F.cross_entropy(shift_logits.view(-1, shift_logits.size(-1)), shift_tokens.view(-1), reduction="none")
        sum_loss = (losses.view(tokens.size(0), -1) * mask[..., 1:]).sum(dim=1)
        result.append((-sum_loss).double().cpu().numpy())
    return np.stack(result)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="gpt2-124m", choices=PRESETS, help="model shape (random weights)")
    parser.add_argument("--items", type=int, default=96, help="items: the 12-item fixture repeated")
    parser.add_argument("--batch-size", type=int, default=16, help="items per forward for eval_hellaswag")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each; the fastest counts")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--reuse-memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="glibc keeps freed memory, as eval_hellaswag.py sets on CPU (one process: both sides alike)",
    )
    args = parser.parse_args()
    reuses_memory = args.reuse_memory and keep_freed_memory_for_reuse()  # False where glibc's malloc is not in use
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    config = GPT2ReproConfig.from_preset(args.preset)
    model = GPT2ReproForCausalLM(config).eval()
    tokenizer, enc = load_tokenizer(), get_encoding()
    fixture = load_hellaswag(FIXTURE)
    items = [fixture[i % len(fixture)] for i in range(args.items)]
    contexts, endings = encode_requests(tokenizer, items)["completion"]
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"model: preset {args.preset} ({config.n_layer} layers, {config.n_embd} wide, {n_params:.1f}M params), fp32")
    ending_tokens = np.mean([len(e) for four in endings for e in four])
    print(
        f"items: {len(items)} ({len(fixture)}-item fixture repeated); completion-style tokens per item: "
        f"context {np.mean([len(c) for c in contexts]):.1f}, ending {ending_tokens:.1f}"
    )
    print(
        f"machine: {device_name('cpu')}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, reuse memory {'on' if reuses_memory else 'off'}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )

    # warm up both paths (allocator, oneDNN kernels) on a few items
    baseline_logliks(model, enc, items[:2])
    score_hellaswag(model, tokenizer, fixture[:4], batch_size=args.batch_size)

    times = {"baseline": [], "completion": [], "both": []}
    for _ in range(args.repeats):  # interleaved, so background load hits all three alike
        reference, seconds = timed(lambda: baseline_logliks(model, enc, items))
        times["baseline"].append(seconds)
        ours, seconds = timed(lambda: ending_logliks(model, contexts, endings, args.batch_size))
        times["completion"].append(seconds)
        _, seconds = timed(lambda: score_hellaswag(model, tokenizer, items, batch_size=args.batch_size))
        times["both"].append(seconds)
    difference = float(np.abs(ours - reference).max())
    assert difference < 1e-3, f"completion-style log-likelihoods differ from the baseline by {difference}"

    rate = {name: len(items) / min(seconds) for name, seconds in times.items()}
    print(f"max |log-likelihood difference| vs the baseline: {difference:.2e}")
    print(f"baseline, one item per forward (build-nanogpt):        {rate['baseline']:7.2f} items/s")
    print(
        f"eval_hellaswag, completion style only (same work):     {rate['completion']:7.2f} items/s  "
        f"{rate['completion'] / rate['baseline']:.2f}x"
    )
    print(
        f"eval_hellaswag, score_hellaswag (both conventions):    {rate['both']:7.2f} items/s  "
        f"{rate['both'] / rate['baseline']:.2f}x"
    )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
