"""The README's real run, rehearsed offline: the same commands, only the scale knobs shrunk by flags.

The commands are read from the README's real-run block, so the README and this test cannot drift apart. The
Hub dataset is a FineWeb-Edu-shaped folder in the Hub layout (parquet with the real columns, a README whose
`configs:` names sample-10BT) that `datasets.load_dataset(..., streaming=True)` resolves from the working
directory, as it would resolve the Hub: no code path is bypassed. Its GPT-2 tokens, as modded-nanogpt publishes
them (kjj0/finewebedu10B-gpt2: llm.c shards, a val shard longer than the validation budget), are made by the
block's alternative command (tokenizing here) and served by the stand-in Hub of tests/stand_in_hub.py, which the
commands' processes install at start (only huggingface_hub's network edge is replaced). The model is the 124M one
itself.
"""

import json
import re
import shlex
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import REPO
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

BEGIN, END = "<!-- real-run: begin -->", "<!-- real-run: end -->"
# Only scale knobs: validation split and shard sizes, the token layout of a step, the number of steps.
SCALE = {
    "prepare_data.py": ["--val-split-tokens", "513", "--shard-tokens", "20000", "--num-proc", "1"],
    "train.py": ["--seq-len", "128", "--micro-batch-size", "1", "--total-batch-tokens", "128", "--max-steps", "2",
                 "--save-every", "1"],
}
# One CPU process instead of 8 GPUs; a local GPT2LMHeadModel (our export) stands in for the Hub's gpt2.
LAUNCH_8GPU = "accelerate launch --config_file accelerate_configs/8gpu.yaml"
FINEWEB_EDU_COLUMNS = ("text", "id", "dump", "url", "file_path", "language", "language_score", "token_count",
                       "score", "int_score")


def readme_real_run() -> list[str]:
    readme = (REPO / "README.md").read_text()
    block = readme[readme.index(BEGIN) : readme.index(END)]
    return [line.split("  #")[0].strip() for line in re.findall(r"^(?:python|accelerate) .*$", block, re.M)]


def readme_alternatives() -> list[str]:
    """The commands the real-run block offers in its comments instead (`...: python prepare_data.py ...`)."""
    readme = (REPO / "README.md").read_text()
    block = readme[readme.index(BEGIN) : readme.index(END)]
    return re.findall(r"#.*?: (python \S+\.py [^#\n]*?)\s*$", block, re.M)


def kjj0_stand_in(hub_root, tokenized):
    """kjj0/finewebedu10B-gpt2 as modded-nanogpt lays it out, from shards tokenized here: finewebedu_val_000000.bin,
    finewebedu_train_000001.bin, ..., no manifest."""
    folder = hub_root / "kjj0" / "finewebedu10B-gpt2"
    folder.mkdir(parents=True)
    manifest = json.loads((tokenized / "manifest.json").read_text())
    assert [s["split"] for s in manifest["shards"]][:2] == ["val", "train"]
    train = 0
    for shard in manifest["shards"]:
        train += shard["split"] == "train"
        name = "finewebedu_val_000000.bin" if shard["split"] == "val" else f"finewebedu_train_{train:06d}.bin"
        shutil.copyfile(tokenized / shard["file"], folder / name)


def fineweb_edu_stand_in(root):
    """HuggingFaceFW/fineweb-edu as the Hub lays it out: sample/10BT/*.parquet and a README with configs."""
    text = (REPO / "gpt2repro" / "assets" / "tinyshakespeare.txt").read_text()
    folder = root / "HuggingFaceFW" / "fineweb-edu"
    (folder / "sample" / "10BT").mkdir(parents=True)
    for part in range(2):
        rows = [
            {"text": text[i * 1500 : (i + 1) * 1500], "id": f"<urn:uuid:{part}-{i}>", "dump": "CC-MAIN-2024-10",
             "url": f"https://example.org/{part}/{i}", "file_path": f"s3://commoncrawl/{part}.warc.gz",
             "language": "en", "language_score": 0.95, "token_count": 350, "score": 3.2, "int_score": 3}
            for i in range(part * 60, (part + 1) * 60)
        ]
        assert tuple(rows[0]) == FINEWEB_EDU_COLUMNS
        pq.write_table(pa.Table.from_pylist(rows), folder / "sample" / "10BT" / f"00{part}_00000.parquet")
    (folder / "README.md").write_text(
        "---\nlicense: odc-by\nconfigs:\n- config_name: sample-10BT\n  data_files:\n  - split: train\n"
        "    path: sample/10BT/*\n---\n# FineWeb-Edu, an offline stand-in\n"
    )


def as_rehearsal(command: str, exported: str) -> list[str]:
    """The README command with the launcher pointed at one CPU process and the scale knobs appended."""
    command = command.replace(LAUNCH_8GPU, "accelerate launch --config_file accelerate_configs/cpu.yaml")
    words = shlex.split(command)
    words = [exported if word == "gpt2" and words[i - 1] == "--model" else word for i, word in enumerate(words)]
    if words[0] == "accelerate":
        words = [sys.executable, "-m", "accelerate.commands.launch", *words[2:]]
    else:
        words[0] = sys.executable
    words = [str(REPO / w) if w.endswith((".py", ".yaml")) and (REPO / w).exists() else w for w in words]
    script = next(w for w in words if w.endswith(".py") and w != sys.executable)
    return [*words, *SCALE.get(script.rsplit("/", 1)[-1], [])]


def test_the_readme_real_run_works_end_to_end_offline(tmp_path):
    commands, alternatives = readme_real_run(), readme_alternatives()
    scripts = [next(w for w in shlex.split(c) if w.endswith(".py")) for c in commands]
    assert scripts == ["prepare_data.py", "prepare_data.py", "train.py", "train.py", "convert_gpt2.py",
                       "eval_hellaswag.py", "run_report.py"], commands
    assert commands[0] == "python prepare_data.py fineweb-edu-10b --from-hub"
    assert commands[1].startswith("python prepare_data.py fineweb-edu-10b --verify-hub-tokens ")
    assert alternatives == ["python prepare_data.py fineweb-edu-10b"]  # tokenizing here, in the first comment
    assert "--preset gpt2-124m" in commands[2] and commands[3] == commands[2] + " --resume auto"

    fineweb_edu_stand_in(tmp_path)
    (tmp_path / "cache").mkdir()  # HellaSwag as if downloaded once: `auto` and eval's default read it from there
    # 4 of the fixture's items: each is scored by the 124M model three times (train.py's two runs, the eval)
    items = (REPO / "tests" / "fixtures" / "hellaswag_tiny.jsonl").read_text().splitlines(keepends=True)[:4]
    (tmp_path / "cache" / "hellaswag_val.jsonl").write_text("".join(items))
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "GPT2REPRO_CACHE": str(tmp_path / "cache"),
           "HF_HOME": str(tmp_path / "hf"), "PYTHONUNBUFFERED": "1"}
    import os

    site = str(REPO / "tests" / "stand_in_hub_site")  # installs the stand-in Hub in each command's processes
    pythonpath = os.pathsep.join(filter(None, [site, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, **env, "PYTHONPATH": pythonpath, "GPT2REPRO_STAND_IN_HUB": str(tmp_path / "hub")}
    run_dir, data_dir = tmp_path / "runs" / "gpt2-124m", tmp_path / "data" / "fineweb-edu-10b"
    exported = "exported/gpt2-124m"

    def run(command, *extra):
        result = subprocess.run([*as_rehearsal(command, exported), *extra], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, (command, result.stdout[-2000:], result.stderr[-3000:])
        return result

    # 0. the alternative, tokenizing the (stand-in) Hub dataset through load_dataset(..., streaming=True), makes the
    # tokens the stand-in kjj0/finewebedu10B-gpt2 serves: its val shard (2,000 tokens) outruns the 513-token budget
    run(alternatives[0], "--out", "tokenized", "--val-split-tokens", "2000")
    kjj0_stand_in(tmp_path / "hub", tmp_path / "tokenized")

    # 1. download them instead, through huggingface_hub's snapshot_download
    downloaded = run(commands[0])
    assert "kjj0/finewebedu10B-gpt2" in downloaded.stdout and "ETA" in downloaded.stderr
    manifest = json.loads((data_dir / "manifest.json").read_text())
    assert manifest["complete"] and manifest["source"]["dataset"] == "HuggingFaceFW/fineweb-edu"
    assert manifest["source"]["name"] == "sample-10BT" and manifest["splits"]["val"]["tokens"] == 513
    assert manifest["source"]["repo"] == "kjj0/finewebedu10B-gpt2"

    # 1b. the downloaded tokens are the ones tokenizing the source here makes
    assert run(commands[1]).stdout.startswith("match: ")

    # 2. train the 124M model; then lose the final checkpoint, as an interrupted run would not have it
    first = run(commands[2])
    assert "model gpt2-124m: 124.5M parameters" in first.stdout and "step     2/2" in first.stdout
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final_eval = [r for r in rows if "val_loss" in r][-1]
    assert final_eval["val_tokens"] == 512 and final_eval["val_bpb"] > 0 and final_eval["hellaswag_items"] == 4
    uninterrupted = load_file(run_dir / "final" / "model.safetensors")
    shutil.rmtree(run_dir / "final")

    # 3. the same command with --resume auto continues from the newest checkpoint, to the same weights
    resumed = run(commands[3])
    assert f"resumed from {run_dir.relative_to(tmp_path) / 'checkpoint-000001'} at step 1" in resumed.stdout
    again = load_file(run_dir / "final" / "model.safetensors")
    for name, tensor in uninterrupted.items():
        assert torch.equal(tensor, again[name]), name

    # 4. export to a plain GPT2LMHeadModel, 5. evaluate both side by side with eval_hellaswag's defaults
    run(commands[4])
    assert json.loads((tmp_path / exported / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]
    evaluation = run(commands[5])
    results = json.loads((run_dir / "eval_results.json").read_text())["models"]
    ours, theirs = results["runs/gpt2-124m/final"]["summary"], results[exported]["summary"]
    assert ours["val_tokens"] == theirs["val_tokens"] == 512  # the whole split, by default
    # (train.py scored 128-token windows here, the shrunk --seq-len; eval_hellaswag the model's 1,024)
    assert ours["val_loss"] == pytest.approx(theirs["val_loss"], abs=1e-4)  # the export is the same model
    assert ours["val_bpb"] == pytest.approx(theirs["val_bpb"], abs=1e-4)
    assert ours["hellaswag_completion_acc_norm"] == theirs["hellaswag_completion_acc_norm"]
    assert "val bpb" in evaluation.stdout

    # 6. the report of the run, with the side-by-side evaluation
    run(commands[6])
    report = json.loads((run_dir / "report.json").read_text())
    assert report["final_eval"]["val_bpb"] == pytest.approx(final_eval["val_bpb"])
    markdown = (run_dir / "report.md").read_text()
    assert "bits per byte" in markdown.lower() and exported in markdown and "3.2924" in markdown
    assert "tokens downloaded from the Hub dataset kjj0/finewebedu10B-gpt2" in markdown
