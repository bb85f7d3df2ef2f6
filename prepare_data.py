"""Tokenize a corpus into GPT-2 token shards: fast, in order, resumable.

    python prepare_data.py                              # shipped tiny-Shakespeare -> data/tinyshakespeare
    python prepare_data.py fineweb-edu-10b              # HuggingFaceFW/fineweb-edu sample-10BT, streamed
    python prepare_data.py fineweb-10b                  # HuggingFaceFW/fineweb sample-10BT (llm.c's val target)
    python prepare_data.py --dataset HuggingFaceFW/fineweb-edu --name sample-10BT
    python prepare_data.py corpus/ more/*.jsonl --text-column content --out data/mine
    python prepare_data.py fineweb-edu-100b --num-shards 8 --shard-index 3   # machine 3 of 8
    python prepare_data.py fineweb-edu-10b --from-hub                # download its GPT-2 tokens instead (minutes)
    python prepare_data.py fineweb-edu-10b --verify-hub-tokens 1000  # compare them with tokenizing here
    python prepare_data.py corpus/ --out data/mine --push-to-hub you/mine-gpt2   # publish a prepared directory

A .txt file is one document; a .jsonl/.json/.parquet row is one document (document_sources.py).
Empty ones are skipped; each other document becomes <|endoftext|> + its tokens, and the stream is
cut into llm.c-format shards (gpt2repro/token_shards.py): the first --val-split-tokens tokens are the validation
split, the rest train.
Worker processes tokenize batches of documents and the results are written in document order, so
the shards are the same bytes whatever --num-proc is. After every shard, manifest.json records
where the stream stands: a rerun after a crash or Ctrl-C continues from the last complete shard,
with the same result. With --num-shards K, machine i writes OUT/part-i-of-K from the i-th slice
of the input files (validation from part 0 only); OUT then reads as one dataset.

--from-hub downloads a data preset's GPT-2 tokens (HUB_TOKENS: modded-nanogpt's llm.c shards) or any
pre-tokenized dataset repo (--from-hub REPO) instead of tokenizing: gpt2repro/hub_data.py.
"""

import argparse
import collections
import contextlib
import multiprocessing
import os
import re
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from itertools import islice
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gpt2repro.document_sources import (
    DATA_PRESETS, DEFAULT_CORPUS, FILE_TYPES, HUB_TOKENS, Source, data_dir_for, file_source, hub_source,
)
from gpt2repro.dir_lock import exclusive
from gpt2repro.errors import UserError, cli
from gpt2repro.hub import check_repo_id
from gpt2repro.hub_data import download_tokens, push_tokens, verify_tokens
from gpt2repro.provenance import git_state
from gpt2repro.token_shards import (
    MANIFEST_NAME,
    MANIFEST_VERSION,
    SPLITS,
    VAL_SPLIT_TOKENS,
    ShardError,
    load_manifest,
    read_shard_header,
    write_manifest,
    write_shard,
)
from gpt2repro.tokenizer import EOT_ID, get_encoding, tokenizer_fingerprint

BYTES_PER_TOKEN = 4  # English text, for sizing the validation split of a local corpus
BATCH_CHARS = 1 << 20  # text per worker task: enough work to amortise the IPC


class PrepareError(UserError, ValueError):
    """A run that cannot go on (output directory, corpus size): the message says what to do."""


# --------------------------------------------------------------------------------------------
# tokenization


def encode_documents(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """<|endoftext|> + tokens of each text, as one uint16 array, and each document's token count."""
    encoding, pieces = get_encoding(), []
    eot = np.array([EOT_ID], dtype=np.uint32)
    for text in texts:
        try:  # encode_to_numpy skips building a Python list of ints (faster: benchmarks/RESULTS.md)
            tokens = encoding.encode_to_numpy(text, disallowed_special=())
        except UnicodeEncodeError:  # lone surrogates: encode_ordinary knows how to repair them
            tokens = np.array(encoding.encode_ordinary(text), dtype=np.uint32)
        pieces += (eot, tokens)
    lengths = np.array([len(p) + 1 for p in pieces[1::2]], dtype=np.int64)
    return np.concatenate(pieces).astype(np.uint16), lengths


def _batches(documents: Iterator[str]) -> Iterator[list[str]]:
    batch, chars = [], 0
    for text in documents:
        batch.append(text)
        chars += len(text)
        if chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle


def tokenized_batches(documents: Iterator[str], num_proc: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """encode_documents() over batches of documents on `num_proc` processes, results in input order.

    At most 2 * num_proc batches are in flight (Pool.imap would read the whole stream ahead)."""
    if num_proc == 1:
        yield from map(encode_documents, _batches(documents))
        return
    get_encoding()  # loaded once here, inherited by forked workers
    with multiprocessing.Pool(num_proc, initializer=_ignore_sigint) as pool:
        pending = collections.deque()
        for batch in _batches(documents):
            pending.append(pool.apply_async(encode_documents, (batch,)))
            if len(pending) >= 2 * num_proc:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


# --------------------------------------------------------------------------------------------
# shards


class ShardWriter:
    """Cuts the token stream into shards: the first `val_split_tokens` tokens form the val split, the
    rest train; shards hold `shard_tokens` except the last of each split. After each shard the
    manifest records where the stream stands: (next document, its tokens already written)."""

    def __init__(self, out_dir: Path, manifest: dict):
        self.out_dir, self.manifest = out_dir, manifest
        self.val_split_tokens = manifest["settings"]["val_tokens"]  # the manifest's name for the split size
        self.shard_tokens = manifest["settings"]["shard_tokens"]
        self.buffer = np.empty(self.shard_tokens, dtype=np.uint16)
        self.fill = 0
        self.accepted = sum(s["tokens"] for s in manifest["shards"])  # tokens in shards + buffer
        self.next_document, offset = manifest["shards"][-1]["end"] if manifest["shards"] else (0, 0)
        self.stream_position = self.accepted - offset  # where next_document starts in the stream

    def shard_end(self) -> int:
        start = self.accepted - self.fill
        if start < self.val_split_tokens:
            return min(start + self.shard_tokens, self.val_split_tokens)
        return start + self.shard_tokens

    def add(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        starts = self.stream_position + np.cumsum(lengths) - lengths
        i = self.accepted - self.stream_position  # > 0 only for the first batch after a resume
        while i < len(tokens):
            take = min(len(tokens) - i, self.shard_end() - self.accepted)
            self.buffer[self.fill : self.fill + take] = tokens[i : i + take]
            self.fill, self.accepted, i = self.fill + take, self.accepted + take, i + take
            if self.accepted == self.shard_end() and i < len(tokens):
                document = int(np.searchsorted(starts, self.accepted, side="right")) - 1
                self.flush(self.next_document + document, self.accepted - int(starts[document]))
        self.stream_position += len(tokens)
        self.next_document += len(lengths)
        if self.fill and self.accepted == self.shard_end():
            self.flush(self.next_document, 0)

    def flush(self, end_document: int, end_offset: int) -> None:
        shards = self.manifest["shards"]
        start = self.accepted - self.fill
        split = "val" if start < self.val_split_tokens else "train"
        file = f"{self.manifest['name']}_{split}_{len(shards):06d}.bin"
        previous = shards[-1]["end"] if shards else (0, 0)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        sha256 = write_shard(self.out_dir / file, self.buffer[: self.fill])
        shards.append(
            {
                "file": file,
                "split": split,
                "tokens": self.fill,
                # documents whose <|endoftext|> is in this shard
                "documents": end_document + (end_offset > 0) - previous[0] - (previous[1] > 0),
                "sha256": sha256,
                "end": [end_document, end_offset],
            }
        )
        self.manifest["splits"] = {
            s: {
                "tokens": sum(e["tokens"] for e in shards if e["split"] == s),
                "documents": sum(e["documents"] for e in shards if e["split"] == s),
                "shards": sum(e["split"] == s for e in shards),
            }
            for s in SPLITS
        }
        write_manifest(self.out_dir, self.manifest)
        self.fill = 0

    def finish(self) -> None:
        if self.fill:
            self.flush(self.next_document, 0)


def check_out_dir(out_dir: Path) -> None:
    """Refuse an output path that cannot become a directory of shards, before any work (creates nothing)."""
    for path in (out_dir, *out_dir.parents):  # the first that exists decides
        if path.exists():
            if not path.is_dir():
                raise PrepareError(f"cannot write shards to {out_dir}: {path} is a file; pass another --out")
            if not os.access(path, os.W_OK | os.X_OK):
                raise PrepareError(f"cannot write shards to {out_dir}: {path} is not writable; pass another --out")
            return


def start_manifest(out_dir: Path, identity: dict, overwrite: bool) -> dict:
    """The manifest to continue: that of an interrupted run of the same job, or a fresh one."""
    check_out_dir(out_dir)
    ours = re.compile(rf"{re.escape(identity['name'])}_(val|train)_\d{{6}}\.bin")
    files = sorted(out_dir.glob("*.bin*")) if out_dir.is_dir() else []
    manifest_path = out_dir / MANIFEST_NAME
    if overwrite:
        for path in files + [manifest_path]:
            path.unlink(missing_ok=True)
    elif manifest_path.exists():
        try:
            manifest = load_manifest(out_dir)
        except ShardError as e:
            raise PrepareError(f"{e} (or pass --overwrite)") from None
        differs = [key for key, value in identity.items() if manifest.get(key) != value]
        if differs:
            raise PrepareError(
                f"{out_dir} holds shards of another {' and '.join(differs)} (from {manifest.get('label')}); "
                "pass --overwrite to replace them, or choose another --out"
            )
        listed = {s["file"] for s in manifest["shards"]}
        for entry in manifest["shards"]:
            if read_shard_header(out_dir / entry["file"]) != entry["tokens"]:
                raise PrepareError(f"{out_dir / entry['file']}: does not match the manifest; rerun with --overwrite")
        for path in files:
            if path.name in listed:
                continue
            if not (path.suffix == ".tmp" or ours.fullmatch(path.name)):
                raise PrepareError(f"{out_dir} holds {path.name}, not from this job; pass --overwrite or another --out")
            path.unlink()  # an unfinished temp file, or a shard whose manifest entry was not yet written
        return manifest
    elif files:
        raise PrepareError(f"{out_dir} holds .bin files but no {MANIFEST_NAME}; pass --overwrite or another --out")
    return dict(identity, shards=[], splits={}, skipped_documents=0, empty_documents=0, complete=False)


def prepare(source: Source, out_dir: Path, val_split_tokens: int, shard_tokens: int, num_proc: int,
            overwrite=False, made_by: dict | None = None) -> dict:
    """Tokenize `source` into shards in `out_dir`; returns the final manifest. `made_by`: the command and commit,
    recorded in the manifest."""
    identity = {
        "format_version": MANIFEST_VERSION,
        "name": source.name,
        "source": source.description,  # JSON types only: compared with the reloaded manifest
        "tokenizer": tokenizer_fingerprint(),
        "settings": {"val_tokens": val_split_tokens, "shard_tokens": shard_tokens},
    }
    manifest = start_manifest(out_dir, identity, overwrite)
    manifest["label"] = source.label  # informative only: the identity above decides what may be resumed
    if manifest["complete"]:
        print(f"{out_dir} is already complete; pass --overwrite to prepare it again")
        return manifest
    if made_by:
        manifest["made_by"] = made_by
    writer = ShardWriter(out_dir, manifest)
    if writer.accepted:
        print(f"resuming after {len(manifest['shards'])} shards ({writer.accepted:,} tokens)", file=sys.stderr)

    start_time, resumed_at = time.perf_counter(), writer.accepted
    # Skipping re-reads the documents already written, without tokenizing them (on the Hub: re-streams).
    documents = islice(source.documents(), writer.next_document, None)
    with (
        closing(tokenized_batches(documents, num_proc)) as batches,  # closing() stops the workers on errors
        tqdm(unit="tok", unit_scale=True, disable=None, desc=identity["name"]) as progress,
    ):
        for tokens, lengths in batches:
            writer.add(tokens, lengths)
            progress.update(len(tokens))
            progress.set_postfix(docs=f"{writer.next_document:,}", refresh=False)
    if writer.next_document == 0:
        raise PrepareError(
            f"no documents with text in {source.label} ({source.empty} empty, {source.skipped} not valid UTF-8); "
            "nothing to tokenize"
        )
    if writer.accepted <= val_split_tokens:
        raise PrepareError(f"all {writer.accepted:,} tokens went to validation; pass a smaller --val-split-tokens")
    writer.finish()
    manifest.update(skipped_documents=source.skipped, empty_documents=source.empty, complete=True)
    write_manifest(out_dir, manifest)

    if source.skipped:
        first = source.first_skipped
        print(f"warning: skipped {source.skipped} documents with non-UTF-8 bytes (first: {first})", file=sys.stderr)
    if source.empty:
        print(f"warning: skipped {source.empty} empty documents (first: {source.first_empty})", file=sys.stderr)
    seconds = time.perf_counter() - start_time
    splits = manifest["splits"]
    print(
        f"{out_dir}: {splits['val']['tokens']:,} val + {splits['train']['tokens']:,} train tokens, "
        f"{writer.next_document:,} documents, {len(manifest['shards'])} shards "
        f"({(writer.accepted - resumed_at) / seconds:,.0f} tokens/s)"
    )
    return manifest


def default_val_split_tokens(source: Source) -> int:
    """The 124M recipe's validation budget for a stream; about 10% of a local corpus, estimated from its size."""
    if source.size_bytes is None:
        return VAL_SPLIT_TOKENS
    return min(VAL_SPLIT_TOKENS, source.size_bytes // BYTES_PER_TOKEN // 10)


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "inputs",
        nargs="*",
        help=f"files, directories or globs ({', '.join(FILE_TYPES)}), "
        f"or a preset: {', '.join(DATA_PRESETS)}. Default: the shipped tiny-Shakespeare",
    )
    parser.add_argument("--dataset", help="a Hugging Face Hub dataset, streamed (e.g. HuggingFaceFW/fineweb-edu)")
    parser.add_argument("--name", help="the Hub dataset's configuration (e.g. sample-10BT)")
    parser.add_argument("--split", default="train", help="the Hub dataset's split")
    parser.add_argument("--text-column", default="text", help="field holding the document text")
    parser.add_argument("--out", type=Path, help="output directory (default: data/<name>)")
    parser.add_argument(
        "--val-split-tokens",
        type=int,
        help=f"validation split size in tokens (default: {VAL_SPLIT_TOKENS:,} for Hub datasets: the "
        "--val-tokens that train.py and eval_hellaswag.py score, + 1; ~10%% of a local corpus); with --from-hub, "
        "the first N tokens of the downloaded val shard",
    )
    parser.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard")
    parser.add_argument("--num-proc", type=int, default=_cpu_count(), help="tokenizer processes (default: all cores)")
    parser.add_argument("--num-shards", type=int, default=1, help="split the input files over K machines ...")
    parser.add_argument(
        "--shard-index", type=int, default=0, help="... of which this is machine i, writing OUT/part-i-of-K"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace shards already in --out")
    parser.add_argument("--strict", action="store_true", help="fail on non-UTF-8 input instead of skipping it")
    hub = parser.add_argument_group("pre-tokenized data on the Hub")
    hub.add_argument(
        "--from-hub",
        nargs="?",
        const="",
        metavar="REPO",
        help="download the tokens instead of tokenizing: the data preset's repo "
        f"({', '.join(f'{k}: {v}' for k, v in HUB_TOKENS.items())}), or a dataset REPO of llm.c shards or of a "
        "--push-to-hub upload",
    )
    hub.add_argument("--revision", help="with --from-hub: the repo's branch, tag or commit (default: main)")
    hub.add_argument("--max-train-shards", type=int, help="with --from-hub: only the first N train shards")
    hub.add_argument(
        "--verify-hub-tokens",
        type=int,
        metavar="N",
        help="tokenize the first N documents of the source here and compare them with the start of --out's "
        "val split (downloaded with --from-hub); exits 1 when they differ",
    )
    hub.add_argument("--push-to-hub", metavar="REPO", help="upload --out (once prepared) as the Hub dataset REPO")
    hub.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    args = parser.parse_args(argv)
    preset = args.inputs[0].lower() if len(args.inputs) == 1 and args.inputs[0].lower() in DATA_PRESETS else None
    if args.dataset and args.inputs or preset and args.dataset:
        parser.error("give either --dataset, a preset or local files, not several")
    if not 0 <= args.shard_index < args.num_shards:
        parser.error(f"--shard-index must be in 0..{args.num_shards - 1}")
    if args.shard_tokens < 1 or args.num_proc < 1 or (args.val_split_tokens or 0) < 0:
        parser.error("--shard-tokens and --num-proc must be positive, --val-split-tokens not negative")
    if (args.max_train_shards or 1) < 1 or (args.verify_hub_tokens or 1) < 1:
        parser.error("--max-train-shards and --verify-hub-tokens must be positive")
    if args.from_hub == "" and preset not in HUB_TOKENS:
        known = ", ".join(HUB_TOKENS)
        parser.error(f"--from-hub without a REPO needs a data preset that has one ({known}); or pass --from-hub REPO")
    if args.from_hub is not None and args.num_shards > 1:
        parser.error("--from-hub downloads the whole dataset: drop --num-shards/--shard-index")
    if args.verify_hub_tokens and not (preset or args.dataset or args.inputs):
        parser.error("--verify-hub-tokens compares with the source text: name a data preset, --dataset or the files")
    if args.from_hub is None and (args.max_train_shards or args.revision):
        parser.error("--max-train-shards and --revision go with --from-hub")
    for flag, repo_id in (("--from-hub", args.from_hub), ("--push-to-hub", args.push_to_hub)):
        if repo_id:  # before hours of tokenizing, not at the upload after them
            check_repo_id(repo_id, flag)
    if preset:
        args.dataset, args.name, args.inputs = *DATA_PRESETS[preset], []
    args.preset = preset
    return args


def made_by(argv) -> dict:
    """The command and code that prepared a directory, for its manifest (and the dataset card of a push)."""
    words, command = list(sys.argv[1:] if argv is None else argv), ["python", "prepare_data.py"]
    while words:  # what publishing or checking asked for is not how the tokens were made
        word = words.pop(0)
        if word in ("--push-to-hub", "--verify-hub-tokens"):
            words = words[1:]
        elif not word.startswith(("--push-to-hub=", "--verify-hub-tokens=", "--private")):
            command.append(word)
    return {"command": shlex.join(command), "commit": git_state()["commit"]}


def from_hub(args, out: Path) -> None:
    """Download the tokens of --from-hub into `out`."""
    repo = args.from_hub or HUB_TOKENS[args.preset]
    tokenize = shlex.join(["python", "prepare_data.py", args.preset or "CORPUS", *(["--out", str(out)] if args.out
                                                                                 else [])])
    download_tokens(
        repo,
        out,
        revision=args.revision,
        max_train_shards=args.max_train_shards,
        val_tokens=VAL_SPLIT_TOKENS if args.val_split_tokens is None else args.val_split_tokens,
        name=out.name,
        text_source={"dataset": args.dataset, "name": args.name} if args.dataset else None,
        overwrite=args.overwrite,
        fallback=f"or tokenize instead: {tokenize}",
    )


@cli
def main(argv=None) -> None:
    args = parse_args(argv)
    part = (args.shard_index, args.num_shards) if args.num_shards > 1 else None
    try:
        if args.dataset:
            source = hub_source(args.dataset, args.name, args.split, args.text_column, part)
        else:
            source = file_source(args.inputs or [str(DEFAULT_CORPUS)], args.text_column, part)
        source.name = data_dir_for(args.preset or source.name).name  # also the shards' file prefix
        out = args.out or data_dir_for(source.name)
        if args.from_hub:  # a repo of one's own: named after the repo unless --out says otherwise
            out = args.out or data_dir_for(args.preset or args.from_hub.rstrip("/").split("/")[-1])
        source.strict = args.strict
        val_split = default_val_split_tokens(source) if args.val_split_tokens is None else args.val_split_tokens
        if part:
            out = out / f"part-{part[0]:05d}-of-{part[1]:05d}"
            val_split = val_split if part[0] == 0 else 0  # the validation split comes from part 0 only
        writes = args.from_hub is not None or args.verify_hub_tokens is None or args.push_to_hub
        # one preparation at a time into --out (gpt2repro/dir_lock.py); a killed one's lock blocks nothing
        with exclusive(out, "--out", "choose another --out") if writes else contextlib.nullcontext():
            if args.from_hub is not None:
                from_hub(args, out)
            elif writes:  # --verify-hub-tokens alone checks, prepares nothing
                prepare(source, out, val_split, args.shard_tokens, args.num_proc, args.overwrite, made_by(argv))
            if args.verify_hub_tokens:
                match, line = verify_tokens(out, source.documents(), args.verify_hub_tokens, encode_documents,
                                            source.label)
                print(line)
                if not match:
                    sys.exit(1)
            if args.push_to_hub:
                url = push_tokens(out, args.push_to_hub, private=args.private, commit=made_by(argv)["commit"])
                print(f"pushed {out} to {url}")
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to continue from the last complete shard", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
