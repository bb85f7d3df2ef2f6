"""The shard format, the manifest and ShardedTokenLoader: exact coverage, shared order, resume."""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpt2repro.token_shards import (  # noqa: E402
    ShardedTokenLoader,
    ShardError,
    check_tokenizer,
    load_manifest,
    read_shard,
    write_manifest,
    write_shard,
)
from gpt2repro.tokenizer import tokenizer_fingerprint  # noqa: E402

T = 16  # seq_len
B = 4  # batch_size


def make_dataset(data_dir: Path, lengths: dict[str, list[int]], tokenizer: str | None = None) -> dict:
    """Shards whose tokens are their positions in the file-order stream (all distinct, < 2**16)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    shards, position = [], 0
    for split in ("val", "train"):
        for n in lengths.get(split, []):
            file = f"synthetic_{split}_{len(shards):06d}.bin"
            sha = write_shard(data_dir / file, np.arange(position, position + n))
            shards.append({"file": file, "split": split, "tokens": n, "documents": 1, "sha256": sha, "end": [0, 0]})
            position += n
    manifest = {
        "format_version": 1,
        "name": "synthetic",
        "source": {"type": "test"},
        "tokenizer": tokenizer or tokenizer_fingerprint(),
        "settings": {},
        "shards": shards,
        "splits": {},
        "complete": True,
    }
    write_manifest(data_dir, manifest)
    return manifest


TRAIN = [203, 57, 150, 3, 96]  # uneven, one shard shorter than a window


@pytest.fixture
def data_dir(tmp_path):
    """Here, instead of conftest's Shakespeare: shards whose tokens count positions, so every window is traceable."""
    make_dataset(tmp_path / "data", {"val": [40, 35], "train": TRAIN})
    return tmp_path / "data"


def global_windows(data_dir, world_size, steps, split="train", state=None):
    """Run all ranks for `steps` batches; the rows of each step, rank 0's first: the global order."""
    loaders = [ShardedTokenLoader(data_dir, split, B, T, rank, world_size, seed=7) for rank in range(world_size)]
    if state is not None:
        for loader in loaders:
            loader.load_state_dict(state)
    rows = []
    for _ in range(steps):
        batches = [loader.next_batch() for loader in loaders]
        assert all(b.shape == (B, T + 1) and b.dtype.is_floating_point is False for b in batches)
        rows += [row for batch in batches for row in batch.numpy()]
    return np.array(rows), loaders


def shard_bounds(lengths, first):
    edges = first + np.concatenate([[0], np.cumsum(lengths)])
    return set(edges[1:] - 1), set(edges[:-1])  # last tokens, first tokens of shards


def test_shard_roundtrip_and_checksum(tmp_path):
    tokens = np.array([0, 1, 50256, 65535], dtype=np.uint16)
    sha = write_shard(tmp_path / "a.bin", tokens)
    assert np.array_equal(read_shard(tmp_path / "a.bin"), tokens)
    assert sha == hashlib.sha256((tmp_path / "a.bin").read_bytes()).hexdigest()
    assert not list(tmp_path.glob("*.tmp"))


def test_truncated_and_foreign_shards_are_named(tmp_path):
    write_shard(tmp_path / "a.bin", np.arange(100))
    data = (tmp_path / "a.bin").read_bytes()
    (tmp_path / "a.bin").write_bytes(data[:-2])
    with pytest.raises(ShardError, match=r"a\.bin: truncated"):
        read_shard(tmp_path / "a.bin")
    (tmp_path / "b.bin").write_bytes(b"\0" * 2048)
    with pytest.raises(ShardError, match=r"b\.bin: not a token shard"):
        read_shard(tmp_path / "b.bin")


def test_manifest_errors(tmp_path, data_dir):
    with pytest.raises(ShardError, match="no such data directory"):
        load_manifest(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match="no manifest.json"):
        load_manifest(tmp_path / "empty")
    check_tokenizer(data_dir)  # the project's tokenizer: accepted
    make_dataset(tmp_path / "other", {"train": [100]}, tokenizer="llama-bpe:123")
    with pytest.raises(ShardError, match=f"llama-bpe:123.*{tokenizer_fingerprint()}"):
        check_tokenizer(tmp_path / "other")
    with pytest.raises(ShardError, match="llama-bpe:123"):
        ShardedTokenLoader(tmp_path / "other")


def test_loader_rejects_damaged_or_unfinished_data(data_dir):
    shard = data_dir / "synthetic_train_000004.bin"
    shard.write_bytes(shard.read_bytes()[:-4])
    with pytest.raises(ShardError, match="synthetic_train_000004.bin: truncated"):
        ShardedTokenLoader(data_dir, seq_len=T)
    manifest = json.loads((data_dir / "manifest.json").read_text())
    write_manifest(data_dir, dict(manifest, complete=False))
    with pytest.raises(ShardError, match="did not finish"):
        ShardedTokenLoader(data_dir, seq_len=T)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_every_token_once_per_epoch(data_dir, world_size):
    n = sum(TRAIN)
    first = 75  # train tokens follow the 75 val tokens in file order
    windows_per_epoch = (n - 1) // T
    steps = -(-2 * windows_per_epoch // (B * world_size))
    rows, loaders = global_windows(data_dir, world_size, steps)
    assert loaders[0].windows_per_epoch == windows_per_epoch
    last_tokens, first_tokens = shard_bounds(TRAIN, first)
    orders = []
    for epoch in range(2):
        epoch_rows = rows[epoch * windows_per_epoch : (epoch + 1) * windows_per_epoch]
        inputs = epoch_rows[:, :-1].ravel()
        assert len(np.unique(inputs)) == len(inputs)  # no token twice, so no overlap between ranks
        left_out = np.setdiff1d(np.arange(first, first + n), inputs)
        assert len(left_out) == n - windows_per_epoch * T <= T  # only the epoch's tail, less than a window
        for window in epoch_rows:  # contiguous, or crossing from a shard's end to another's start
            for a, b in zip(window[:-1], window[1:]):
                assert b == a + 1 or (a in last_tokens and b in first_tokens)
        orders.append(epoch_rows[:, 0])
    assert not np.array_equal(orders[0], orders[1])  # reshuffled every epoch
    assert not np.all(np.diff(orders[0]) > 0)  # shuffled at all


def test_all_world_sizes_share_one_global_order(data_dir):
    reference, _ = global_windows(data_dir, 1, 12)
    for world_size in (2, 3):
        rows, _ = global_windows(data_dir, world_size, 12 // world_size)
        assert np.array_equal(rows, reference)
    other_seed = ShardedTokenLoader(data_dir, "train", B, T, seed=8).next_batch().numpy()
    assert not np.array_equal(other_seed, reference[:B])


def test_val_split_is_read_in_file_order(data_dir):
    loader = ShardedTokenLoader(data_dir, "val", batch_size=2, seq_len=T)
    windows = np.concatenate([loader.next_batch().numpy() for _ in range(2)])
    assert loader.windows_per_epoch == (75 - 1) // T
    assert np.array_equal(windows[:, :-1].ravel(), np.arange(4 * T))  # across the val shard boundary
    assert np.array_equal(windows[:, -1], np.arange(1, 5) * T)  # each target follows its input
    assert np.array_equal(loader.next_batch().numpy()[0], np.arange(T + 1))  # next epoch, no gap
    loader.reset()
    assert np.array_equal(loader.next_batch().numpy()[0], np.arange(T + 1))


def test_resume_continues_the_exact_sequence_on_another_world_size(data_dir):
    uninterrupted, _ = global_windows(data_dir, 1, 30)
    before, loaders = global_windows(data_dir, 2, 5)  # 5 steps of 2 ranks: 40 windows
    state = json.loads(json.dumps(loaders[1].state_dict()))  # what a checkpoint stores
    assert state["position_windows"] == 40 and state["position_tokens"] == 40 * T
    after, _ = global_windows(data_dir, 3, 6, state=state)
    assert np.array_equal(np.concatenate([before, after]), uninterrupted[: 40 + 72])
    assert state["epoch"] == 40 // loaders[0].windows_per_epoch


def test_resume_refuses_another_layout(data_dir):
    state = ShardedTokenLoader(data_dir, seq_len=T, seed=7).state_dict()
    for loader in (
        ShardedTokenLoader(data_dir, seq_len=2 * T, seed=7),
        ShardedTokenLoader(data_dir, seq_len=T, seed=8),
    ):
        with pytest.raises(ValueError, match="cannot resume"):
            loader.load_state_dict(state)


# ---- llm.c / modded-nanogpt shards: no manifest ----


def make_llmc_dir(data_dir: Path, names_and_lengths: dict[str, int]) -> dict[str, np.ndarray]:
    """Shards as llm.c writes them (no manifest), each holding distinct tokens; returns them by name."""
    data_dir.mkdir(parents=True, exist_ok=True)
    tokens, position = {}, 0
    for name, n in names_and_lengths.items():
        tokens[name] = np.arange(position, position + n)
        write_shard(data_dir / name, tokens[name])
        position += n
    return tokens


@pytest.mark.parametrize("dataset", ["fineweb", "edu_fineweb"])
def test_llmc_shards_without_a_manifest_train_us(tmp_path, dataset):
    # written out of name order: the split and the order come from the names, not from the directory
    shards = make_llmc_dir(
        tmp_path / "fineweb10B",
        {f"{dataset}_train_000002.bin": 90, f"{dataset}_val_000000.bin": 50, f"{dataset}_train_000001.bin": 70},
    )
    manifest = load_manifest(tmp_path / "fineweb10B")
    assert [(s["file"], s["split"], s["tokens"]) for s in manifest["shards"]] == [
        (f"{dataset}_val_000000.bin", "val", 50),
        (f"{dataset}_train_000001.bin", "train", 70),
        (f"{dataset}_train_000002.bin", "train", 90),
    ]
    assert manifest["splits"]["val"]["tokens"] == 50 and manifest["splits"]["train"]["tokens"] == 160
    assert manifest["source"] == {"type": "llm.c shards"} and manifest["complete"]
    check_tokenizer(tmp_path / "fineweb10B")  # llm.c's GPT-2 shards: our tokenizer

    val = ShardedTokenLoader(tmp_path / "fineweb10B", "val", batch_size=3, seq_len=T)
    val_tokens = shards[f"{dataset}_val_000000.bin"]
    assert np.array_equal(val.next_batch().numpy(), [val_tokens[i * T : i * T + T + 1] for i in range(3)])
    train_tokens = np.concatenate([shards[f"{dataset}_train_00000{i}.bin"] for i in (1, 2)])
    train = ShardedTokenLoader(tmp_path / "fineweb10B", "train", batch_size=1, seq_len=T, seed=7)
    assert train.windows_per_epoch == (160 - 1) // T
    inputs = np.concatenate([train.next_batch().numpy()[0, :-1] for _ in range(train.windows_per_epoch)])
    # every train token but the epoch's tail is an input once; no val token is
    assert len(np.unique(inputs)) == len(inputs) == train.windows_per_epoch * T
    assert np.isin(inputs, train_tokens).all()


def test_llmc_starter_pack_names_and_data_identity(tmp_path):
    make_llmc_dir(tmp_path / "shakespeare", {"tiny_shakespeare_val.bin": 40, "tiny_shakespeare_train.bin": 200})
    assert [s["split"] for s in load_manifest(tmp_path / "shakespeare")["shards"]] == ["val", "train"]
    # same token counts, other files: a saved position must not resume on them
    make_llmc_dir(tmp_path / "stories", {"TinyStories_val.bin": 40, "TinyStories_train.bin": 200})
    state = ShardedTokenLoader(tmp_path / "shakespeare", seq_len=T).state_dict()
    with pytest.raises(ValueError, match="data_id"):
        ShardedTokenLoader(tmp_path / "stories", seq_len=T).load_state_dict(state)


@pytest.mark.parametrize(
    "names, message",
    [
        (["fineweb_train_000001.bin", "fineweb_train_000002.bin"], r"without a val split \(no \*_val_\*\.bin"),
        (["fineweb_val_000000.bin"], r"without a train split \(no \*_train_\*\.bin"),
        (["fineweb_val_000000.bin", "fineweb_train_000001.bin", "tokens.bin"], "tokens.bin is not named like"),
        (["fineweb_val_000000.bin", "edu_fineweb_train_000001.bin"], r"several datasets \(edu_fineweb, fineweb\)"),
    ],
)
def test_llmc_directories_that_are_not_a_dataset_get_one_line(tmp_path, names, message):
    make_llmc_dir(tmp_path, {name: 100 for name in names})
    with pytest.raises(ShardError, match=message) as error:
        ShardedTokenLoader(tmp_path, seq_len=T)
    assert "\n" not in str(error.value)


def test_every_llmc_shard_header_is_checked(tmp_path):
    make_llmc_dir(tmp_path, {"fineweb_val_000000.bin": 100, "fineweb_train_000001.bin": 100})
    (tmp_path / "fineweb_train_000002.bin").write_bytes(b"\0" * 2048)  # never read by a val loader
    with pytest.raises(ShardError, match="fineweb_train_000002.bin: not a token shard"):
        load_manifest(tmp_path)


def test_foreign_ids_outside_the_startup_sample_stop_every_rank_when_a_batch_first_reaches_their_shard(
    data_dir, monkeypatch
):
    import gpt2repro.token_shards as token_shards

    shard = data_dir / "synthetic_train_000002.bin"  # 203 tokens
    tokens = read_shard(shard).copy()
    tokens[150] = 50300  # a padding row of the model's embedding: no GPT-2 token
    shard.write_bytes(b"")
    write_shard(shard, tokens)
    monkeypatch.setattr(token_shards, "ID_SAMPLE_BLOCK", 8)  # a sample that misses position 150
    token_shards.check_shards(data_dir)  # the startup sample passes...
    entry = next(e for e in load_manifest(data_dir)["shards"] if e["file"] == shard.name)
    full = token_shards.shard_problem(shard, entry, 50257, full=True)
    assert full.startswith("token id 50300 at token 150 is outside the tokenizer's vocabulary (0..50256")
    # ...the loader reads the whole shard first, and every rank refuses it at the same batch: the first that
    # reaches the shard on any rank
    loaders = [ShardedTokenLoader(data_dir, "train", 2, T, rank, 2, seed=7) for rank in range(2)]
    failed_at = []
    for loader in loaders:
        for batch in range(100):
            try:
                loader.next_batch()
            except ShardError as e:
                assert "synthetic_train_000002.bin: token id 50300" in str(e) and "\n" not in str(e)
                failed_at.append(batch)
                break
    assert len(failed_at) == 2 and failed_at[0] == failed_at[1]


def test_a_shard_overwritten_after_preparation_is_refused_when_read(data_dir):
    shard = data_dir / "synthetic_train_000002.bin"
    tokens = read_shard(shard)[::-1].copy()  # the same size and ids, other contents
    write_shard(shard, tokens)
    loader = ShardedTokenLoader(data_dir, "train", 4, T, seed=7)
    with pytest.raises(ShardError, match=r"synthetic_train_000002.bin: its contents changed since preparation"):
        for _ in range(100):
            loader.next_batch()


def test_the_rewrite_command_prepares_the_same_source_into_the_same_directory(tmp_path):
    from gpt2repro.token_shards import rewrite_command

    settings = {"val_tokens": 10_000_000, "shard_tokens": 100_000_000}
    hub = {"name": "fineweb-edu-10b", "settings": settings,
           "source": {"type": "hub", "dataset": "HuggingFaceFW/fineweb-edu", "name": "sample-10BT", "split": "train",
                      "text_column": "text", "part": None}}
    assert rewrite_command(tmp_path, hub, "x.bin") == (
        f"python prepare_data.py fineweb-edu-10b --val-split-tokens 10000000 --shard-tokens 100000000 "
        f"--out {tmp_path} --overwrite"
    )
    hub["name"] = "fineweb-edu-sample-10BT"  # not a preset: named after the dataset
    assert rewrite_command(tmp_path, hub, "x.bin").startswith(
        "python prepare_data.py --dataset HuggingFaceFW/fineweb-edu --name sample-10BT --val-split-tokens")
    files = {"name": "corpus", "label": "docs/a.txt docs/b.txt", "settings": settings,
             "source": {"type": "files", "text_column": "body", "part": [1, 4]}}
    assert rewrite_command(tmp_path, files, "x.bin") == (
        f"python prepare_data.py docs/a.txt docs/b.txt --text-column body --num-shards 4 --shard-index 1 "
        f"--val-split-tokens 10000000 --shard-tokens 100000000 --out {tmp_path} --overwrite"
    )
    assert rewrite_command(tmp_path, {"source": {"type": "llm.c shards"}}, "x.bin") is None
    downloaded = {"settings": {"val_tokens": 2048, "shard_tokens": None},
                  "source": {"type": "hub tokens", "repo": "someone/tokens", "revision": "abc123"}}
    assert rewrite_command(tmp_path, downloaded, "x.bin") == (
        f"rm {tmp_path / 'manifest.json'} && python prepare_data.py --from-hub someone/tokens --revision abc123 "
        f"--val-split-tokens 2048 --out {tmp_path} --overwrite"
    )
