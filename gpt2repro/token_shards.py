"""Token shards on disk: the llm.c / modded-nanogpt `.bin` format, its manifest, and the loader.

A shard is a header of 256 int32 (magic 20240520, version 1, token count) followed by the tokens
as uint16. Shards written here train llm.c and modded-nanogpt, and theirs train us.

`prepare_data.py` writes a directory of shards plus `manifest.json`:

    {"format_version": 1, "name": ..., "source": {...}, "tokenizer": "gpt2-bpe-sha256:...",
     "settings": {"val_tokens": ..., "shard_tokens": ...},   # val_tokens: the val split's size in tokens
     "shards": [{"file": "x_val_000000.bin", "split": "val", "tokens": ..., "documents": ...,
                 "sha256": ..., "end": [document, token]}, ...],
     "splits": {"val": {"tokens": ..., "documents": ..., "shards": ...}, "train": {...}},
     "skipped_documents": ..., "empty_documents": ..., "complete": true}

`end` is where the stream stands after the shard (the next document and how many of its tokens
are already written): it is what lets prepare_data resume. An entry may also carry `file_tokens`
when only the first `tokens` of a longer file belong to the split (a downloaded 100M-token val
shard cut to the validation budget: gpt2repro/hub_data.py). A directory made of `part-*-of-*`
subdirectories (prepare_data --num-shards) reads as one dataset.

A directory of llm.c / modded-nanogpt shards without a manifest (`fineweb_val_000000.bin`,
`edu_fineweb_train_000001.bin`, `tiny_shakespeare_val.bin`, ...) also reads as a dataset:
`load_manifest` makes up its manifest from the file names and shard headers (see `llmc_manifest`).

`ShardedTokenLoader` reads (batch_size, seq_len + 1) windows for one rank of a data-parallel run.

A shard damaged after preparation (truncated by a failed copy, overwritten) or holding ids outside the
tokenizer's vocabulary is named in one line, with the prepare_data command that rewrites it: `check_shards`
at startup (every header and size against the manifest, a sample of the ids), the loader as it first reads
each shard (header, size, sha256 when the manifest has one, every id). Ids from 50,257 to 50,303 exist in the
model (its vocabulary is padded to a multiple of 64) but not in the tokenizer: they would silently train
padding rows of the embedding, so they are refused like any other foreign id.
"""

import hashlib
import json
import os
import re
import shlex
from pathlib import Path

import numpy as np

from gpt2repro.errors import UserError
from gpt2repro.fileio import write_atomically

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
SPLITS = ("val", "train")
ID_SAMPLE_BLOCKS, ID_SAMPLE_BLOCK = 8, 4096  # the startup sample of each shard's ids: 8 runs of 4,096 tokens
# The validation budget of the GPT-2 (124M) recipe, under two names for its two meanings:
# VAL_TOKENS next-token targets are scored (build-nanogpt's 20 steps x 64 sequences x 1024 tokens x 8 GPUs;
# modded-nanogpt's FineWeb target is the loss on this many tokens), and the split that scores them holds
# VAL_SPLIT_TOKENS tokens (the first is only an input): what prepare_data.py writes for Hub datasets, and what
# a manifest's settings.val_tokens records (the split size, a name kept for the manifests already written).
VAL_TOKENS = 10_485_760


def val_split_tokens(targets: int) -> int:
    """Tokens a val split needs to score `targets` next-token targets: the first token is only an input."""
    return targets + 1


VAL_SPLIT_TOKENS = val_split_tokens(VAL_TOKENS)


class ShardError(UserError, ValueError):
    """A shard that cannot be trusted: the message names the file and what to do."""


def write_shard(path: str | Path, tokens) -> str:
    """Write `tokens` as a shard at `path` via a temp file + rename: a crash never leaves half a shard.

    Returns the sha256 of the file, for the manifest.
    """
    path = Path(path)
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**16):
        raise ShardError(f"{path}: token ids must fit in uint16 (0..65535); this vocabulary cannot be stored")
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, tokens.size)
    body = tokens.astype(np.uint16, copy=False).tobytes()
    digest = hashlib.sha256(header.tobytes())
    digest.update(body)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return digest.hexdigest()


def _header_problem(path: Path) -> tuple[int, str | None]:
    """(token count, None) for a shard whose header and size agree, else (0, what is wrong, without the fix)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            header = np.frombuffer(f.read(HEADER_BYTES), dtype=np.int32)
    except OSError as e:
        return 0, f"cannot read shard ({e.strerror})"
    if header.size < 3 or header[0] != SHARD_MAGIC:
        return 0, "not a token shard (bad magic number)"
    if header[1] != SHARD_VERSION:
        return 0, f"shard version {header[1]} is not supported (expected {SHARD_VERSION})"
    n_tokens = int(header[2])
    expected = HEADER_BYTES + 2 * n_tokens
    if size != expected:
        return 0, f"truncated or corrupt shard ({size} bytes, header says {expected})"
    return n_tokens, None


def read_shard_header(path: str | Path) -> int:
    """Validate a shard's header and size; return its token count."""
    path = Path(path)
    n_tokens, problem = _header_problem(path)
    if problem:
        fix = "delete it and rerun prepare_data.py to re-create it" if "truncated" in problem else (
            "re-create it with prepare_data.py")
        raise ShardError(f"{path}: {problem}; {fix}")
    return n_tokens


def read_shard(path: str | Path) -> np.ndarray:
    """The shard's tokens as a read-only uint16 memmap (validated first)."""
    n_tokens = read_shard_header(path)
    return np.memmap(path, dtype=np.uint16, mode="r", offset=HEADER_BYTES, shape=(n_tokens,))


# --------------------------------------------------------------------------------------------
# manifest


def write_manifest(data_dir: str | Path, manifest: dict) -> None:
    """Write manifest.json atomically: readers see the old or the new one, never half of one."""
    write_atomically(Path(data_dir) / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")


def read_manifest_file(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ShardError(f"{path}: unreadable manifest ({e}); rerun prepare_data.py with --overwrite") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != MANIFEST_VERSION:
        raise ShardError(f"{path}: not a gpt2repro manifest of format version {MANIFEST_VERSION}")
    missing = {"source", "tokenizer", "shards", "splits", "complete"} - manifest.keys()
    if missing:
        raise ShardError(f"{path}: manifest lacks {', '.join(sorted(missing))}; rerun prepare_data.py")
    for shard in manifest["shards"]:
        if not {"file", "split", "tokens"} <= shard.keys() or shard["split"] not in SPLITS:
            raise ShardError(f"{path}: malformed shard entry {shard}")
    return manifest


def _merge_parts(data_dir: Path, part_dirs: list[Path]) -> dict:
    """One manifest for the `part-i-of-K` directories that K machines prepared separately."""
    parts = [read_manifest_file(d / MANIFEST_NAME) for d in part_dirs]
    counts = {int(re.fullmatch(r"part-\d+-of-(\d+)", d.name)[1]) for d in part_dirs}
    if len(counts) != 1 or len(parts) != counts.pop():
        found = ", ".join(d.name for d in part_dirs)
        raise ShardError(f"{data_dir}: incomplete set of parts ({found}); prepare the missing ones first")
    tokenizers = {p["tokenizer"] for p in parts}
    if len(tokenizers) != 1:
        raise ShardError(f"{data_dir}: parts were tokenized differently ({', '.join(sorted(tokenizers))})")
    shards = [dict(s, file=f"{d.name}/{s['file']}") for d, p in zip(part_dirs, parts) for s in p["shards"]]
    splits = {
        split: {key: sum(p["splits"][split][key] for p in parts) for key in ("tokens", "documents", "shards")}
        for split in SPLITS
    }
    return dict(
        parts[0],
        source=dict(parts[0]["source"], part=None),
        shards=shards,
        splits=splits,
        skipped_documents=sum(p.get("skipped_documents", 0) for p in parts),
        empty_documents=sum(p.get("empty_documents", 0) for p in parts),
        complete=all(p["complete"] for p in parts),
    )


# llm.c's fineweb_val_000000.bin, edu_fineweb_train_000001.bin; its starter pack's tiny_shakespeare_val.bin
LLMC_SHARD_NAME = re.compile(r"(?P<dataset>.+?)_(?P<split>val|train)(?:_\d+)?\.bin")


def llmc_manifest(data_dir: Path, paths: list[Path]) -> dict:
    """The manifest of a directory of llm.c / modded-nanogpt shards, which come without one.

    The split is in each file name, the order is by name, the token counts come from the (validated)
    headers. Shards in this format (magic 20240520, version 1, uint16 tokens) are GPT-2 BPE: that is
    what llm.c writes for gpt-2 (its llama-3 shards have another magic, uint32 tokens, and are
    refused by read_shard_header) and the only tokenizer modded-nanogpt uses. So the tokenizer is
    this project's GPT-2 fingerprint. Document counts are unknown (None): counting them would read
    every token. With no sha256, the loader identifies a shard by its file name and token count.
    """
    matches = {path: LLMC_SHARD_NAME.fullmatch(path.name) for path in paths}
    strangers = [path.name for path, match in matches.items() if not match]
    if strangers:
        raise ShardError(
            f"{data_dir}: no {MANIFEST_NAME}, and {strangers[0]} is not named like an llm.c shard "
            "(NAME_val_000000.bin, NAME_train_000001.bin); rename it, or create the shards with prepare_data.py"
        )
    datasets = sorted({match["dataset"] for match in matches.values()})
    if len(datasets) > 1:
        raise ShardError(f"{data_dir}: shards of several datasets ({', '.join(datasets)}); keep one per directory")
    shards = [
        {"file": path.name, "split": split, "tokens": read_shard_header(path), "documents": None}
        for split in SPLITS
        for path in sorted(p for p, match in matches.items() if match["split"] == split)
    ]
    for split in SPLITS:
        if not any(shard["split"] == split for shard in shards):
            raise ShardError(
                f"{data_dir}: llm.c shards without a {split} split (no *_{split}_*.bin among {len(paths)} .bin files); "
                f"add the {split} shards, or create the data with prepare_data.py"
            )
    from gpt2repro.tokenizer import tokenizer_fingerprint

    return {
        "format_version": MANIFEST_VERSION,
        "name": datasets[0],
        "source": {"type": "llm.c shards"},
        "tokenizer": tokenizer_fingerprint(),
        "settings": {},
        "shards": shards,
        "splits": {
            split: {
                "tokens": sum(s["tokens"] for s in shards if s["split"] == split),
                "documents": None,
                "shards": sum(s["split"] == split for s in shards),
            }
            for split in SPLITS
        },
        "skipped_documents": 0,
        "empty_documents": 0,
        "complete": True,
    }


def load_manifest(data_dir: str | Path) -> dict:
    """The validated manifest of a prepared data directory, of a directory of prepared parts, or of
    a directory of llm.c / modded-nanogpt shards (made up from their names and headers)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ShardError(f"{data_dir}: no such data directory; create it with prepare_data.py")
    if (data_dir / MANIFEST_NAME).is_file():
        return read_manifest_file(data_dir / MANIFEST_NAME)
    part_dirs = sorted(d for d in data_dir.glob("part-*-of-*") if (d / MANIFEST_NAME).is_file())
    if part_dirs:
        return _merge_parts(data_dir, part_dirs)
    shard_paths = sorted(data_dir.glob("*.bin"))
    if shard_paths:
        return llmc_manifest(data_dir, shard_paths)
    raise ShardError(f"{data_dir}: no {MANIFEST_NAME} and no .bin shards; create the shards with prepare_data.py")


def check_tokenizer(data_dir: str | Path, expected: str | None = None) -> None:
    """Refuse shards made with another tokenizer than `expected` (default: this project's GPT-2 BPE)."""
    if expected is None:
        from gpt2repro.tokenizer import tokenizer_fingerprint

        expected = tokenizer_fingerprint()
    found = load_manifest(data_dir)["tokenizer"]
    if found != expected:
        raise ShardError(
            f"{data_dir}: shards were tokenized with {found}, but the model expects {expected}; "
            "re-run prepare_data.py with this project's tokenizer"
        )


def rewrite_command(data_dir: str | Path, manifest: dict, file: str) -> str | None:
    """The prepare_data.py command that writes `file` of `data_dir` again, byte for byte (None for llm.c shards,
    which prepare_data.py did not write): the manifest's source and settings, into the same directory."""
    data_dir, out = Path(data_dir), Path(data_dir)
    if "/" in file:  # a part-i-of-K directory: its own manifest knows its source
        out = data_dir
        manifest = read_manifest_file(data_dir / file.split("/")[0] / MANIFEST_NAME)
    source, settings = manifest.get("source") or {}, manifest.get("settings") or {}
    if source.get("type") == "hub":
        derived = source["dataset"].rstrip("/").split("/")[-1] + (f"-{source['name']}" if source.get("name") else "")
        if manifest.get("name") != derived:  # a preset names its directory (and its shards) its own way
            args = [manifest["name"]]
        else:
            args = ["--dataset", source["dataset"], *(["--name", source["name"]] if source.get("name") else [])]
            args += ["--split", source["split"]] if source.get("split", "train") != "train" else []
    elif source.get("type") == "hub tokens":  # downloaded: fetched again once the manifest no longer says complete
        args = ["--from-hub", source["repo"], "--revision", source["revision"]]
        if settings.get("val_tokens"):
            args += ["--val-split-tokens", str(settings["val_tokens"])]
        command = ["python", "prepare_data.py", *args, "--out", str(out), "--overwrite"]
        return f"rm {shlex.quote(str(out / MANIFEST_NAME))} && {shlex.join(command)}"
    elif source.get("type") == "files" and manifest.get("label"):
        args = shlex.split(manifest["label"])
    else:
        return None
    if source.get("text_column", "text") != "text":
        args += ["--text-column", source["text_column"]]
    if source.get("part"):
        args += ["--num-shards", str(source["part"][1]), "--shard-index", str(source["part"][0])]
    for key, flag in (("val_tokens", "--val-split-tokens"), ("shard_tokens", "--shard-tokens")):
        if key in settings:
            args += [flag, str(settings[key])]
    return shlex.join(["python", "prepare_data.py", *args, "--out", str(out), "--overwrite"])


def damaged_shard(data_dir: Path, manifest: dict, file: str, problem: str) -> ShardError:
    """The one line for a shard that no longer is what was prepared: the file, the problem, how to rewrite it."""
    command = rewrite_command(data_dir, manifest, file)
    fix = (f"the shard was damaged after preparation: rewrite it with {command}" if command else
           "replace it with an intact copy (these llm.c shards were not written by prepare_data.py)")
    return ShardError(f"{Path(data_dir) / file}: {problem}; {fix}")


def shard_problem(path: Path, entry: dict, vocab_size: int | None, full: bool) -> str | None:
    """What is wrong with the shard at `path` against its manifest `entry`, or None. Always its header and size;
    its ids below `vocab_size` (a sample of blocks, or all with `full`); with `full`, its sha256 when recorded."""
    n_tokens, problem = _header_problem(path)
    if problem:
        return problem
    expected = entry.get("file_tokens", entry["tokens"])  # a downloaded val shard may be cut: hub_data.py
    if n_tokens != expected or entry["tokens"] > expected:
        return f"holds {n_tokens} tokens, the manifest says {expected}"
    if vocab_size is not None and n_tokens:
        tokens = np.memmap(path, dtype=np.uint16, mode="r", offset=HEADER_BYTES, shape=(n_tokens,))
        block = ID_SAMPLE_BLOCK
        starts = [0] if full else np.linspace(0, max(0, n_tokens - block), ID_SAMPLE_BLOCKS).astype(np.int64)
        for start in starts:
            part = tokens if full else tokens[start : start + block]
            if part.size and int(part.max()) >= vocab_size:
                at = int(start + np.argmax(part >= vocab_size))
                return (f"token id {int(tokens[at])} at token {at:,} is outside the tokenizer's vocabulary "
                        f"(0..{vocab_size - 1}; ids above it would train the embedding's padding rows or crash)")
        del tokens
    if full and entry.get("sha256"):
        with open(path, "rb") as f:
            if hashlib.file_digest(f, "sha256").hexdigest() != entry["sha256"]:
                return "its contents changed since preparation (sha256 differs from the manifest)"
    return None


def check_shards(data_dir: str | Path, vocab_size: int | None = None) -> None:
    """At startup, every shard of both splits: header and size against the manifest, and a sample of its ids
    against the vocabulary (default: this project's GPT-2 tokenizer). The rest is checked as each is read."""
    if vocab_size is None:
        from gpt2repro.tokenizer import VOCAB_SIZE

        vocab_size = VOCAB_SIZE
    data_dir = Path(data_dir)
    manifest = load_manifest(data_dir)
    for entry in manifest["shards"]:
        problem = shard_problem(data_dir / entry["file"], entry, vocab_size, full=False)
        if problem:
            raise damaged_shard(data_dir, manifest, entry["file"], problem)


def open_split(data_dir: str | Path, split: str) -> tuple[list[dict], list[np.ndarray]]:
    """The manifest entries and memmapped tokens of one split's shards, in stream order: the one way
    shards are read (the training loader, validation). Refuses unfinished or foreign-tokenizer data."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    data_dir = Path(data_dir)
    manifest = load_manifest(data_dir)
    if not manifest["complete"]:
        raise ShardError(f"{data_dir}: preparation did not finish; rerun the same prepare_data.py command")
    check_tokenizer(data_dir)
    entries = [s for s in manifest["shards"] if s["split"] == split]
    shards = []
    for entry in entries:
        problem = shard_problem(data_dir / entry["file"], entry, None, full=False)
        if problem:
            raise damaged_shard(data_dir, manifest, entry["file"], problem)
        shards.append(read_shard(data_dir / entry["file"])[: entry["tokens"]])
    return entries, shards


# --------------------------------------------------------------------------------------------
# loader


class ShardedTokenLoader:
    """(batch_size, seq_len + 1) token windows for rank `rank` of `world_size`, exact and resumable.

    The split is cut into windows of seq_len + 1 tokens at a stride of seq_len (a window's last
    token is the next window's first input), so every token is an input exactly once per epoch;
    windows run across shard boundaries. Only the last (1 to seq_len) tokens of an epoch, which
    cannot fill a window, are left out. Train order: shards in a seeded random order, then the
    windows starting in each shard in a seeded random order, both redrawn every epoch; val keeps
    file order. All ranks compute the same global order; each `next_batch()` consumes the next
    batch_size * world_size windows of it, rank r taking the r-th contiguous slice. The position
    is counted in global windows, so a run may resume on another world size and still see exactly
    the tokens an uninterrupted run would have seen.

    Each shard is checked in full (shard_problem) when a batch first reaches it: the shards the whole global batch
    reaches, so that every rank refuses a damaged shard at the same step.
    """

    def __init__(self, data_dir, split="train", batch_size=8, seq_len=1024, rank=0, world_size=1, seed=1337,
                 vocab_size=None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        if vocab_size is None:
            from gpt2repro.tokenizer import VOCAB_SIZE

            vocab_size = VOCAB_SIZE
        self.data_dir, self.vocab_size, self.checked = Path(data_dir), vocab_size, set()
        self.entries, self.shards = open_split(self.data_dir, split)
        entries = self.entries
        self.lengths = np.array([len(s) for s in self.shards], dtype=np.int64)
        self.split, self.batch_size, self.seq_len = split, batch_size, seq_len
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.shuffle = split == "train"
        self.windows_per_epoch = (int(self.lengths.sum()) - 1) // seq_len
        if self.windows_per_epoch < 1:
            raise ShardError(
                f"{self.data_dir}: the {split} split has {int(self.lengths.sum())} tokens, "
                f"fewer than one window of seq_len + 1 = {seq_len + 1}"
            )
        # Identifies the data a saved position refers to.
        # llm.c shards have no sha256: their names (e.g. edu_fineweb_ or fineweb_) and sizes tell them apart.
        checksums = "".join(f"{s.get('sha256') or s['file']}:{s['tokens']}," for s in entries)
        self.data_id = hashlib.sha256(checksums.encode()).hexdigest()[:16]
        self.position = 0  # windows of the global order consumed so far, by all ranks together
        self._layout_cache = (None, None)  # (epoch, layout): batches walk one epoch at a time
        self._permutation_cache = (None, None)  # ((epoch, slot), permutation)
        self._ahead = (None, None)  # ((position, device), batch): the batch next_batch(device) prepared

    def _epoch_layout(self, epoch: int):
        """Shard order of an epoch, where each shard starts in the epoch's token stream, and the
        index of the first window that starts in each shard."""
        if self._layout_cache[0] != epoch:
            n = len(self.shards)
            order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            token_starts = np.concatenate([[0], np.cumsum(self.lengths[order])])
            first_window = np.minimum(-(-token_starts // self.seq_len), self.windows_per_epoch)
            self._layout_cache = (epoch, (order, token_starts, first_window))
        return self._layout_cache[1]

    def _window_permutation(self, epoch: int, slot: int, count: int) -> np.ndarray:
        if self._permutation_cache[0] != (epoch, slot):
            permutation = np.random.default_rng([self.seed, epoch, slot]).permutation(count)
            self._permutation_cache = ((epoch, slot), permutation)
        return self._permutation_cache[1]

    def _window(self, index: int) -> np.ndarray:
        """Tokens of the `index`-th window of the global order (index counts across epochs)."""
        epoch, window = divmod(index, self.windows_per_epoch)  # window: its place in the epoch's stream
        order, token_starts, first_window = self._epoch_layout(epoch)
        if self.shuffle:  # the index-th window of the epoch is a shuffled one of the same shard's windows
            slot = int(np.searchsorted(first_window, window, side="right")) - 1
            count = int(first_window[slot + 1] - first_window[slot])
            shuffled = self._window_permutation(epoch, slot, count)
            window = int(first_window[slot] + shuffled[window - first_window[slot]])
        start = window * self.seq_len
        slot = int(np.searchsorted(token_starts, start, side="right")) - 1
        offset, pieces, needed = start - int(token_starts[slot]), [], self.seq_len + 1
        while needed:  # a window may run across one or more shard boundaries
            piece = self.shards[order[slot]][offset : offset + needed]
            pieces.append(piece)
            needed -= len(piece)
            slot, offset = slot + 1, 0
        return np.concatenate(pieces) if len(pieces) > 1 else pieces[0]

    def _shards_reached(self, first: int, last: int) -> set[int]:
        """The shards that global windows `first`..`last` read from: those the windows start in (shuffled within
        each shard, so any of theirs), and those the last of them runs into."""
        reached = set()
        for epoch in range(first // self.windows_per_epoch, last // self.windows_per_epoch + 1):
            order, token_starts, first_window = self._epoch_layout(epoch)
            lo = max(first - epoch * self.windows_per_epoch, 0)
            hi = min(last - epoch * self.windows_per_epoch, self.windows_per_epoch - 1)
            slot_lo, slot_hi = np.searchsorted(first_window, [lo, hi], side="right") - 1
            end = min(int(first_window[slot_hi + 1]) * self.seq_len, int(token_starts[-1]) - 1)  # the last read token
            slot_end = int(np.searchsorted(token_starts, end, side="right")) - 1
            reached.update(int(i) for i in order[slot_lo : max(slot_hi, slot_end) + 1])
        return reached

    def _check_reached(self, position: int) -> None:
        """Check in full each shard the global batch at `position` reaches for the first time."""
        for shard in sorted(self._shards_reached(position, position + self.batch_size * self.world_size - 1)
                            - self.checked):
            entry = self.entries[shard]
            problem = shard_problem(self.data_dir / entry["file"], entry, self.vocab_size, full=True)
            if problem:
                raise damaged_shard(self.data_dir, load_manifest(self.data_dir), entry["file"], problem)
            self.checked.add(shard)

    def next_batch(self, device=None):
        """The next (batch_size, seq_len + 1) LongTensor of this rank: inputs b[:, :-1], targets b[:, 1:].

        Given a device, the batch is on it, and the one after it is read at once and its copy started (from pinned
        memory off the CPU, so that it overlaps the step the device is running, as nanoGPT does). The position, and
        so the order and a resume, count only the batches handed out."""
        key, batch = self._ahead
        if key != (self.position, str(device)):
            batch = self._read(self.position, device)
        self.position += self.batch_size * self.world_size
        self._ahead = ((self.position, str(device)), self._read(self.position, device)) if device else (None, None)
        return batch

    def rewind(self, position: int, batch_size: int) -> None:
        """Go back to `position` (global windows) with micro-batches of `batch_size`, dropping the read-ahead: a step
        that ran out of memory is taken again in smaller micro-batches (micro_batch.py)."""
        self.position, self.batch_size, self._ahead = position, batch_size, (None, None)

    def _read(self, position: int, device=None):
        # Imported here so prepare_data (and its worker processes) start without torch.
        import torch

        self._check_reached(position)
        first = position + self.rank * self.batch_size
        batch = torch.from_numpy(np.array([self._window(first + i) for i in range(self.batch_size)], dtype=np.int64))
        if device is None or torch.device(device).type == "cpu":
            return batch
        return batch.pin_memory().to(device, non_blocking=True)  # non_blocking copies only from pinned memory

    def reset(self) -> None:
        """Back to the first window."""
        self.position = 0

    def state_dict(self) -> dict:
        return {
            "split": self.split,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "data_id": self.data_id,
            "position_windows": self.position,
            "position_tokens": self.position * self.seq_len,
            "epoch": self.position // self.windows_per_epoch,
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("split", "seed", "seq_len", "data_id"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"cannot resume: the saved loader state has {key}={state[key]!r}, this loader "
                    f"{getattr(self, key)!r}; the saved position would point at other tokens"
                )
        self.position = int(state["position_windows"])
