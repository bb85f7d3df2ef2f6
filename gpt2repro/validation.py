"""Validation: next-token loss and bits-per-byte on the start of a prepared data directory's val split.

The one owner of:
- what `--val-tokens N` means in every command: score the first N next-token targets of the val
  split (N + 1 tokens); by default all of them;
- how many tokens one evaluation forward may hold (its full logits are the memory peak);
- the score itself, for train.py and eval_hellaswag.py alike.

Bits per byte (nanochat's convention) is the loss in bits summed over the text tokens, divided by the
UTF-8 bytes those tokens decode to: it does not depend on the tokenizer, so runs with different
vocabularies compare. <|endoftext|> stands for no text: it counts no bytes and its loss is left out.

The recipe's budget (VAL_TOKENS targets, a split of VAL_SPLIT_TOKENS) belongs to the shards: token_shards.py.
"""

import contextlib
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gpt2repro.errors import UserError
from gpt2repro.token_shards import load_manifest, open_split, val_split_tokens
from gpt2repro.tokenizer import token_bytes


class ValidationError(UserError, ValueError):
    """A validation request the data cannot serve: the message says what to change."""


def resolve_val_tokens(data_dir: str | Path, val_tokens: int | None = None) -> int:
    """The number of targets to score: `val_tokens`, or (None or 0) all that the val split holds."""
    available = max(0, load_manifest(data_dir)["splits"]["val"]["tokens"] - 1)
    if not val_tokens:
        val_tokens = available
    if val_tokens < 0:
        raise ValidationError(f"--val-tokens {val_tokens} is negative; pass 0 for the whole validation split")
    if val_tokens > available:  # found up front, not hours into training at the first evaluation
        raise ValidationError(
            f"--val-tokens {val_tokens:,} exceeds the {available:,} validation tokens in {data_dir}; lower it, "
            "or prepare a larger split (prepare_data.py --val-split-tokens)"
        )
    if val_tokens == 0:
        raise ValidationError(f"{data_dir} has no validation split; prepare one: prepare_data.py --val-split-tokens N")
    return val_tokens


def windows_per_forward(device, seq_len: int) -> int:
    """Validation windows per forward. Its (windows x seq_len x vocab) logits are the memory peak; on a CPU,
    whose heap keeps what it once held (gpt2repro.throughput.keep_freed_memory_for_reuse), a forward holds 1,024 tokens
    (more raised the tiny demo's peak RSS several-fold: benchmarks/RESULTS.md); a GPU takes 16 windows of 1,024."""
    tokens = 16 * 1024 if str(device).startswith("cuda") else 1024
    return max(1, tokens // seq_len)


def eval_module(model, accelerator=None):
    """The bare nn.Module in eval mode: DDP's forward syncs across ranks (which run different numbers of
    forwards when evaluating) and a compiled module would recompile for every new shape."""
    if accelerator is not None:
        model = accelerator.unwrap_model(model, keep_torch_compile=False)
    model = getattr(model, "_orig_mod", model)
    if model.training:
        raise ValueError("evaluate a model in eval mode (model.eval()): dropout would make scores random")
    return model


@contextlib.contextmanager
def logits_as_computed(model):
    """Calls of `model` return their outputs in the dtype computed (bf16 under bf16 autocast): Accelerate wraps a
    prepared model's forward in a copy of every output to fp32 (a 16 x 1024-token forward's logits: 3.3 GB). The
    caller's autocast stays in force."""
    wrapped, original = model.__dict__.get("forward"), model.__dict__.get("_original_forward")
    if wrapped is None or original is None:
        yield model
        return
    model.forward = original
    try:
        yield model
    finally:
        model.forward = wrapped


def rank_windows(starts: list, rank: int, world: int) -> tuple[list, list]:
    """This rank's share of `starts`, round-robin, padded to the same count on every rank (FSDP gathers weights in
    each forward, so every rank must run as many): (starts, weights), a padding entry repeats a start at weight 0."""
    mine = starts[rank::world]
    share = -(-len(starts) // world)
    padding = share - len(mine)
    return mine + starts[:1] * padding, [1.0] * len(mine) + [0.0] * padding


def token_logprobs(logits, targets):
    """log softmax(logits)[target] at each position, in fp32 whatever the model's dtype."""
    flat = logits.reshape(-1, logits.shape[-1]).float()
    return -F.cross_entropy(flat, targets.reshape(-1), reduction="none").view(targets.shape)


def read_val_tokens(data_dir: str | Path, n_tokens: int) -> np.ndarray:
    """The first `n_tokens` tokens of the val split, through the shards' one reader."""
    _, shards = open_split(data_dir, "val")
    parts, have = [], 0
    for shard in shards:
        parts.append(np.asarray(shard[: n_tokens - have], dtype=np.int64))
        have += len(parts[-1])
        if have == n_tokens:
            return np.concatenate(parts)
    raise ValidationError(
        f"{data_dir}: the validation shards hold {have:,} tokens, {n_tokens:,} needed; lower --val-tokens"
    )


def validation_loss(model, data_dir, val_tokens=None, seq_len=1024, batch_size=None, accelerator=None) -> dict:
    """Mean next-token loss and bits per byte over the first `val_tokens` targets of the val split (None: all).

    Windows of `seq_len` inputs (the last one possibly shorter) in a fixed order, dealt to ranks round-robin, every
    rank running as many forwards (rank_windows); every rank returns the same {"val_loss", "val_bpb", "val_tokens",
    "val_bytes"}. Nothing is read from the device until the end."""
    model = eval_module(model, accelerator)
    device = next(model.parameters()).device
    val_tokens = resolve_val_tokens(data_dir, val_tokens)
    batch_size = batch_size or windows_per_forward(device, seq_len)
    tokens = torch.from_numpy(read_val_tokens(data_dir, val_split_tokens(val_tokens)))
    byte_table = torch.from_numpy(token_bytes().astype(np.int64))
    if int(tokens.max()) >= min(len(byte_table), model.config.vocab_size):
        raise ValidationError(f"{data_dir}: validation token id {int(tokens.max())} is not a GPT-2 token id; "
                              "re-create the shards with prepare_data.py")
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    full = list(range(0, val_tokens - seq_len + 1, seq_len))
    # the short last window, if any, is one forward of its own: every rank runs it, rank 0 counts it
    tail = [(len(full) * seq_len, val_tokens % seq_len, float(rank == 0))] if val_tokens % seq_len else []
    starts, weights = rank_windows(full, rank, world)
    forwards = [(starts[i : i + batch_size], seq_len, weights[i : i + batch_size]) for i in range(0, len(starts),
                                                                                                 batch_size)]
    forwards += [([start], length, [weight]) for start, length, weight in tail]

    # summed loss (nats) of all targets, of the text targets, and the bytes of the text targets
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    with torch.no_grad(), logits_as_computed(model):
        for group, length, group_weights in forwards:
            window = tokens[torch.tensor(group).unsqueeze(1) + torch.arange(length + 1)]
            logits = model(input_ids=window[:, :-1].to(device), use_cache=False).logits
            # a window at a time: the fp32 log-softmax of a whole batch would be 4x its bf16 logits again
            for window_logits, targets, weight in zip(logits, window[:, 1:], group_weights):
                nats = -token_logprobs(window_logits, targets.to(device)).double()
                nbytes = byte_table[targets].to(device)
                text_nats = torch.where(nbytes > 0, nats, 0.0)  # not nats[nbytes > 0]: its size would need a read
                totals += weight * torch.stack([nats.sum(), text_nats.sum(), nbytes.sum().double()])
    if accelerator is not None and world > 1:
        totals = accelerator.reduce(totals, reduction="sum")
    loss, text_loss, n_bytes = totals.tolist()
    return {
        "val_loss": loss / val_tokens,
        "val_bpb": text_loss / (math.log(2) * n_bytes) if n_bytes else float("nan"),
        "val_tokens": val_tokens,
        "val_bytes": int(n_bytes),
    }


__all__ = ["ValidationError", "logits_as_computed", "rank_windows", "resolve_val_tokens", "validation_loss",
           "windows_per_forward"]
