"""Token shards on disk: the llm.c / modded-nanogpt `.bin` format, written atomically, read validated.

A shard is a header of 256 int32 (magic 20240520, version 1, token count) followed by the tokens
as uint16. Shards written here train llm.c and modded-nanogpt, and theirs train us.
"""

import os
from pathlib import Path

import numpy as np

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4


class ShardError(ValueError):
    """A shard that cannot be trusted: the message names the file and what to do."""


def write_shard(path: str | Path, tokens) -> None:
    """Write `tokens` as a shard at `path` via a temp file + rename: a crash never leaves half a shard."""
    path = Path(path)
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**16):
        raise ShardError(f"{path}: token ids must fit in uint16 (0..65535); this vocabulary cannot be stored")
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, tokens.size)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(np.uint16, copy=False).tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_shard_header(path: str | Path) -> int:
    """Validate a shard's header and size; return its token count."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            header = np.frombuffer(f.read(HEADER_BYTES), dtype=np.int32)
    except OSError as e:
        raise ShardError(f"{path}: cannot read shard ({e.strerror})") from None
    if header.size < 3 or header[0] != SHARD_MAGIC:
        raise ShardError(f"{path}: not a token shard (bad magic number); re-create it with prepare_data.py")
    if header[1] != SHARD_VERSION:
        raise ShardError(f"{path}: shard version {header[1]} is not supported (expected {SHARD_VERSION})")
    n_tokens = int(header[2])
    expected = HEADER_BYTES + 2 * n_tokens
    if size != expected:
        raise ShardError(
            f"{path}: truncated or corrupt shard ({size} bytes, header says {expected}); "
            "delete it and rerun prepare_data.py to re-create it"
        )
    return n_tokens


def read_shard(path: str | Path) -> np.ndarray:
    """The shard's tokens as a read-only uint16 memmap (validated first)."""
    n_tokens = read_shard_header(path)
    return np.memmap(path, dtype=np.uint16, mode="r", offset=HEADER_BYTES, shape=(n_tokens,))
