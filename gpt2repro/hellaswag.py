"""HellaSwag for any causal LM, in both scoring conventions, many items per forward.

HellaSwag picks which of 4 endings continues a context. Two scoring conventions are quoted in
public and give different numbers for the same model, so every score reports both:
- completion style (build-nanogpt, llm.c): raw `ctx` and " " + ending tokenized separately;
  acc = highest summed log-likelihood of the ending, acc_norm = highest per ending token.
- lm-eval style (lm-evaluation-harness `hellaswag`): "label: ctx_a Ctx_b" and the endings cleaned
  of WikiHow's [tags]; context and continuation tokenized jointly; acc_norm divides the
  log-likelihood by the ending's length in characters.
The published figures of OpenAI's GPT-2 (124M) in both are in report.GPT2_124M_REFERENCE.

One implementation: train.py, eval_hellaswag.py and the benchmarks import load_hellaswag and score_hellaswag.
"""

import inspect
import json
import os
import re
import shutil
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm

from gpt2repro.errors import UserError
from gpt2repro.validation import eval_module, logits_as_computed, token_logprobs

HELLASWAG_VAL_ITEMS = 10_042  # the HellaSwag validation set (rowanz/hellaswag, Rowan/hellaswag)


class Metric(NamedTuple):
    name: str  # as every summary, metrics.jsonl row, run report, card and published figure names it
    convention: str  # "completion" or "lm_eval"
    kind: str  # "acc" or "acc_norm"
    label: str


# What a HellaSwag score reports, by the names every part of the project uses as they are.
HELLASWAG_ITEMS = "hellaswag_items"  # how many items the accuracies are over
HELLASWAG_METRICS = (
    Metric("hellaswag_completion_acc", "completion", "acc", "HellaSwag acc, completion style"),
    Metric("hellaswag_completion_acc_norm", "completion", "acc_norm", "HellaSwag acc_norm, completion style"),
    Metric("hellaswag_lm_eval_acc", "lm_eval", "acc", "HellaSwag acc, lm-eval style"),
    Metric("hellaswag_lm_eval_acc_norm", "lm_eval", "acc_norm", "HellaSwag acc_norm, lm-eval style"),
)
HELLASWAG_VAL_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
TEXT_FIELDS = ("activity_label", "ctx_a", "ctx_b", "ctx")


class HellaSwagDataError(UserError, ValueError):
    """HellaSwag data that cannot be used: the message says where and what to do."""


# ---------------------------------------------------------------------------------------------
# data: a local jsonl / parquet, or the validation set downloaded once


def cache_dir() -> Path:
    """$GPT2REPRO_CACHE, else $XDG_CACHE_HOME/gpt2repro (~/.cache/gpt2repro)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gpt2repro"
    return Path(os.environ.get("GPT2REPRO_CACHE", default))


def download_hellaswag(flag: str = "--data") -> Path:
    """The rowanz validation jsonl in the cache, downloaded on first use; `flag` is the caller's option for a local
    file, named in the error offline."""
    path = cache_dir() / "hellaswag_val.jsonl"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: concurrent ranks never collide
    try:
        with urllib.request.urlopen(HELLASWAG_VAL_URL, timeout=60) as response, open(tmp, "wb") as f:
            shutil.copyfileobj(response, f)
        with open(tmp, "rb") as f:
            n_items = sum(1 for line in f if line.strip())
        if n_items != HELLASWAG_VAL_ITEMS:  # a cut connection must not become a cached "dataset"
            raise HellaSwagDataError(f"downloaded {n_items} HellaSwag items, expected {HELLASWAG_VAL_ITEMS}; retry")
        os.replace(tmp, path)
    except OSError as e:  # URLError, timeouts, DNS failures
        reason = getattr(e, "reason", None) or e.strerror or e
        raise HellaSwagDataError(
            f"cannot download HellaSwag from {HELLASWAG_VAL_URL} ({reason}); offline? pass a local copy with "
            f"{flag} hellaswag_val.jsonl (rowanz format) or {flag} validation.parquet (Rowan/hellaswag)"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _read_rows(path: Path):
    """(where, row) per record; `where` names the line or row in errors, a bad line yields a message."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for number, row in enumerate(pq.read_table(path).to_pylist(), 1):
            yield f"row {number}", row
        return
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield f"line {number}", json.loads(line)
            except json.JSONDecodeError as e:
                yield f"line {number}", f"not valid JSON ({e.msg})"


def _problem(row) -> str | None:
    """What is wrong with one HellaSwag record, or None."""
    if not isinstance(row, dict):
        return row if isinstance(row, str) else "not a JSON object"
    missing = [k for k in ("ind", *TEXT_FIELDS, "endings", "label") if k not in row]
    if missing:
        return "missing field(s): " + ", ".join(missing)
    if not isinstance(row["ind"], int) or isinstance(row["ind"], bool):
        return f"ind {row['ind']!r} is not an integer"
    if not all(isinstance(row[k], str) for k in TEXT_FIELDS) or not row["ctx"]:
        return "activity_label, ctx_a, ctx_b must be strings and ctx a non-empty string"
    endings = row["endings"]
    if not (isinstance(endings, list) and len(endings) == 4 and all(isinstance(e, str) and e for e in endings)):
        return "endings must be a list of 4 non-empty strings"
    if not all(lm_eval_preprocess(e) for e in endings):
        return "an ending is empty once lm-eval's preprocessing removes its [tags]"
    # rowanz stores labels as ints, the Hub's parquet as strings ("" on the unlabeled test split).
    if str(row["label"]) not in ("0", "1", "2", "3"):
        return f"label {row['label']!r} is not 0, 1, 2 or 3"
    return None


def load_hellaswag(path: str | Path | None = None, limit: int | None = None, flag: str = "--data") -> list[dict]:
    """Validated HellaSwag items (the first `limit`); `path` None means the downloaded validation set (`flag`: the
    caller's option for a local file, named when the download fails)."""
    path = Path(path) if path is not None else download_hellaswag(flag)
    if not path.is_file():
        raise HellaSwagDataError(f"{path}: no such file (expected a HellaSwag .jsonl or .parquet)")
    items, problems = [], []
    for where, row in _read_rows(path):
        if limit is not None and len(items) + len(problems) >= limit:
            break
        problem = _problem(row)
        if problem:
            problems.append(f"{where}: {problem}")
            continue
        item = {k: row[k] for k in TEXT_FIELDS}
        items.append({"ind": row["ind"], **item, "endings": list(row["endings"]), "label": int(row["label"])})
    if problems:
        shown = "\n  ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise HellaSwagDataError(f"{path}: {len(problems)} malformed HellaSwag item(s):\n  {shown}")
    if not items:
        raise HellaSwagDataError(f"{path}: no HellaSwag items")
    return items


# ---------------------------------------------------------------------------------------------
# the two conventions, as token ids: per item one context and 4 endings


def lm_eval_preprocess(text: str) -> str:
    """lm-evaluation-harness's hellaswag `preprocess`, verbatim (one pass of the double-space fix)."""
    text = text.strip()
    text = text.replace(" [title]", ". ")  # brackets are WikiHow artifacts
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def lm_eval_query_and_choices(item: dict) -> tuple[str, list[str]]:
    """lm-eval's `process_docs`: the query and the cleaned endings it scores."""
    ctx = item["ctx_a"] + " " + item["ctx_b"].capitalize()  # capitalize() also lower-cases the rest
    return lm_eval_preprocess(item["activity_label"] + ": " + ctx), [lm_eval_preprocess(e) for e in item["endings"]]


def encode_requests(tokenizer, items: list[dict]) -> dict:
    """Context and ending token ids of both conventions, plus lm-eval's character counts."""

    def encode(texts, **kwargs):
        return tokenizer(list(texts), **kwargs)["input_ids"]

    # completion style (tiktoken's encode: no special tokens): two separate encodings, and
    # " " + ending so that the ending's first word is the token " word"
    completion_contexts = encode((item["ctx"] for item in items), add_special_tokens=False)
    completion_endings = encode((" " + e for item in items for e in item["endings"]), add_special_tokens=False)

    # lm-eval style (HFLM._encode_pair, with the tokenizer's own special tokens: none for GPT-2):
    # trailing spaces of the context move to the continuation, and the continuation is whatever
    # follows the context's tokens in the joint encoding.
    queries, choices = zip(*(lm_eval_query_and_choices(item) for item in items))
    contexts = [query.rstrip() for query in queries]
    continuations = [q[len(c) :] + " " + choice for q, c, cs in zip(queries, contexts, choices) for choice in cs]
    lm_eval_contexts = encode(contexts)
    whole = encode(contexts[i // 4] + cont for i, cont in enumerate(continuations))
    lm_eval_endings = [ids[len(lm_eval_contexts[i // 4]) :] for i, ids in enumerate(whole)]

    def by_item(flat):
        return [flat[i : i + 4] for i in range(0, len(flat), 4)]

    return {
        "completion": (completion_contexts, by_item(completion_endings)),
        "lm_eval": (lm_eval_contexts, by_item(lm_eval_endings)),
        "lm_eval_chars": [[len(choice) for choice in cs] for cs in choices],
    }


# ---------------------------------------------------------------------------------------------
# scoring: summed log-probabilities of endings, many items per forward


def _batch_logliks(model, contexts: torch.Tensor, endings: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Summed log p(ending | context) for (n, L) contexts of one length and their (4n, E) endings.

    Each context runs once; its KV cache is repeated for its 4 endings, which continue from it:
    the same computation as 4 full sequences, doing the context's work once instead of 4 times.
    Endings are right-padded and attention is causal, so padding is never seen by a real token."""
    keep_last = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    out = model(input_ids=contexts, use_cache=True, **keep_last)
    last = out.logits[:, -1]  # (n, V): predicts each ending's first token
    cache = out.cache
    if cache is None:
        raise ValueError(f"{type(model).__name__} returned no KV cache; HellaSwag scoring needs one (use_cache=True)")
    cache.batch_repeat_interleave(4)
    logits = model(input_ids=endings, cache=cache, use_cache=True).logits  # (4n, E, V)

    item = torch.arange(endings.shape[0], device=endings.device) // 4
    first = token_logprobs(last[item], endings[:, 0])  # (4n,)
    # position t predicts token t + 1; the last position predicts nothing (target 0, masked below),
    # which keeps the logits contiguous instead of copying them without their last column
    rest = token_logprobs(logits, F.pad(endings[:, 1:], (0, 1)))[:, :-1]  # (4n, E-1)
    per_token = torch.cat([first.unsqueeze(1), rest], dim=1)
    in_ending = torch.arange(endings.shape[1], device=endings.device) < lengths.unsqueeze(1)
    return per_token.masked_fill(~in_ending, 0.0).sum(1, dtype=torch.float64)


@torch.no_grad()
def ending_logliks(model, contexts, endings, batch_size: int = 16, progress=None, accelerator=None) -> np.ndarray:
    """(n_items, 4) summed log-likelihoods of each item's endings (token id lists) given its context.

    Items whose contexts have the same length share a forward (no padding inside the context);
    within such a group, items are sorted by ending length so little padding is wasted. With an
    accelerator, every rank runs as many forwards (FSDP gathers weights in each): a rank with fewer
    batches repeats its first. Scores are read from the device once, at the end."""
    device = next(model.parameters()).device
    groups = defaultdict(list)
    for i, context in enumerate(contexts):
        groups[len(context)].append(i)
    batches = []
    for group in groups.values():
        group.sort(key=lambda i: max(map(len, endings[i])))
        batches += [group[start : start + batch_size] for start in range(0, len(group), batch_size)]
    padding = 0
    if accelerator is not None and accelerator.num_processes > 1:
        most = accelerator.reduce(torch.tensor(len(batches), device=device), reduction="max")
        padding = int(most) - len(batches)
    scores = []
    for k, batch in enumerate(batches + batches[:1] * padding):
        flat = [torch.tensor(e) for i in batch for e in endings[i]]
        scores.append(_batch_logliks(
            model,
            torch.tensor([contexts[i] for i in batch], device=device),
            pad_sequence(flat, batch_first=True).to(device),
            torch.tensor([len(e) for e in flat], device=device),
        ).view(-1, 4))
        if progress is not None and k < len(batches):
            progress.update(len(batch))
    result = np.zeros((len(contexts), 4))
    if batches:
        result[[i for batch in batches for i in batch]] = torch.cat(scores[: len(batches)]).cpu().numpy()
    return result


def summarize(per_item: list[dict]) -> dict:
    """Accuracies of both conventions from per-item log-likelihoods (ties go to the first ending)."""
    labels = np.array([it["label"] for it in per_item])

    def accuracy(scores):
        return float((np.argmax(scores, axis=1) == labels).mean())

    def column(key):
        return np.array([it[key] for it in per_item], dtype=np.float64)

    # acc_norm divides by the ending's length: in tokens (completion style), in characters (lm-eval style)
    lengths = {"completion": "completion_tokens", "lm_eval": "lm_eval_chars"}

    def scores(metric):
        logliks = column(f"{metric.convention}_loglik")
        return logliks / column(lengths[metric.convention]) if metric.kind == "acc_norm" else logliks

    return {HELLASWAG_ITEMS: len(per_item), **{m.name: accuracy(scores(m)) for m in HELLASWAG_METRICS}}


def _score_items(model, tokenizer, items: list[dict], batch_size: int, progress: bool, accelerator=None) -> list[dict]:
    """Per-item log-likelihoods and lengths under both conventions, in the order of `items`."""
    requests = encode_requests(tokenizer, items)
    logliks = {}
    for convention in ("completion", "lm_eval"):
        bar = tqdm(total=len(items), desc=f"HellaSwag {convention}", unit="item", leave=False, disable=not progress)
        with bar:
            logliks[convention] = ending_logliks(model, *requests[convention], batch_size, bar, accelerator)
    return [
        {
            "ind": item["ind"],
            "label": item["label"],
            "completion_loglik": logliks["completion"][k].tolist(),
            "completion_tokens": [len(e) for e in requests["completion"][1][k]],
            "lm_eval_loglik": logliks["lm_eval"][k].tolist(),
            "lm_eval_tokens": [len(e) for e in requests["lm_eval"][1][k]],
            "lm_eval_chars": requests["lm_eval_chars"][k],
        }
        for k, item in enumerate(items)
    ]


def score_hellaswag(model, tokenizer, items: list[dict], batch_size: int = 16, accelerator=None, *, progress=False):
    """Both conventions on `items`, `batch_size` items per forward, sharded across the
    accelerator's processes and gathered.

    Returns summarize()'s {HELLASWAG_ITEMS and HELLASWAG_METRICS' names} and "per_item" on every process.
    The model is used as given (dtype, autocast) and never modified."""
    model = eval_module(model, accelerator)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    positions = list(range(rank, len(items), world))  # strided: every rank gets both kinds of items
    mine = [items[i] for i in positions]
    # a rank without items still runs the others' number of forwards (ending_logliks), on the first item, discarded
    with logits_as_computed(model):
        per_item = _score_items(model, tokenizer, mine or items[:1], batch_size, progress and rank == 0,
                                accelerator if world > 1 else None)[: len(mine)] if items else []
    if world > 1:
        from accelerate.utils import gather_object

        # ranks hold strided slices: the positions in `items` restore the order
        gathered = gather_object(list(zip(positions, per_item)))
        per_item = [item for _, item in sorted(gathered, key=lambda pair: pair[0])]
    return {**summarize(per_item), "per_item": per_item}


