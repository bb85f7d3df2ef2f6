"""prepare_data.py: the exact token stream, byte-identical shards, resume, parts, and bad input."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import prepare_data  # noqa: E402
from gpt2repro.token_shards import ShardedTokenLoader, ShardError, load_manifest, read_shard  # noqa: E402
from gpt2repro.tokenizer import EOT_ID, get_encoding  # noqa: E402

SHAKESPEARE = (REPO / "gpt2repro" / "assets" / "tinyshakespeare.txt").read_text()
OFFLINE = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A directory of .txt, .jsonl and .json documents of uneven lengths; returns (dir, texts in order)."""
    root = tmp_path_factory.mktemp("corpus")
    cuts = np.cumsum(np.random.default_rng(0).integers(50, 6000, size=40))
    texts = [SHAKESPEARE[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
    texts[3] = "a literal <|endoftext|> stays text; ünïcödé ✓ 中文\n" + texts[3]
    (root / "a.txt").write_text(texts[0])
    with open(root / "b.jsonl", "w") as f:
        f.writelines(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts[1:25]))
    (root / "c.txt").write_text(texts[25])
    (root / "d.json").write_text(json.dumps([{"text": t} for t in texts[26:]]))
    return root, texts


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def table(path: Path, **columns) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def truncated(path: Path) -> Path:
    data = path.read_bytes()
    return write(path, data[: len(data) // 2])


def expected_stream(texts):
    encoding = get_encoding()
    return np.concatenate([[EOT_ID] + encoding.encode_ordinary(t) for t in texts]).astype(np.uint16)


def shard_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.bin"))}


def stream(out: Path) -> np.ndarray:
    return np.concatenate([read_shard(out / s["file"]) for s in load_manifest(out)["shards"]])


def prepare(*argv):
    """prepare_data's command line, in this process (so that tests can patch it)."""
    prepare_data.main([str(a) for a in argv])


def cli(*argv, cwd=REPO):
    """prepare_data's command line in a subprocess: exit code and output as a user sees them."""
    command = [sys.executable, str(REPO / "prepare_data.py"), *map(str, argv)]
    return subprocess.run(command, capture_output=True, text=True, env=OFFLINE, cwd=cwd, timeout=120)


@pytest.fixture
def small_batches(monkeypatch):
    monkeypatch.setattr(prepare_data, "BATCH_CHARS", 20_000)  # many batches, so many tasks in flight


SETTINGS = ["--shard-tokens", 3000, "--val-split-tokens", 7000]  # 3 val shards (3000, 3000, 1000), then train


def test_token_stream_equals_tiktoken_and_manifest_is_exact(corpus, tmp_path):
    root, texts = corpus
    prepare(root, "--out", tmp_path / "out", "--num-proc", 1, *SETTINGS)
    manifest = load_manifest(tmp_path / "out")
    assert np.array_equal(stream(tmp_path / "out"), expected_stream(texts))
    names = [s["file"] for s in manifest["shards"]]
    assert manifest["name"] == root.name  # a directory of inputs is named after the directory
    assert names[:4] == [f"{root.name}_{split}_{i:06d}.bin" for i, split in enumerate(["val"] * 3 + ["train"])]
    assert [s["tokens"] for s in manifest["shards"][:4]] == [3000, 3000, 1000, 3000]
    assert manifest["splits"]["val"]["tokens"] == 7000 and manifest["complete"]
    assert manifest["splits"]["val"]["documents"] + manifest["splits"]["train"]["documents"] == len(texts)
    starts = np.flatnonzero(expected_stream(texts) == EOT_ID)
    assert manifest["splits"]["val"]["documents"] == np.sum(starts < 7000)
    for entry in manifest["shards"]:
        assert entry["sha256"] == hashlib.sha256((tmp_path / "out" / entry["file"]).read_bytes()).hexdigest()


def test_shards_are_byte_identical_for_any_num_proc(corpus, tmp_path, small_batches):
    root, _ = corpus
    for num_proc in (1, 2):
        prepare(root, "--out", tmp_path / f"p{num_proc}", "--num-proc", num_proc, *SETTINGS)
    assert shard_files(tmp_path / "p1") == shard_files(tmp_path / "p2")
    assert load_manifest(tmp_path / "p1")["shards"] == load_manifest(tmp_path / "p2")["shards"]


class Crash(KeyboardInterrupt):
    """Ctrl-C (or a kill) at a chosen moment of a run."""


@pytest.mark.parametrize("crash_in", ["write_shard", "write_manifest"])
def test_resume_after_interruption_gives_the_same_bytes(corpus, tmp_path, monkeypatch, small_batches, crash_in):
    root, _ = corpus
    prepare(root, "--out", tmp_path / "reference", "--num-proc", 1, *SETTINGS)
    out = tmp_path / "out"
    real, real_write_shard = getattr(prepare_data, crash_in), prepare_data.write_shard
    calls = []

    def crash_on_fifth_call(path, data):
        calls.append(path)
        if len(calls) == 5:
            if crash_in == "write_shard":  # killed while writing: a temp file is left behind
                Path(str(path) + ".tmp").write_bytes(b"half a shard")
            raise Crash  # write_manifest: shard 5 is on disk, but not yet in the manifest
        return real(path, data)

    monkeypatch.setattr(prepare_data, crash_in, crash_on_fifth_call)
    with pytest.raises(SystemExit) as exit_info:
        prepare(root, "--out", out, "--num-proc", 2, *SETTINGS)
    assert exit_info.value.code == 130
    interrupted = load_manifest(out)
    assert not interrupted["complete"] and len(interrupted["shards"]) == 4
    assert interrupted["shards"][-1]["end"][1] > 0  # stopped in the middle of a document
    monkeypatch.setattr(prepare_data, crash_in, real)

    written = []
    monkeypatch.setattr(
        prepare_data, "write_shard", lambda path, data: written.append(path) or real_write_shard(path, data)
    )
    prepare(root, "--out", out, "--num-proc", 1, *SETTINGS)
    assert shard_files(out) == shard_files(tmp_path / "reference")
    without_command = [{k: v for k, v in load_manifest(d).items() if k != "made_by"} for d in (out, tmp_path / "reference")]
    assert without_command[0] == without_command[1]  # (the commands differ: --out, --num-proc)
    assert len(written) == len(load_manifest(out)["shards"]) - 4  # resumed: shards 0-3 were kept
    assert not list(out.glob("*.tmp"))


def test_parts_split_the_stream_and_read_as_one_dataset(corpus, tmp_path):
    root, texts = corpus
    part_args = [root, "--out", tmp_path / "parts", "--num-shards", 2, "--num-proc", 1, *SETTINGS]
    prepare(*part_args, "--shard-index", 0)
    with pytest.raises(ShardError, match="incomplete set of parts"):
        load_manifest(tmp_path / "parts")
    prepare(*part_args, "--shard-index", 1)
    parts = [tmp_path / "parts" / f"part-0000{i}-of-00002" for i in (0, 1)]
    assert np.array_equal(np.concatenate([stream(p) for p in parts]), expected_stream(texts))
    assert load_manifest(parts[1])["splits"]["val"]["tokens"] == 0  # validation comes from part 0 only
    merged = load_manifest(tmp_path / "parts")
    assert merged["complete"] and merged["splits"]["val"]["tokens"] == 7000
    loader = ShardedTokenLoader(tmp_path / "parts", "train", batch_size=1, seq_len=64)
    train_tokens = len(expected_stream(texts)) - 7000
    assert loader.windows_per_epoch == (train_tokens - 1) // 64


def test_hub_path_streams_a_dataset_and_splits_it_by_files(tmp_path, monkeypatch, capsys):
    """--dataset goes through datasets.load_dataset(streaming=True); a local dataset dir keeps it offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    texts = [SHAKESPEARE[i : i + 700] for i in range(0, 7000, 700)]
    for name, rows in (("a.jsonl", texts[:6]), ("b.jsonl", texts[6:])):
        write(tmp_path / "hub" / name, "".join(json.dumps({"text": t}) + "\n" for t in rows))
    prepare("--dataset", tmp_path / "hub", "--out", tmp_path / "whole", "--val-split-tokens", 100, "--num-proc", 1)
    assert np.array_equal(stream(tmp_path / "whole"), expected_stream(texts))
    part_args = ["--dataset", tmp_path / "hub", "--out", tmp_path / "parts", "--num-shards", 2, "--val-split-tokens", 100]
    for index in (0, 1):
        prepare(*part_args, "--shard-index", index)
    assert np.array_equal(stream(tmp_path / "parts"), expected_stream(texts))
    with pytest.raises(SystemExit, match="1"):
        prepare("--dataset", tmp_path / "hub", "--text-column", "body", "--out", tmp_path / "bad")
    assert "no column 'body' (columns: text)" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_parquet_files_including_binary_and_dictionary_text(tmp_path):
    import pyarrow as pa

    table(tmp_path / "in" / "b.parquet", text=["first row", "second row"])
    table(tmp_path / "in" / "c.parquet", text=[b"third \xe2\x9c\x93", b"bad \xff"])
    table(tmp_path / "in" / "d.parquet", text=pa.array(["fourth", "fourth"]).dictionary_encode())
    prepare(tmp_path / "in", "--out", tmp_path / "out", "--val-split-tokens", 3, "--num-proc", 1)
    expected = ["first row", "second row", "third ✓", "fourth", "fourth"]
    assert np.array_equal(stream(tmp_path / "out"), expected_stream(expected))
    assert load_manifest(tmp_path / "out")["skipped_documents"] == 1


def test_default_run_prepares_the_shipped_shakespeare(tmp_path):
    result = cli("--out", tmp_path / "shakespeare")
    assert result.returncode == 0, result.stderr
    manifest = load_manifest(tmp_path / "shakespeare")
    assert manifest["splits"]["val"]["tokens"] + manifest["splits"]["train"]["tokens"] == 338_025 + 1
    assert 0.05 < manifest["splits"]["val"]["tokens"] / 338_026 < 0.15
    assert [s["file"] for s in manifest["shards"]] == [
        "tinyshakespeare_val_000000.bin",
        "tinyshakespeare_train_000001.bin",
    ]
    again = cli("--out", tmp_path / "shakespeare")
    assert again.returncode == 0 and "already complete" in again.stdout


def test_non_utf8_documents_are_skipped_and_counted(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_bytes(
        b'{"text": "good one"}\n{"text": "bad \xff byte"}\n{"text": "good two"}\n'
    )
    result = cli(tmp_path / "in", "--out", tmp_path / "out", "--val-split-tokens", 2)
    assert result.returncode == 0, result.stderr
    assert "skipped 1 documents with non-UTF-8 bytes" in result.stderr and "a.jsonl:2" in result.stderr
    assert load_manifest(tmp_path / "out")["skipped_documents"] == 1
    assert np.array_equal(stream(tmp_path / "out"), expected_stream(["good one", "good two"]))


def test_empty_documents_are_skipped_and_counted(tmp_path):
    write(tmp_path / "in" / "a.txt", "")
    write(tmp_path / "in" / "b.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in ["one", " \n\t", "two", ""]))
    write(tmp_path / "in" / "c.txt", "\n")
    result = cli(tmp_path / "in", "--out", tmp_path / "out", "--val-split-tokens", 2)
    assert result.returncode == 0, result.stderr
    assert "skipped 4 empty documents (first: " in result.stderr and "a.txt)" in result.stderr
    manifest = load_manifest(tmp_path / "out")
    assert manifest["empty_documents"] == 4 and manifest["skipped_documents"] == 0
    assert np.array_equal(stream(tmp_path / "out"), expected_stream(["one", "two"]))  # no lone <|endoftext|>
    assert manifest["splits"]["val"]["documents"] + manifest["splits"]["train"]["documents"] == 2


def parquet(path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"body": ["x", "y"], "url": ["u", "v"]}), path)
    return path


BAD_INPUTS = {
    "missing column (jsonl)": (
        lambda d: [write(d / "a.jsonl", '{"body": "x", "url": "u"}\n')],
        "no column 'text' (columns: body, url)",
    ),
    "missing column (parquet)": (lambda d: [parquet(d / "a.parquet")], "no column 'text' (columns: body, url)"),
    "empty dataset": (lambda d: [write(d / "a.jsonl", "")], "no documents"),
    "empty .txt": (lambda d: [write(d / "a.txt", "")], "no documents with text in"),
    "only empty documents": (
        lambda d: [write(d / "a.jsonl", '{"text": ""}\n{"text": " \\n "}\n'), write(d / "b.txt", "\n\n")],
        "(3 empty, 0 not valid UTF-8)",
    ),
    "random bytes as .parquet": (
        lambda d: [write(d / "x.parquet", np.random.default_rng(0).bytes(3000))],
        "x.parquet: not a readable Parquet file",
    ),
    # a first batch of documents (BATCH_CHARS) fills shards before b.parquet is read: checked up front
    "truncated .parquet after good input": (
        lambda d: [write(d / "a.txt", SHAKESPEARE), truncated(table(d / "b.parquet", text=["x " * 500] * 20)),
                   "--shard-tokens", 100_000, "--val-split-tokens", 100_000, "--num-proc", 1],  # fmt: skip
        "b.parquet: not a readable Parquet file",
    ),
    "non-text parquet column": (
        lambda d: [table(d / "a.parquet", text=[1, 2])],
        "a.parquet: column 'text' holds int64, not text; pass --text-column",
    ),
    "non-text jsonl field": (
        lambda d: [write(d / "a.jsonl", '{"text": "fine"}\n{"text": ["a", "list"]}\n')],
        "a.jsonl:2: column 'text' holds list, not text",
    ),
    "invalid .json": (
        lambda d: [write(d / "a.json", '[{"text": "one"},\n {"text": "two"}\n')],
        "a.json: not valid JSON (Expecting ',' delimiter at line 3 column 1)",  # the unclosed array
    ),
    "no matching files": (lambda d: [str(d / "*.jsonl")], "no such file"),
    "non-UTF-8 with --strict": (
        lambda d: [write(d / "a.txt", b"caf\xe9"), "--strict"],
        "a.txt (byte 3): not valid UTF-8",
    ),
    "offline Hub dataset": (
        lambda d: ["--dataset", "HuggingFaceFW/fineweb-edu", "--name", "sample-10BT"],
        "pass local files",
    ),
    "offline preset": (lambda d: ["fineweb-edu-10B"], "cannot open the Hugging Face dataset"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_gives_a_one_line_error_and_no_file(tmp_path, case):
    make_args, message = BAD_INPUTS[case]
    result = cli(*make_args(tmp_path / "in"), "--out", tmp_path / "out")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert message in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("out", ["file", "file/data"])
def test_an_out_path_through_an_existing_file_is_refused_and_the_file_kept(tmp_path, out):
    write(tmp_path / "file", "precious")
    result = cli(write(tmp_path / "a.txt", "some text " * 50), "--out", tmp_path / out)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert f"{tmp_path / 'file'} is a file; pass another --out" in result.stderr
    assert (tmp_path / "file").read_text() == "precious"


def test_refuses_a_directory_of_another_source_unless_overwrite(tmp_path):
    write(tmp_path / "one.txt", "first corpus " * 50)
    write(tmp_path / "two.txt", "second corpus " * 50)
    out = tmp_path / "out"
    assert cli(tmp_path / "one.txt", "--out", out).returncode == 0
    before = shard_files(out)
    refused = cli(tmp_path / "two.txt", "--out", out)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "--overwrite" in refused.stderr
    assert "source" in refused.stderr and shard_files(out) == before
    assert cli(tmp_path / "two.txt", "--out", out, "--overwrite").returncode == 0
    assert load_manifest(out)["name"] == "two" and all(p.startswith("two_") for p in shard_files(out))

    write(tmp_path / "foreign" / "x.bin", b"someone else's")
    refused = cli(tmp_path / "one.txt", "--out", tmp_path / "foreign")
    assert refused.returncode == 1 and "no manifest.json" in refused.stderr
