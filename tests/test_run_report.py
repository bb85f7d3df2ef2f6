"""The run report: what ran, from which code, on what, at what cost, and against which published GPT-2 figure."""

import json
import subprocess

import pytest
from conftest import as_hub_dataset

import run_report
from gpt2repro import report as reporting
from gpt2repro.provenance import git_state
from gpt2repro.report import GPT2_124M_REFERENCE


def facts(data_dir, run_dir, **overrides):
    base = dict(
        command=["/home/someone/gpt2repro/train.py", "--preset", "gpt2-124m"], preset="gpt2-124m",
        settings=dict(model="gpt2", data_dir=str(data_dir), run_dir=str(run_dir), total_batch_tokens=524_288,
                      micro_batch_size=64, seq_len=1024, max_steps=19_073, lr=6e-4, gpu_hour_usd=2.5),
        world_size=8, device_type="cuda", precision="bf16", compile=True, n_params=124_475_904, steps=19_073,
        tokens=19_073 * 524_288, train_seconds=3000.0, total_seconds=3600.0, mean_tokens_per_sec=3.3e6,
        mean_mfu=0.41, peak_flops_source="table: NVIDIA H100 80GB HBM3 bf16 dense 989 TFLOP/s",
        final_eval=dict(val_loss=3.071, val_bpb=0.9213, val_tokens=10_485_760, val_bytes=45_000_000,
                        hellaswag_items=10_042, hellaswag_completion_acc=0.301, hellaswag_completion_acc_norm=0.312,
                        hellaswag_lm_eval_acc=0.305, hellaswag_lm_eval_acc_norm=0.33),
    )
    return {**base, **overrides}


@pytest.fixture
def fake_gpus(monkeypatch):
    """An 8-GPU node as the report sees it, on a machine without one."""
    from gpt2repro import throughput
    import torch

    monkeypatch.setattr(throughput, "device_name", lambda device: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)


def test_fineweb_edu_compares_with_3_2924_fineweb_with_3_28_and_other_data_with_neither(data_dir, tmp_path):
    edu = reporting.describe_data(as_hub_dataset(data_dir, tmp_path, "HuggingFaceFW/fineweb-edu", "sample-10BT"))
    web = reporting.describe_data(as_hub_dataset(data_dir, tmp_path, "HuggingFaceFW/fineweb", "sample-10BT"))
    local = reporting.describe_data(data_dir)
    assert edu["hub_dataset"] == "HuggingFaceFW/fineweb-edu" and edu["hub_config"] == "sample-10BT"
    assert reporting.val_loss_reference(edu)["value"] == GPT2_124M_REFERENCE["fineweb_edu_val_loss"] == 3.2924
    assert reporting.val_loss_reference(web)["value"] == GPT2_124M_REFERENCE["fineweb_val_loss_target"] == 3.28
    assert local["hub_dataset"] is None and reporting.val_loss_reference(local) is None
    assert local["val_tokens"] > 0 and local["train_tokens"] > 0
    # shards made by llm.c / build-nanogpt have no manifest: their directory names decide
    for name, family in (("edu_fineweb10B", "fineweb-edu"), ("fineweb10B", "fineweb"), ("openwebtext", None)):
        (tmp_path / name).mkdir()
        described = reporting.describe_data(tmp_path / name)
        assert described["family"] == family and described["family_from"] == "directory name"


def test_gpu_report_has_hardware_cost_reference_and_the_launch_command(data_dir, tmp_path, fake_gpus):
    data = as_hub_dataset(data_dir, tmp_path, "HuggingFaceFW/fineweb-edu", "sample-10BT")
    run_dir = tmp_path / "run"
    (run_dir).mkdir()
    (run_dir / "curves.png").write_bytes(b"\x89PNG fake")
    report = reporting.write_report(run_dir, facts(data, run_dir))

    assert json.loads((run_dir / "report.json").read_text()) == report
    assert report["hardware"]["device"] == "NVIDIA H100 80GB HBM3" and report["hardware"]["gpus"] == 8
    assert report["cost"]["gpu_hours"] == pytest.approx(8.0)  # 3600 s wall x 8 GPUs
    assert report["cost"]["train_gpu_hours"] == pytest.approx(3000 * 8 / 3600)
    assert report["cost"]["usd"] == pytest.approx(20.0)  # 8 GPU-hours x $2.50
    assert set(report["versions"]) >= {"python", "torch", "transformers", "accelerate", "datasets"}
    assert report["created"].endswith("+00:00")
    md = (run_dir / "report.md").read_text()
    assert "$20.00 at $2.50 per GPU-hour" in md and "wall time incl. evaluation" in md
    assert "accelerate launch --multi_gpu --num_processes 8 train.py --preset gpt2-124m" in md
    assert "/home/someone" not in md  # the command runs from the user's own checkout
    assert "| 3.0710 | 3.2924 (OpenAI GPT-2 124M on FineWeb-Edu val, measured by build-nanogpt) |" in md
    assert "| HellaSwag acc_norm, lm-eval style | 33.00 | 31.14 |" in md
    assert "| validation bits per byte | 0.9213 |" in md
    assert "![curves](curves.png)" in md


def test_cpu_report_has_no_cost_and_says_so(data_dir, tmp_path):
    report = reporting.write_report(tmp_path, facts(data_dir, tmp_path, device_type="cpu", world_size=1))
    assert report["cost"] is None and report["hardware"]["gpus"] == 0
    md = (tmp_path / "report.md").read_text()
    assert "cost: n/a (CPU run)" in md and "python train.py --preset gpt2-124m" in md
    assert "No published GPT-2 validation loss exists for this data" in md
    assert "![curves]" not in md  # no curves.png in the run directory


def test_missing_optional_facts_render_as_n_a(data_dir, tmp_path):
    report = reporting.write_report(tmp_path, {"command": ["train.py"], "settings": {"data_dir": str(data_dir)}})
    md = (tmp_path / "report.md").read_text()
    assert report["training"]["steps"] is None and report["final_eval"] == {}
    assert "| HellaSwag acc, completion style | n/a | 28.59 |" in md and "steps: n/a of n/a" in md


def test_a_hellaswag_subset_is_labelled_with_its_item_count(data_dir, tmp_path):
    final = dict(facts(data_dir, tmp_path)["final_eval"], hellaswag_items=200)
    reporting.write_report(tmp_path, facts(data_dir, tmp_path, device_type="cpu", final_eval=final))
    md = (tmp_path / "report.md").read_text()
    assert "| HellaSwag acc_norm, completion style [200 items] | 31.20 | 29.55 |" in md


def test_git_state_is_unknown_outside_git_and_tracks_commit_and_changes(tmp_path):
    assert git_state(tmp_path) == {"commit": "unknown", "dirty": None}

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                       capture_output=True)

    git("init", "-q")
    (tmp_path / "train.py").write_text("print(1)\n")
    git("add", "train.py")
    git("commit", "-q", "-m", "one")
    state = git_state(tmp_path)
    assert len(state["commit"]) == 40 and state["dirty"] is False
    (tmp_path / "train.py").write_text("print(2)\n")
    assert git_state(tmp_path) == {"commit": state["commit"], "dirty": True}


def test_cli_rerenders_the_report_with_every_evaluated_model_side_by_side(data_dir, tmp_path):
    reporting.write_report(tmp_path, facts(data_dir, tmp_path, device_type="cpu"))
    summary = dict(hellaswag_items=10_042, hellaswag_completion_acc=0.3, hellaswag_completion_acc_norm=0.31,
                   hellaswag_lm_eval_acc=0.302, hellaswag_lm_eval_acc_norm=0.325, val_loss=3.1)
    results = {"data": "hellaswag_val.jsonl", "val_data": str(data_dir), "models": {
        "runs/gpt2-124m/final": {"summary": summary, "items": [{"ind": 0}]},
        "gpt2": {"summary": dict(summary, hellaswag_completion_acc_norm=0.2955, val_loss=3.3), "items": [{"ind": 0}]},
    }}
    (tmp_path / "results.json").write_text(json.dumps(results))
    run_report.main([str(tmp_path), "--eval-results", str(tmp_path / "results.json")])

    report = json.loads((tmp_path / "report.json").read_text())
    assert list(report["eval_results"]["models"]) == ["runs/gpt2-124m/final", "gpt2"]
    # the summaries only: per-item log-likelihoods stay in results.json
    assert report["eval_results"]["models"]["gpt2"] == results["models"]["gpt2"]["summary"]
    assert report["final_eval"]["val_loss"] == 3.071  # the training facts are kept
    md = (tmp_path / "report.md").read_text()
    assert "| `runs/gpt2-124m/final` | 10,042 | 30.00 | 31.00 | 30.20 | 32.50 | 3.1000 |" in md
    assert "| `gpt2` | 10,042 | 30.00 | 29.55 |" in md
    assert "| OpenAI GPT-2 124M (published) | 10,042 | 28.59 | 29.55 | 28.92 | 31.14 | n/a |" in md


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "report.json: no such file"),
    (lambda d: (d / "report.json").write_text("{"), "report.json: not readable JSON"),
    (lambda d: ((d / "report.json").write_text("{}"), (d / "r.json").write_text('{"models": 1}')),
     "eval_hellaswag.py --output"),
])
def test_cli_bad_input_is_a_one_line_error(tmp_path, setup, message):
    setup(tmp_path)
    extra = ["--eval-results", str(tmp_path / "r.json")] if (tmp_path / "r.json").exists() else []
    with pytest.raises(SystemExit) as error:
        run_report.main([str(tmp_path), *extra])
    assert str(error.value).startswith("error: ") and message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "report.md").exists()


def test_eval_results_of_the_runs_own_checkpoint_fill_the_results_table_and_the_written_time(data_dir, tmp_path):
    facts_ = facts(data_dir, tmp_path, device_type="cpu")
    facts_["final_eval"] = {"val_loss": 3.071, "val_bpb": 0.93, "val_tokens": 1000}  # trained with HellaSwag off
    written = reporting.write_report(tmp_path, facts_)["created"]
    summary = dict(hellaswag_items=10_042, hellaswag_completion_acc=0.3, hellaswag_completion_acc_norm=0.31,
                   hellaswag_lm_eval_acc=0.302, hellaswag_lm_eval_acc_norm=0.325, val_loss=3.2, val_bpb=0.95, val_tokens=2000, device="cpu")
    results = {"data": "hellaswag_val.jsonl", "val_data": str(data_dir), "models": {
        str(tmp_path / "final"): {"summary": summary, "items": []},
        "gpt2": {"summary": dict(summary, hellaswag_completion_acc=0.2859), "items": []},
    }}
    (tmp_path / "results.json").write_text(json.dumps(results))
    import time

    time.sleep(1.1)  # "Written" has one-second resolution
    run_report.main([str(tmp_path), "--eval-results", str(tmp_path / "results.json")])
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["created"] > written
    final = report["final_eval"]
    assert final["hellaswag_items"] == 10_042
    assert final["hellaswag_completion_acc"] == 0.3  # its own model's, not gpt2's
    assert (final["val_loss"], final["val_tokens"]) == (3.071, 1000)  # measured by the training: kept
    md = (tmp_path / "report.md").read_text()
    assert "| HellaSwag acc, completion style | 30.00 | 28.59 |" in md
    assert f"Written {report['created']}" in md and f"Filled in by eval_hellaswag.py on `{tmp_path / 'final'}`" in md
