"""Pre-tokenized data from and to the Hub (prepare_data.py --from-hub / --verify-hub-tokens / --push-to-hub),
offline against a stand-in Hub: local folders in a dataset repo's layout, reached through huggingface_hub's own
calls with only the network edge replaced (tests/stand_in_hub.py)."""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO, metrics, run_in_process
from huggingface_hub import constants
from stand_in_hub import VAL, download, llmc_repo

import prepare_data
from gpt2repro import hub_data
from gpt2repro.model_card import build_model_card
from gpt2repro.report import describe_data
from gpt2repro.token_shards import HEADER_BYTES, ShardError, load_manifest, open_split, write_shard

def one_line_error(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:  # errors.cli: Python prints the message and exits 1
        prepare_data.main(list(map(str, args)))
    message = str(exit_info.value)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


# ----------------------------------------------------------------------------------------------
# download


@pytest.mark.slow
def test_a_downloaded_repo_trains_and_validates_exactly_as_the_same_tokens_prepared_here(hub, prepared, tmp_path):
    repo = llmc_repo(hub, prepared)
    out = tmp_path / "data" / "plays"
    download(repo, "--out", out)

    manifest = load_manifest(out)
    assert manifest["complete"] and manifest["source"] == {
        "type": "hub tokens", "repo": repo, "revision": hub.revision(repo), "dataset": None, "name": None}
    assert manifest["splits"]["val"]["tokens"] == VAL  # the budget, not the whole val shard
    assert manifest["splits"]["train"] == {**load_manifest(prepared)["splits"]["train"], "documents": None}
    assert set(hub.served) == {f for f in hub.files(repo) if f.endswith(".bin")}  # not the README
    origin = hub_data.download_origin(out)
    assert origin["repo_id"] == repo and origin["revision"] == hub.revision(repo)

    runs = {}
    for name, data in (("here", prepared), ("hub", out)):
        runs[name] = tmp_path / f"run-{name}"
        run_in_process("--data-dir", data, "--run-dir", runs[name], "--max-steps", 4, "--val-tokens", 0,
                       "--micro-batch-size", 2, "--total-batch-tokens", 64)
    here, downloaded = metrics(runs["here"]), metrics(runs["hub"])
    assert [r.get("loss") for r in here] == [r.get("loss") for r in downloaded]
    val = [r["val_loss"] for r in downloaded if "val_loss" in r]
    assert val and val == [r["val_loss"] for r in here if "val_loss" in r]

    # the report and the model card name where the tokens came from
    named = f"tokens downloaded from the Hub dataset {repo} (revision {hub.revision(repo)[:12]})"
    assert named in (runs["hub"] / "report.md").read_text()
    assert "tokenized here" in (runs["here"] / "report.md").read_text()
    assert named in str(build_model_card({"data": describe_data(out)}, "you/plays-model"))


def test_max_train_shards_fetches_only_the_val_shard_and_the_first_train_shards(hub, prepared, tmp_path):
    repo = llmc_repo(hub, prepared)
    out = tmp_path / "plays"
    download(repo, "--out", out, "--max-train-shards", 1)
    assert sorted(hub.served) == ["plays_train_000001.bin", "plays_val_000000.bin"]
    assert [s["file"] for s in load_manifest(out)["shards"]] == ["plays_val_000000.bin", "plays_train_000001.bin"]

    hub.served.clear()  # asking for more later fetches only what is new
    download(repo, "--out", out, "--max-train-shards", 2)
    assert sorted(hub.served) == ["plays_train_000002.bin"] and load_manifest(out)["splits"]["train"]["shards"] == 2


def test_an_interrupted_download_resumes_and_fetches_only_the_files_it_lacks(hub, prepared, tmp_path, capsys):
    repo = llmc_repo(hub, prepared)
    out = tmp_path / "plays"
    hub.fail_after["plays_train_000002.bin"] = 5000  # the connection drops inside this file
    error = one_line_error(capsys, "--from-hub", repo, "--out", out, "--val-split-tokens", VAL)
    assert "ConnectError" in error and "rerun the same command to resume" in error
    assert not (out / "plays_train_000002.bin").exists()  # no half file under its name
    assert not list(out.rglob("*.incomplete"))
    with pytest.raises(ShardError, match="did not finish"):  # train.py refuses the directory meanwhile
        open_split(out, "train")

    kept = {f for f in hub.files(repo) if (out / f).is_file()}
    hub.fail_after.clear()
    hub.served.clear()
    download(repo, "--out", out)
    fetched = set(hub.served)
    assert fetched and not fetched & kept and "plays_train_000002.bin" in fetched
    assert all(hub.served[f] == (hub.repo(repo) / f).stat().st_size for f in fetched)  # whole files, once
    assert load_manifest(out)["complete"]

    hub.served.clear()  # a rerun of a complete download fetches nothing
    download(repo, "--out", out)
    assert not hub.served and "already complete" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["magic", "count"])
def test_a_corrupt_header_is_refused_and_the_file_not_kept(hub, prepared, tmp_path, capsys, damage):
    repo = llmc_repo(hub, prepared)
    shard = hub.repo(repo) / "plays_train_000001.bin"
    header = np.fromfile(shard, dtype=np.int32, count=3)
    header[0 if damage == "magic" else 2] += 1
    with open(shard, "r+b") as f:
        f.write(header.tobytes())
    out = tmp_path / "plays"
    error = one_line_error(capsys, "--from-hub", repo, "--out", out, "--val-split-tokens", VAL)
    assert "plays_train_000001.bin" in error and ("bad magic" in error if damage == "magic" else "corrupt" in error)
    assert not (out / "plays_train_000001.bin").exists()
    with pytest.raises(ShardError, match="did not finish"):
        open_split(out, "val")


def test_a_directory_of_other_data_is_refused_unless_overwrite(hub, prepared, tmp_path, capsys):
    repo = llmc_repo(hub, prepared)
    out = tmp_path / "plays"
    shutil.copytree(prepared, out)
    error = one_line_error(capsys, "--from-hub", repo, "--out", out)
    assert "holds other shards" in error and "--overwrite" in error
    download(repo, "--out", out, "--overwrite")
    assert load_manifest(out)["source"]["type"] == "hub tokens"


def test_the_free_space_is_checked_before_anything_is_written(hub, prepared, tmp_path, capsys, monkeypatch):
    repo = llmc_repo(hub, prepared)
    needed = sum((hub.repo(repo) / f).stat().st_size for f in hub.files(repo) if f.endswith(".bin"))
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(hub_data.shutil, "disk_usage", lambda path: usage._replace(free=needed - 1))
    out = tmp_path / "plays"
    error = one_line_error(capsys, "--from-hub", repo, "--out", out)
    assert f"needs {hub_data.format_bytes(needed)}" in error and "--max-train-shards" in error
    assert not out.exists() and not hub.served


def test_progress_gives_bytes_rate_and_time_left(hub, prepared, tmp_path, capsys):
    assert hub_data.progress_line(3_000_000_000, 20_000_000_000, 10) == \
        "3.0 GB of 20.0 GB (15%), 300.0 MB/s, ETA 0m57s"
    assert hub_data.progress_line(0, 10, 0).endswith("ETA unknown")
    repo = llmc_repo(hub, prepared)
    download(repo, "--out", tmp_path / "plays")
    err = capsys.readouterr().err
    assert f"downloading {len(hub.files(repo)) - 1} files" in err  # all but the README
    assert [line for line in err.splitlines() if line.startswith("download: ") and "(100%)" in line]


def test_offline_fails_in_one_line_at_once_and_writes_nothing(tmp_path, capsys, monkeypatch):
    out = tmp_path / "fineweb-edu-10b"
    start = time.perf_counter()
    error = one_line_error(capsys, "fineweb-edu-10b", "--from-hub", "--out", out)  # HF_HUB_OFFLINE=1 (conftest)
    assert "kjj0/finewebedu10B-gpt2" in error and "HF_HUB_OFFLINE" in error
    assert "tokenize instead: python prepare_data.py fineweb-edu-10b" in error
    # not flagged offline, but nothing answers: the same one line, no minutes of retries
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    error = one_line_error(capsys, "fineweb-edu-10b", "--from-hub", "--out", out)
    assert "cannot reach the Hub" in error
    assert time.perf_counter() - start < 15 and not out.exists()


# ----------------------------------------------------------------------------------------------
# verify


def test_verify_reports_a_match_and_where_a_planted_mismatch_starts(hub, prepared, corpus, tmp_path, capsys):
    repo = llmc_repo(hub, prepared)
    out = tmp_path / "plays"
    download(repo, "--out", out)
    capsys.readouterr()
    prepare_data.main([str(corpus), "--out", str(out), "--verify-hub-tokens", "3"])
    line = capsys.readouterr().out.strip()
    assert line.startswith("match: the first 3 documents of ") and "same" in line

    val = hub.repo(repo) / "plays_val_000000.bin"  # plant a different token inside document 2
    position = 500
    tokens = np.fromfile(val, dtype=np.uint16, offset=HEADER_BYTES)
    tokens[position] = (int(tokens[position]) + 1) % 50257
    write_shard(val, tokens)
    other = tmp_path / "planted"
    download(repo, "--out", other)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        prepare_data.main([str(corpus), "--out", str(other), "--verify-hub-tokens", "3"])
    line = capsys.readouterr().out.strip()
    assert exit_info.value.code == 1 and line.startswith(f"mismatch: from token {position:,} (in document 2 of ")


# ----------------------------------------------------------------------------------------------
# push


def test_a_push_then_a_download_gives_back_the_same_directory_byte_for_byte(hub, prepared, corpus, tmp_path):
    repo = "you/plays-gpt2"
    local = tmp_path / "plays"
    shutil.copytree(prepared, local)
    prepare_data.main([str(corpus), "--out", str(local), "--shard-tokens", "8000", "--val-split-tokens", str(VAL),
                       "--push-to-hub", repo, "--private"])  # the command that prepared it, + --push-to-hub
    assert hub.settings(repo)["private"] is True
    card = (hub.repo(repo) / "README.md").read_text()
    assert "GPT-2 BPE" in card and "20240520" in card and "prepare_data.py" in card and "| val | 2,048 |" in card

    back = tmp_path / "back"
    download(repo, "--out", back)
    files = sorted(p.name for p in local.iterdir())
    assert files == sorted(p.name for p in back.iterdir() if p.name not in (".cache", hub_data.ORIGIN_NAME))
    for name in files:
        assert (local / name).read_bytes() == (back / name).read_bytes(), name
    assert hub_data.download_origin(back)["repo_id"] == repo


def test_an_unfinished_directory_is_not_pushed(hub, prepared, tmp_path):
    local = tmp_path / "plays"
    shutil.copytree(prepared, local)
    manifest = json.loads((local / "manifest.json").read_text())
    (local / "manifest.json").write_text(json.dumps(dict(manifest, complete=False)))
    with pytest.raises(hub_data.HubDataError, match="did not finish"):
        hub_data.push_tokens(local, "you/x")
    assert not hub.repo("you/x").exists()


def test_part_of_a_pushed_repo_downloads_as_a_smaller_complete_dataset(hub, prepared, tmp_path):
    repo = "you/plays-gpt2"
    hub_data.push_tokens(prepared, repo)
    out = tmp_path / "some"
    download(repo, "--out", out, "--max-train-shards", 1)
    manifest, whole = load_manifest(out), load_manifest(prepared)
    assert manifest["complete"] and "downloading" not in manifest
    assert [s["file"] for s in manifest["shards"]] == [s["file"] for s in whole["shards"]][:2]  # val + 1 train
    assert manifest["splits"]["val"] == whole["splits"]["val"] and manifest["splits"]["train"]["shards"] == 1
    assert sorted(set(hub.served) - {"manifest.json"}) == sorted(s["file"] for s in manifest["shards"])


# ----------------------------------------------------------------------------------------------
# a light command


# prepare_data's commands one after another in one process, then which of the training libraries it loaded
COMMANDS_THEN_IMPORTED = """
import json, sys
import prepare_data
for argv in json.loads(sys.argv[1]):
    prepare_data.main(argv)
print("imported:", [name for name in ("torch", "transformers", "accelerate") if name in sys.modules])
"""


@pytest.mark.slow
def test_tokenizing_pushing_downloading_and_verifying_never_import_torch(corpus, tmp_path):
    # Light commands stay light: importing PyTorch would cost every prepare_data.py run more time and memory than
    # tokenizing a small corpus. In a fresh process, as the user runs it (this one has torch imported already).
    site = str(REPO / "tests" / "stand_in_hub_site")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [site, str(REPO), os.environ.get("PYTHONPATH")])),
           "GPT2REPRO_STAND_IN_HUB": str(tmp_path / "hub"), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    repo, here, back = "you/plays-gpt2", str(tmp_path / "plays"), str(tmp_path / "back")
    commands = [[str(corpus), "--out", here, "--shard-tokens", "8000", "--val-split-tokens", str(VAL),
                 "--num-proc", "1", "--push-to-hub", repo],
                ["--from-hub", repo, "--out", back, "--val-split-tokens", str(VAL)],
                [str(corpus), "--out", back, "--verify-hub-tokens", "3"]]
    done = subprocess.run([sys.executable, "-c", COMMANDS_THEN_IMPORTED, json.dumps(commands)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "match: the first 3 documents" in done.stdout and load_manifest(back)["complete"]
    assert done.stdout.splitlines()[-1] == "imported: []"
