"""Where documents come from: local .txt/.jsonl/.json/.parquet files, or a streamed Hub dataset.

A .txt file is one document; a .jsonl/.json/.parquet row is one document (its `column` field).
A Source yields the document texts in the same order on every run, which is what lets
prepare_data.py resume by skipping the documents it has already written. Empty (or whitespace-only)
documents are skipped and counted: each would only add a lone <|endoftext|>.

The data presets live here too: the named corpora (DATA_PRESETS, and the shipped tiny-Shakespeare) and the
directory each is prepared into (data_dir_for), where prepare_data.py writes and train.py's presets read.
"""

import glob
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gpt2repro.errors import UserError, first_line

# Data presets, named like every preset in this project (lowercase; matched in any case): name -> (Hub
# dataset, configuration). Each is written to data/<name> (data_dir_for).
DATA_PRESETS = {
    "fineweb-edu-10b": ("HuggingFaceFW/fineweb-edu", "sample-10BT"),
    "fineweb-edu-100b": ("HuggingFaceFW/fineweb-edu", "sample-100BT"),
    "fineweb-10b": ("HuggingFaceFW/fineweb", "sample-10BT"),  # llm.c's and modded-nanogpt's FineWeb val target
    "fineweb-100b": ("HuggingFaceFW/fineweb", "sample-100BT"),
}
# ... and the Hub dataset repos holding their GPT-2 tokens (modded-nanogpt's, in llm.c shards), for --from-hub
HUB_TOKENS = {
    "fineweb-edu-10b": "kjj0/finewebedu10B-gpt2",
    "fineweb-10b": "kjj0/fineweb10B-gpt2",
    "fineweb-100b": "kjj0/fineweb100B-gpt2",
}
DEFAULT_CORPUS = Path(__file__).resolve().parent / "assets" / "tinyshakespeare.txt"  # prepare_data.py's default
FILE_TYPES = (".txt", ".jsonl", ".json", ".parquet")
PARQUET_TEXT_TYPES = ("string", "large_string", "string_view", "binary", "large_binary", "binary_view")


class SourceError(UserError, ValueError):
    """Input that cannot be read as documents; the message says where and what to do."""


@dataclass
class Source:
    name: str  # default output directory name and shard file prefix
    label: str  # for messages
    description: dict  # recorded in the manifest; a resumed run must match it
    size_bytes: int | None  # of local files; None for a stream
    read: Callable[[Callable[[str], None]], Iterator[tuple[str, str]]]  # read(not_utf8): (where, text) per document
    strict: bool = False  # refuse non-UTF-8 input instead of skipping it
    skipped: int = 0  # documents with non-UTF-8 bytes
    first_skipped: str = ""
    empty: int = 0  # empty or whitespace-only documents
    first_empty: str = ""

    def documents(self) -> Iterator[str]:
        """The document texts, in the same order on every run; non-UTF-8 and empty ones skipped and counted."""
        for where, text in self.read(self.not_utf8):
            if text and not text.isspace():  # isspace() stops at the first letter: no copy of the text
                yield text
            else:
                self.empty += 1
                self.first_empty = self.first_empty or where

    def not_utf8(self, where: str) -> None:
        if self.strict:
            raise SourceError(f"{where}: not valid UTF-8; fix the input, or drop --strict to skip such documents")
        self.skipped += 1
        self.first_skipped = self.first_skipped or where


def _require_column(columns, column: str, where: str) -> None:
    if column not in columns:
        listed = ", ".join(map(str, columns)) or "none"
        raise SourceError(f"{where}: no column '{column}' (columns: {listed}); pass --text-column NAME")


def _text(row, column: str, where: str) -> str:
    if not isinstance(row, dict):
        raise SourceError(f"{where}: expected an object with a '{column}' field, found {type(row).__name__}")
    _require_column(row, column, where)
    if not isinstance(row[column], str):
        raise SourceError(f"{where}: column '{column}' holds {type(row[column]).__name__}, not text")
    return row[column]


def _decode(raw: bytes, where: str, not_utf8) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        not_utf8(f"{where} (byte {e.start})")
        return None


def _json_rows(path: Path, not_utf8) -> Iterator[tuple[str, object]]:
    """(location, row) of a .jsonl file, or of a .json file holding JSON Lines or an array."""
    with open(path, "rb") as f:
        is_array = path.suffix == ".json" and f.read(1024).lstrip().startswith(b"[")
        f.seek(0)
        if is_array:
            text = _decode(f.read(), str(path), not_utf8)
            try:
                rows = json.loads(text or "[]")
            except json.JSONDecodeError as e:
                raise SourceError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
            yield from ((f"{path} item {i}", row) for i, row in enumerate(rows, 1))
            return
        for line_number, line in enumerate(f, 1):
            text = _decode(line, f"{path}:{line_number}", not_utf8)
            if text and text.strip():
                try:
                    yield f"{path}:{line_number}", json.loads(text)
                except ValueError:
                    raise SourceError(f"{path}:{line_number}: not valid JSON") from None


def _check_parquet(path: Path, column: str) -> None:
    """Refuse a damaged Parquet file, or one without a text column, from its metadata alone."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as e:
        reason = first_line(e)
        raise SourceError(f"{path}: not a readable Parquet file ({reason}); download or export it again") from None
    _require_column(schema.names, column, str(path))
    kind = schema.field(column).type
    value_kind = kind.value_type if pa.types.is_dictionary(kind) else kind
    if str(value_kind) not in PARQUET_TEXT_TYPES:
        raise SourceError(f"{path}: column '{column}' holds {kind}, not text; pass --text-column NAME")


def _parquet_documents(path: Path, column: str, not_utf8) -> Iterator[tuple[str, str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(columns=[column], batch_size=4096):
            for value in batch.column(0).to_pylist():
                row += 1
                if isinstance(value, bytes):  # a binary column: decode it as the text files are
                    value = _decode(value, f"{path} row {row}", not_utf8)
                    if value is None:
                        continue
                yield f"{path} row {row}", _text({column: value}, column, f"{path} row {row}")
    except (pa.ArrowException, OSError) as e:  # metadata fine (checked up front), data pages damaged
        reason = first_line(e)
        raise SourceError(f"{path}: damaged Parquet data after row {row} ({reason}); get the file again") from None


def _file_documents(path: Path, column: str, not_utf8) -> Iterator[tuple[str, str]]:
    if path.suffix == ".txt":
        text = _decode(path.read_bytes(), str(path), not_utf8)
        if text is not None:
            yield str(path), text
    elif path.suffix == ".parquet":
        yield from _parquet_documents(path, column, not_utf8)
    else:
        for where, row in _json_rows(path, not_utf8):
            yield where, _text(row, column, where)


def _expand(inputs: list[str]) -> list[Path]:
    files = []
    for pattern in inputs:
        path = Path(pattern)
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.suffix in FILE_TYPES and p.is_file())
        elif path.is_file():
            if path.suffix not in FILE_TYPES:
                raise SourceError(f"{path}: unsupported file type; use {', '.join(FILE_TYPES)}")
            matches = [path]
        else:
            matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).suffix in FILE_TYPES)
        if not matches:
            raise SourceError(f"{pattern}: no such file, or no {'/'.join(FILE_TYPES)} files in it")
        files += matches
    return files


def data_dir_for(name: str) -> Path:
    """Where a corpus called `name` (a data preset, or a file's stem) is written by default."""
    return Path("data") / re.sub(r"[^A-Za-z0-9._-]+", "-", name)


DEFAULT_DATA_DIR = data_dir_for(DEFAULT_CORPUS.stem)  # the tiny preset's data: prepared on first use


def file_source(inputs: list[str], column: str, part: tuple[int, int] | None) -> Source:
    """Local files; with `part` = (i, K), the i-th of K contiguous slices of the sorted file list."""
    files = _expand(inputs)
    if part and len(files) < part[1]:
        raise SourceError(f"{len(files)} input files cannot be split into --num-shards {part[1]} parts")
    listing = "".join(f"{f.resolve()}\t{f.stat().st_size}\n" for f in files)
    size = sum(f.stat().st_size for f in files)
    name = files[0].stem if len(files) == 1 else Path(os.path.commonpath([f.resolve().parent for f in files])).name
    mine = files[part[0] * len(files) // part[1] : (part[0] + 1) * len(files) // part[1]] if part else files
    for path in mine:  # from their metadata: a damaged file fails before any shard is written
        if path.suffix == ".parquet":
            _check_parquet(path, column)
    return Source(
        name=name,
        label=" ".join(inputs),
        description={
            "type": "files",  # identified by content, not by how the paths were spelled
            "files": len(files),
            "bytes": size,
            "fingerprint": hashlib.sha256(listing.encode()).hexdigest()[:16],
            "text_column": column,
            "part": list(part) if part else None,
        },
        size_bytes=size,
        read=lambda not_utf8: (document for path in mine for document in _file_documents(path, column, not_utf8)),
    )


def hub_source(dataset: str, config: str | None, split: str, column: str, part: tuple[int, int] | None) -> Source:
    """A streamed Hub dataset; with `part` = (i, K), the i-th of K contiguous slices of its files."""

    def read(not_utf8) -> Iterator[tuple[str, str]]:  # the Hub hands out decoded text: nothing to skip
        from datasets import load_dataset

        try:
            stream = load_dataset(dataset, config, split=split, streaming=True)
        except Exception as e:  # offline, unknown id, no such config/split: one message for all
            raise SourceError(
                f"cannot open the Hugging Face dataset '{dataset}' ({first_line(e)}); without network, pass local "
                "files instead, e.g. python prepare_data.py path/to/*.parquet --text-column text"
            ) from None
        if stream.column_names is not None:  # known up front for most datasets: check, and decode only the text
            _require_column(stream.column_names, column, dataset)
            stream = stream.select_columns([column])
        if part:
            if stream.num_shards < part[1]:
                raise SourceError(f"{dataset} has {stream.num_shards} files, fewer than --num-shards {part[1]}")
            stream = stream.shard(num_shards=part[1], index=part[0], contiguous=True)
        for row_number, row in enumerate(stream):
            yield f"{dataset} row {row_number}", _text(row, column, f"{dataset} row {row_number}")

    return Source(
        name=dataset.rstrip("/").split("/")[-1] + (f"-{config}" if config else ""),
        label=f"{dataset} ({config or 'default'}, {split})",
        description={
            "type": "hub",
            "dataset": dataset,
            "name": config,
            "split": split,
            "text_column": column,
            "part": list(part) if part else None,
        },
        size_bytes=None,
        read=read,
    )
