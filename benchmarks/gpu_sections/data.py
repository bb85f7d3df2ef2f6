"""The data loader against the GPU step: ShardedTokenLoader's time for one optimizer step of the gpt2-124m recipe
(micro-batch x seq-len x accumulation, train.py's preset), read as train.py reads it (next_batch(device): pinned
memory, the next batch read and its copy started ahead), counted as if nothing overlapped the step. First, parity:
the loader's windows are the tokens written to the shards."""

import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from _common import timed

from gpt2repro.token_shards import ShardedTokenLoader, write_shard
from gpt2repro.tokenizer import VOCAB_SIZE

from .base import CheckFailed, Row, recipe_124m, verdict

NAME = "data"
SUMMARY = "ShardedTokenLoader's time per 124M optimizer step (64 x 1024 x 8) against the GPU step time"
TIMEOUT = 180

GOAL_LOADER_SHARE = 0.05  # of the GPU step, counting the loader as if nothing overlapped it


def sizes(profile) -> dict:
    """batch, seq, accum: one optimizer step's layout; shards, shard_tokens: the synthetic data; steps: timed."""
    if profile.name == "cpu":
        return dict(batch=4, seq=64, accum=2, shards=2, shard_tokens=20_000, steps=3)
    recipe = recipe_124m()
    accum = recipe.total_batch_tokens // (recipe.micro_batch_size * recipe.seq_len)
    return dict(batch=recipe.micro_batch_size, seq=recipe.seq_len, accum=accum, shards=4, shard_tokens=8_000_000,
                steps=10)


def write_synthetic_shards(data_dir: Path, shards: int, shard_tokens: int, val_tokens: int) -> np.ndarray:
    """Shards whose token at stream position p is p mod the vocabulary (so a window shows where it came from), named
    as llm.c names its shards: token_shards.load_manifest reads such a directory without a manifest. Returns the val
    split's tokens."""
    position, val = 0, None
    for i, (split, n) in enumerate([("val", val_tokens)] + [("train", shard_tokens)] * shards):
        tokens = ((position + np.arange(n)) % VOCAB_SIZE).astype(np.uint16)
        val = tokens if split == "val" else val
        write_shard(data_dir / f"synthetic_{split}_{i:06d}.bin", tokens)
        position += n
    return val


def check_windows(loader, val_tokens: np.ndarray, d: dict) -> str:
    """The loader's windows are the shards' tokens: val in file order exactly, train windows contiguous but for
    at most one shard boundary each. Returns a description; raises CheckFailed."""
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


def run(args, profile, context):
    device, d = torch.device(args.device), sizes(profile)
    with tempfile.TemporaryDirectory() as tmp:
        val_tokens = write_synthetic_shards(Path(tmp), d["shards"], d["shard_tokens"], 4 * d["batch"] * d["seq"])
        loader = ShardedTokenLoader(tmp, "train", d["batch"], d["seq"])
        rows = [Row(NAME, "parity: loader windows against the written tokens", check_windows(loader, val_tokens, d),
                    status="ok")]

        def one_step():
            return [loader.next_batch(device) for _ in range(d["accum"])]

        one_step()  # first touch of the memory-mapped shards (and each shard's check)
        seconds = statistics.median([timed(one_step, device=device)[1] for _ in range(d["steps"])])
    tokens = d["batch"] * d["seq"] * d["accum"]
    layout = f"{d['batch']} x {d['seq']} x accumulation {d['accum']}"
    result = f"{seconds * 1e3:.1f} ms per step ({tokens / seconds:,.0f} tok/s) incl. copy to {device.type}"
    train = context.get("train")
    if train is None:
        rows.append(Row(NAME, f"ShardedTokenLoader, one optimizer step of {layout}", result,
                        "no GPU step time: run section train in the same command", status="info"))
        return rows
    gpu_step = tokens / train["tok_s"]
    share = seconds / gpu_step
    rows.append(Row(NAME, f"ShardedTokenLoader, one optimizer step of {layout}", result,
                    f"{share:.1%} of the {gpu_step:.2f} s training step (ours at micro-batch {train['batch']})",
                    goal=f"< {GOAL_LOADER_SHARE:.0%} of the step, as if not overlapped",
                    status=verdict(args, profile, share < GOAL_LOADER_SHARE)))
    return rows
