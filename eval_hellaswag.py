"""HellaSwag and validation loss for any causal LM, side by side with the official GPT-2.

    python eval_hellaswag.py --model runs/x/final --model gpt2 [--data hellaswag_val.jsonl]
        [--limit N] [--batch-size 16] [--device auto] [--dtype float32] [--val-data data/]
        [--output results.json]

HellaSwag picks which of 4 endings continues a context. Two scoring conventions are quoted in
public and give different numbers for the same model, so every row reports both:
- completion style (build-nanogpt, llm.c): raw `ctx` and " " + ending tokenized separately;
  acc = highest summed log-likelihood of the ending, acc_norm = highest per ending token.
- lm-eval style (lm-evaluation-harness `hellaswag`): "label: ctx_a Ctx_b" and the endings cleaned
  of WikiHow's [tags]; context and continuation tokenized jointly; acc_norm divides the
  log-likelihood by the ending's length in characters.
Official GPT-2 124M: completion 28.59 / 29.55, lm-eval 28.92 / 31.14.

train.py imports load_hellaswag and score_hellaswag: one implementation. Validation loss and
bits-per-byte come from validation.py, the same code train.py reports.
"""

import argparse
import inspect
import json
import os
import re
import shutil
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm

from model_card import PublishError, add_eval_results, load_card, upload_card
from run_report import HELLASWAG_VAL_ITEMS, describe_data, provenance, write_atomically
from throughput import keep_freed_memory_for_reuse
from token_shards import ShardError
from validation import ValidationError, eval_module, resolve_val_tokens, token_logprobs, validation_loss

HELLASWAG_VAL_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
TEXT_FIELDS = ("activity_label", "ctx_a", "ctx_b", "ctx")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


class HellaSwagDataError(ValueError):
    """HellaSwag data that cannot be used: the message says where and what to do."""


# ---------------------------------------------------------------------------------------------
# data: a local jsonl / parquet, or the validation set downloaded once


def cache_dir() -> Path:
    """$GPT2REPRO_CACHE, else $XDG_CACHE_HOME/gpt2repro (~/.cache/gpt2repro)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gpt2repro"
    return Path(os.environ.get("GPT2REPRO_CACHE", default))


def download_hellaswag() -> Path:
    """The rowanz validation jsonl in the cache, downloaded on first use."""
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
            "--data hellaswag_val.jsonl (rowanz format) or --data validation.parquet (Rowan/hellaswag)"
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


def load_hellaswag(path: str | Path | None = None, limit: int | None = None) -> list[dict]:
    """Validated HellaSwag items (the first `limit`); `path` None means the downloaded validation set."""
    path = Path(path) if path is not None else download_hellaswag()
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
def ending_logliks(model, contexts, endings, batch_size: int = 16, progress=None) -> np.ndarray:
    """(n_items, 4) summed log-likelihoods of each item's endings (token id lists) given its context.

    Items whose contexts have the same length share a forward (no padding inside the context);
    within such a group, items are sorted by ending length so little padding is wasted."""
    device = next(model.parameters()).device
    groups = defaultdict(list)
    for i, context in enumerate(contexts):
        groups[len(context)].append(i)
    result = np.zeros((len(contexts), 4))
    for group in groups.values():
        group.sort(key=lambda i: max(map(len, endings[i])))
        for start in range(0, len(group), batch_size):
            batch = group[start : start + batch_size]
            flat = [torch.tensor(e) for i in batch for e in endings[i]]
            scores = _batch_logliks(
                model,
                torch.tensor([contexts[i] for i in batch], device=device),
                pad_sequence(flat, batch_first=True).to(device),
                torch.tensor([len(e) for e in flat], device=device),
            )
            result[batch] = scores.view(-1, 4).cpu().numpy()
            if progress is not None:
                progress.update(len(batch))
    return result


def summarize(per_item: list[dict]) -> dict:
    """Accuracies of both conventions from per-item log-likelihoods (ties go to the first ending)."""
    labels = np.array([it["label"] for it in per_item])

    def accuracy(scores):
        return float((np.argmax(scores, axis=1) == labels).mean())

    def column(key):
        return np.array([it[key] for it in per_item], dtype=np.float64)

    return {
        "items": len(per_item),
        "completion_acc": accuracy(column("completion_loglik")),
        "completion_acc_norm": accuracy(column("completion_loglik") / column("completion_tokens")),
        "lm_eval_acc": accuracy(column("lm_eval_loglik")),
        "lm_eval_acc_norm": accuracy(column("lm_eval_loglik") / column("lm_eval_chars")),
    }


def _score_items(model, tokenizer, items: list[dict], batch_size: int, progress: bool) -> list[dict]:
    """Per-item log-likelihoods and lengths under both conventions, in the order of `items`."""
    requests = encode_requests(tokenizer, items)
    logliks = {}
    for convention in ("completion", "lm_eval"):
        bar = tqdm(total=len(items), desc=f"HellaSwag {convention}", unit="item", leave=False, disable=not progress)
        with bar:
            logliks[convention] = ending_logliks(model, *requests[convention], batch_size, bar)
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

    Returns {"items", "completion_acc", "completion_acc_norm", "lm_eval_acc", "lm_eval_acc_norm",
    "per_item"} on every process. The model is used as given (dtype, autocast) and never modified."""
    model = eval_module(model, accelerator)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    positions = list(range(rank, len(items), world))  # strided: every rank gets both kinds of items
    mine = [items[i] for i in positions]
    per_item = _score_items(model, tokenizer, mine, batch_size, progress and rank == 0) if mine else []
    if world > 1:
        from accelerate.utils import gather_object

        # ranks hold strided slices: the positions in `items` restore the order
        gathered = gather_object(list(zip(positions, per_item)))
        per_item = [item for _, item in sorted(gathered, key=lambda pair: pair[0])]
    return {**summarize(per_item), "per_item": per_item}


# ---------------------------------------------------------------------------------------------
# command line


def load_model(name: str, device: str, dtype: torch.dtype):
    """A causal LM and its tokenizer from a checkpoint dir, any HF model dir, or a Hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:  # registers our classes with the Auto* factories, for checkpoints saved without code
        import modeling_gpt2repro  # noqa: F401
    except ImportError:
        pass
    # transformers builds an empty tokenizer for a GPT-2 directory without tokenizer files, so ask
    # the directory, not AutoTokenizer. Weights-only checkpoints get the GPT-2 BPE they were trained on.
    # The tokenizer loads first: a damaged one fails in a moment, not after gigabytes of weights.
    part = "tokenizer"
    try:
        if Path(name).is_dir() and not any((Path(name) / f).exists() for f in TOKENIZER_FILES):
            from tokenization_gpt2repro import load_tokenizer

            print(f"note: no tokenizer files in {name}; using the shipped GPT-2 tokenizer", file=sys.stderr)
            tokenizer = load_tokenizer()
        else:
            tokenizer = AutoTokenizer.from_pretrained(name)
        part = "model"
        model = AutoModelForCausalLM.from_pretrained(name, trust_remote_code=True, dtype=dtype)
    # Damaged files raise whatever their parser raises (SafetensorError, JSONDecodeError, KeyError,
    # tokenizers' bare Exception): any of them becomes the one-line message.
    except Exception as e:
        if not Path(name).exists():
            raise SystemExit(
                f"error: cannot load model {name!r}: not a local directory, and not available from the Hugging "
                "Face Hub (offline?); pass a local checkpoint directory to --model"
            ) from None
        first_line = (str(e).strip().splitlines() or [""])[0].rstrip(".")
        reason = f"{type(e).__name__}: {first_line}" if first_line else type(e).__name__  # a KeyError names only a key
        raise SystemExit(f"error: cannot load the {part} from {name} ({reason}); are its files complete?") from None
    return model.to(device).eval(), tokenizer


def format_table(results: dict) -> str:
    header = f"{'model':<32} {'items':>6} {'compl acc':>9} {'acc_norm':>8} {'lm-eval acc':>11} {'acc_norm':>8}"
    with_val = any("val_loss" in r["summary"] for r in results["models"].values())
    lines = [header + (f" {'val loss':>8} {'val bpb':>8}" if with_val else "")]
    for name, result in results["models"].items():
        s = result["summary"]
        accs = [100 * s[k] for k in ("completion_acc", "completion_acc_norm", "lm_eval_acc", "lm_eval_acc_norm")]
        line = f"{name[-32:]:<32} {s['items']:>6} {accs[0]:>9.2f} {accs[1]:>8.2f} {accs[2]:>11.2f} {accs[3]:>8.2f}"
        lines.append(line + (f" {s['val_loss']:>8.4f} {s['val_bpb']:>8.4f}" if "val_loss" in s else ""))
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="checkpoint, HF dir or Hub id; repeatable")
    parser.add_argument("--data", help="HellaSwag .jsonl (rowanz) or .parquet (Rowan/hellaswag); default: download val")
    parser.add_argument("--limit", type=int, help="score only the first N items")
    parser.add_argument("--batch-size", type=int, default=16, help="items per forward (4 endings each)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="weights dtype")
    parser.add_argument(
        "--val-data",
        help="also report validation loss and bits-per-byte on this prepared data directory's val split "
        "(GPT-2 token ids: meaningful for GPT-2-tokenizer models)",
    )
    parser.add_argument(
        "--val-tokens", type=int, default=0, help="score the first N targets of the val split (default 0: all of it)"
    )
    parser.add_argument("--val-batch-size", type=int, help="validation windows per forward (default: by device)")
    parser.add_argument("--output", help="write the summary and per-item log-likelihoods to this JSON file")
    parser.add_argument("--push-results", metavar="REPO", help="add the first --model's results to REPO's Hub card")
    args = parser.parse_args(argv)
    if len(set(args.model)) != len(args.model):
        parser.error("each --model may appear once")
    return args


def main(argv=None):
    args = parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cpu":
        keep_freed_memory_for_reuse()  # each batch's logits reuse the last one's memory instead of faulting it in

    if args.output and not Path(args.output).resolve().parent.is_dir():
        raise SystemExit(f"error: --output {args.output}: its directory does not exist; create it first")
    try:  # bad data fails here, before any model is loaded
        items = load_hellaswag(args.data, args.limit)
        if args.val_data:
            args.val_tokens = resolve_val_tokens(args.val_data, args.val_tokens)
    except (HellaSwagDataError, ShardError, ValidationError) as e:
        raise SystemExit(f"error: {e}") from None
    try:  # a wrong repo id or no network fails now, not after hours of scoring
        card = load_card(args.push_results) if args.push_results else None
    except PublishError as e:
        raise SystemExit(f"error: {e}") from None
    results = {"data": str(args.data or cache_dir() / "hellaswag_val.jsonl"), "val_data": args.val_data,
               "provenance": provenance(), "models": {}}
    for name in args.model:
        model, tokenizer = load_model(name, device, getattr(torch, args.dtype))
        started = time.perf_counter()
        scores = score_hellaswag(model, tokenizer, items, args.batch_size, progress=True)
        per_item = scores.pop("per_item")
        summary = {**scores, "device": device, "dtype": args.dtype, "seconds": round(time.perf_counter() - started, 1)}
        if args.val_data:
            seq_len = min(1024, getattr(model.config, "max_position_embeddings", 1024))
            summary.update(validation_loss(model, args.val_data, args.val_tokens, seq_len, args.val_batch_size))
        results["models"][name] = {"summary": summary, "items": per_item}
        print(f"{name}: {len(items)} items in {summary['seconds']} s", file=sys.stderr)
        del model

    print(format_table(results))
    if args.output:
        write_atomically(Path(args.output), json.dumps(results, indent=1))  # never a half-written results file
        print(f"wrote {args.output}")
    if card is not None:
        data = describe_data(args.val_data) if args.val_data else None
        try:
            card = add_eval_results(card, results["models"][args.model[0]]["summary"], args.push_results, data)
            upload_card(card, args.push_results)
        except PublishError as e:
            raise SystemExit(f"error: {e}") from None
        print(f"added {args.model[0]}'s results to the card of https://huggingface.co/{args.push_results}")


if __name__ == "__main__":
    main()
