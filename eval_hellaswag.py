"""HellaSwag and validation loss for any causal LM, side by side with the official GPT-2.

    python eval_hellaswag.py --model runs/x/final --model gpt2 [--data hellaswag_val.jsonl]
        [--limit N] [--batch-size 16] [--device auto] [--dtype float32] [--val-data data/]
        [--output results.json]
    python eval_hellaswag.py --model runs/x/final --no-hellaswag --val-data data/tinyshakespeare   # loss alone

A model that fails to load (a Hub id offline) does not lose the others' results: they are printed and
written to --output, then the run ends with the error. Offline, HF_HUB_OFFLINE=1 loads Hub ids from the
local cache at once instead of retrying, and --model takes any local save_pretrained directory.

Every row reports HellaSwag in both public conventions (completion style as build-nanogpt and llm.c
score it, lm-eval style as lm-evaluation-harness does; gpt2repro/hellaswag.py says how they differ).
OpenAI's published GPT-2 (124M) figures are in gpt2repro/report.py (GPT2_124M_REFERENCE); run_report.py
puts them beside these results.

The scorer is gpt2repro.hellaswag and validation loss and bits-per-byte come from gpt2repro.validation:
the same code train.py reports with.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import huggingface_hub.constants
import torch

import modeling_gpt2repro  # noqa: F401  registers our classes with Auto*: checkpoints saved without code load
from gpt2repro.errors import UsageError, UserError, cli, first_line
from gpt2repro.fileio import write_atomically
from gpt2repro.hellaswag import HELLASWAG_ITEMS, HELLASWAG_METRICS, cache_dir, load_hellaswag, score_hellaswag
from gpt2repro.hub import failure_reason, repo_id_problem, repo_info, unreachable
from gpt2repro.model_card import add_eval_results, load_card, upload_card
from gpt2repro.provenance import provenance
from gpt2repro.report import describe_data
from gpt2repro.throughput import keep_freed_memory_for_reuse
from gpt2repro.validation import resolve_val_tokens, validation_loss

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
OFFLINE_HINT = ("offline, set HF_HUB_OFFLINE=1 to use the local Hub cache without retrying, or pass a local "
                "save_pretrained directory to --model")


class ModelLoadError(UserError, ValueError):
    """A --model that cannot be loaded: the message says why and what to pass instead."""


def hub_answers(name: str) -> bool:
    """Whether the Hub answers about the model `name`, asked in one short call: the downloads' retries would make a
    machine that cannot reach it wait most of a minute. A refusal (no such repo, gated) is its one line at once; any
    other failure (no answer, a server error, rate limiting, an expired token) leaves the local cache to serve it."""
    from huggingface_hub.errors import RepositoryNotFoundError  # GatedRepoError is one

    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return False
    try:
        repo_info(name)
    except RepositoryNotFoundError as e:
        raise ModelLoadError(f"cannot load model {name!r}: {failure_reason(e)}") from None
    except Exception as e:
        answer = "does not answer" if unreachable(e) else "answered with an error"
        print(f"note: the Hugging Face Hub {answer} ({failure_reason(e)}); loading {name} from the local cache",
              file=sys.stderr)
        return False
    return True


def load_model(name: str, device: str, dtype: torch.dtype):
    """A causal LM and its tokenizer from a checkpoint dir, any HF model dir, or a Hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = Path(name).exists()
    if not local and (problem := repo_id_problem(name)):
        raise ModelLoadError(f"cannot load model {name!r}: no such local directory, and not a Hub repo id "
                             f"({problem})")
    cache_only = not local and not hub_answers(name)
    # transformers builds an empty tokenizer for a GPT-2 directory without tokenizer files, so ask
    # the directory, not AutoTokenizer. Weights-only checkpoints get the GPT-2 BPE they were trained on.
    # The tokenizer loads first: a damaged one fails in a moment, not after gigabytes of weights.
    part = "tokenizer"
    try:
        if Path(name).is_dir() and not any((Path(name) / f).exists() for f in TOKENIZER_FILES):
            from gpt2repro.tokenizer import load_tokenizer

            print(f"note: no tokenizer files in {name}; using the shipped GPT-2 tokenizer", file=sys.stderr)
            tokenizer = load_tokenizer()
        else:
            tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=cache_only)
        part = "model"
        model = AutoModelForCausalLM.from_pretrained(name, trust_remote_code=True, dtype=dtype,
                                                     local_files_only=cache_only)
    # Damaged files raise whatever their parser raises (SafetensorError, JSONDecodeError, KeyError,
    # tokenizers' bare Exception): any of them becomes the one-line message.
    except Exception as e:
        if not local:
            raise ModelLoadError(f"cannot load model {name!r}: not a local directory, and not available from the "
                                 f"Hugging Face Hub (offline?); {OFFLINE_HINT}") from None
        reason = first_line(e, with_type=True).rstrip(".")
        raise ModelLoadError(f"cannot load the {part} from {name} ({reason}); are its files complete?") from None
    return model.to(device).eval(), tokenizer


def format_table(results: dict) -> str:
    summaries = [r["summary"] for r in results["models"].values()]
    with_hellaswag = any(HELLASWAG_ITEMS in s for s in summaries)
    with_val = any("val_loss" in s for s in summaries)
    header = f"{'model':<32}"
    if with_hellaswag:
        header += f" {'items':>6} {'compl acc':>9} {'acc_norm':>8} {'lm-eval acc':>11} {'acc_norm':>8}"
    lines = [header + (f" {'val loss':>8} {'val bpb':>8}" if with_val else "")]
    for name, s in zip(results["models"], summaries):
        line = f"{name[-32:]:<32}"
        if with_hellaswag:
            widths = (9, 8, 11, 8)  # the header's columns
            accs = "".join(f" {100 * s[metric.name]:>{width}.2f}" for metric, width in zip(HELLASWAG_METRICS, widths))
            line += f" {s[HELLASWAG_ITEMS]:>6}{accs}"
        lines.append(line + (f" {s['val_loss']:>8.4f} {s['val_bpb']:>8.4f}" if "val_loss" in s else ""))
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="checkpoint, HF dir or Hub id; repeatable")
    parser.add_argument("--data", help="HellaSwag .jsonl (rowanz) or .parquet (Rowan/hellaswag); default: download val")
    parser.add_argument("--hellaswag", action=argparse.BooleanOptionalAction, default=True,
                        help="score HellaSwag (default); --no-hellaswag with --val-data reports validation loss alone")
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
    if not args.hellaswag and not args.val_data:
        parser.error("--no-hellaswag leaves nothing to evaluate: add --val-data DIR (validation loss alone)")
    return args


@cli
def main(argv=None):
    args = parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cpu":
        keep_freed_memory_for_reuse()  # each batch's logits reuse the last one's memory instead of faulting it in

    if args.output and not Path(args.output).resolve().parent.is_dir():
        raise UsageError(f"--output {args.output}: its directory does not exist; create it first")
    # bad data fails here, before any model is loaded
    items = load_hellaswag(args.data, args.limit) if args.hellaswag else []
    if args.val_data:
        args.val_tokens = resolve_val_tokens(args.val_data, args.val_tokens)
    # a wrong repo id or no network fails now, not after hours of scoring
    card = load_card(args.push_results) if args.push_results else None
    data = str(args.data or cache_dir() / "hellaswag_val.jsonl") if args.hellaswag else None
    results = {"data": data, "val_data": args.val_data, "provenance": provenance(), "models": {}}
    failures = []
    for name in args.model:
        if not Path(name).exists() and not huggingface_hub.constants.HF_HUB_OFFLINE:
            print(f"note: {name} is not a local directory: loading it from the Hugging Face Hub ({OFFLINE_HINT})",
                  file=sys.stderr)
        try:
            model, tokenizer = load_model(name, device, getattr(torch, args.dtype))
        except ModelLoadError as e:  # the other models' results are kept: a Hub id offline must not lose them
            failures.append(str(e))
            continue
        started = time.perf_counter()
        summary = {}
        if items:
            scores = score_hellaswag(model, tokenizer, items, args.batch_size, progress=True)
            per_item = scores.pop("per_item")
            summary.update(scores)
        summary.update(device=device, dtype=args.dtype)
        if args.val_data:
            seq_len = min(1024, getattr(model.config, "max_position_embeddings", 1024))
            summary.update(validation_loss(model, args.val_data, args.val_tokens, seq_len, args.val_batch_size))
        summary["seconds"] = round(time.perf_counter() - started, 1)
        results["models"][name] = {"summary": summary, "items": per_item if items else []}
        print(f"{name}: {len(items)} HellaSwag items in {summary['seconds']} s", file=sys.stderr)
        del model

    if results["models"]:
        print(format_table(results))
    if args.output and results["models"]:
        write_atomically(Path(args.output), json.dumps(results, indent=1))  # never a half-written results file
        print(f"wrote {args.output}")
    if failures:
        kept = f"; the results of {', '.join(results['models'])} are above" if results["models"] else ""
        kept += f" and in {args.output}" if kept and args.output else ""
        raise ModelLoadError("; ".join(failures) + kept)
    if card is not None:
        data = describe_data(args.val_data) if args.val_data else None
        card = add_eval_results(card, results["models"][args.model[0]]["summary"], args.push_results, data,
                                args.data)
        upload_card(card, args.push_results)
        print(f"added {args.model[0]}'s results to the card of https://huggingface.co/{args.push_results}")


if __name__ == "__main__":
    main()
