"""The trainer: it learns, its batch math is exact, DDP and resumption change nothing, bad input is refused."""

import json
import logging
import math
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import (REPO, SEQ, TINY, assert_same_weights, launcher, logged, metrics, run_cli, run_in_process,
                      train_argv, weights)

import train
from gpt2repro.checkpoints import STATE_FILE, find_resume_checkpoint
from gpt2repro.optim import learning_rate, make_optimizer
from gpt2repro.settings import Settings, SettingsError, parse_settings


# ---- the schedule and the optimizer ----


def test_learning_rate_warms_up_linearly_then_decays_to_ten_percent():
    s = Settings(lr=6e-4, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    lrs = [learning_rate(step, s) for step in range(111)]
    assert lrs[0] == pytest.approx(6e-5) and lrs[9] == pytest.approx(6e-4)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[60] == pytest.approx(0.5 * (6e-4 + 6e-5))  # half-way down the cosine
    assert lrs[110] == pytest.approx(6e-5)


def test_weight_decay_only_on_matrices_and_embeddings():
    from configuration_gpt2repro import GPT2ReproConfig
    from modeling_gpt2repro import GPT2ReproForCausalLM

    model = GPT2ReproForCausalLM(GPT2ReproConfig(n_layer=2, n_head=2, n_embd=32, n_positions=32))
    decay, no_decay = make_optimizer(model, Settings(optimizer="adamw")).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {names[id(p)] for p in decay["params"]} == {n for n, p in model.named_parameters() if p.dim() >= 2}
    assert all(n.endswith("bias") or ".ln_" in n for n in (names[id(p)] for p in no_decay["params"]))


# ---- learning, batch math, DDP ----


@pytest.mark.slow
def test_loss_drops_and_the_run_leaves_its_artefacts(data_dir, tmp_path, capsys):
    run_in_process("--data-dir", data_dir, "--run-dir", tmp_path, "--max-steps", 40, "--micro-batch-size", 8,
                   "--total-batch-tokens", 8 * SEQ, "--eval-every", 20, "--sample-tokens", 8,
                   "--hellaswag", REPO / "tests" / "fixtures" / "hellaswag_tiny.jsonl", "--log-with", "tensorboard")
    rows = metrics(tmp_path)
    losses = [r["loss"] for r in rows if "loss" in r]
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    hellaswag = [r["hellaswag_completion_acc_norm"] for r in rows if "hellaswag_completion_acc_norm" in r]
    assert len(losses) == 40 and len(val) == 2 and len(hellaswag) == 2
    assert all(0.0 <= acc <= 1.0 for acc in hellaswag)
    assert list(tmp_path.rglob("events.out.tfevents.*"))  # the tensorboard tracker wrote
    assert losses[0] > 10.0  # ln(50257) = 10.8 at GPT-2 init
    assert sum(losses[-5:]) / 5 < losses[0] - 3.0
    assert val[1] < val[0]
    out = capsys.readouterr().out
    assert "step    40/40 | loss " in out and "| tok/s " in out and "| mfu " in out
    assert "| elapsed 0:0" in out and "| eta 0:00:00" in out.split("step    40/40")[1].splitlines()[0]
    assert "sample: \"Hello, I'm a language model," in out
    assert (tmp_path / "settings.yaml").exists() and (tmp_path / "curves.png").stat().st_size > 1000
    final = tmp_path / "final"  # whoever may read the config may read the weights (a shared folder, a server)
    assert (final / "model.safetensors").stat().st_mode & 0o777 == (final / "config.json").stat().st_mode & 0o777


@pytest.mark.slow
def test_accumulation_matches_one_big_micro_batch(data_dir, tmp_path):
    # 4 micro-steps of 2 windows vs 1 micro-step of 8 windows: the same tokens, the same update (AdamW: the weight
    # tolerance below is Adam's)
    common = ["--data-dir", data_dir, "--max-steps", 2, "--total-batch-tokens", 8 * SEQ, "--optimizer", "adamw"]
    run_in_process(*common, "--run-dir", tmp_path / "accum", "--micro-batch-size", 2)
    run_in_process(*common, "--run-dir", tmp_path / "big", "--micro-batch-size", 8)
    # Adam's first steps are ~lr * sign(grad): float-summation order moves weights by a sliver of lr
    assert_same_weights(tmp_path / "accum" / "final", tmp_path / "big" / "final", atol=3e-5)
    # Adam hides a mis-scaled gradient; the logged norm does not (e.g. a forgotten 1/accumulation)
    for key in ("loss", "grad_norm"):
        assert logged(tmp_path / "accum", key) == pytest.approx(logged(tmp_path / "big", key), rel=1e-5)


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(data_dir, tmp_path):
    # AdamW: the weight tolerance is AdamW's (tests/test_muon.py holds Muon to its own)
    common = ["--data-dir", data_dir, "--max-steps", 2, "--total-batch-tokens", 8 * SEQ, "--micro-batch-size", 4,
              "--optimizer", "adamw"]
    single = run_cli(*common, "--run-dir", tmp_path / "one")
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = run_cli(*common, "--run-dir", tmp_path / "two", launcher=launcher("cpu_2proc.yaml"))
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "2 process(es)" in ddp.stdout and "x 1 accumulation" in ddp.stdout
    assert_same_weights(tmp_path / "one" / "final", tmp_path / "two" / "final", atol=3e-5)
    for key in ("loss", "grad_norm"):  # mean over micro-steps and processes, gradients averaged not summed
        assert logged(tmp_path / "one", key) == pytest.approx(logged(tmp_path / "two", key), rel=1e-5)


# ---- checkpoints and resumption ----


@pytest.mark.slow
def test_resumed_run_is_identical_to_an_uninterrupted_one(data_dir, tmp_path):
    common = ["--data-dir", data_dir, "--max-steps", 6, "--micro-batch-size", 4, "--total-batch-tokens", 8 * SEQ]
    run_in_process(*common, "--run-dir", tmp_path / "full", "--save-every", 3, "--keep-checkpoints", 1)
    checkpoint = tmp_path / "full" / "checkpoint-000003"
    assert (checkpoint / STATE_FILE).exists()
    run_in_process(*common, "--run-dir", tmp_path / "resumed", "--resume", checkpoint)
    assert_same_weights(tmp_path / "full" / "final", tmp_path / "resumed" / "final")
    assert logged(tmp_path / "resumed", "loss") == logged(tmp_path / "full", "loss")[3:]


@pytest.mark.slow
def test_resume_on_two_processes_continues_the_token_stream(data_dir, tmp_path):
    # AdamW: the weight tolerance is AdamW's (tests/test_muon.py holds Muon to its own)
    common = ["--data-dir", data_dir, "--max-steps", 4, "--micro-batch-size", 4, "--total-batch-tokens", 8 * SEQ,
              "--optimizer", "adamw"]
    run_in_process(*common, "--run-dir", tmp_path / "one", "--save-every", 2)
    result = run_cli(*common, "--run-dir", tmp_path / "two", "--resume", tmp_path / "one" / "checkpoint-000002",
                     launcher=launcher("cpu_2proc.yaml"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stdout and "at step 2" in result.stdout
    # the same tokens at the same weights: the same losses, up to the order of floating-point sums
    assert logged(tmp_path / "two", "loss") == pytest.approx(logged(tmp_path / "one", "loss")[2:], rel=1e-5)
    assert_same_weights(tmp_path / "one" / "final", tmp_path / "two" / "final", atol=3e-5)


@pytest.mark.slow
def test_resume_auto_picks_the_newest_complete_checkpoint(data_dir, tmp_path):
    run_in_process("--data-dir", data_dir, "--run-dir", tmp_path, "--max-steps", 4, "--micro-batch-size", 4,
                   "--total-batch-tokens", 4 * SEQ, "--save-every", 1, "--keep-checkpoints", 2)
    checkpoints = sorted(tmp_path.glob("checkpoint-*"))
    assert [p.name for p in checkpoints] == ["checkpoint-000002", "checkpoint-000003"]
    (tmp_path / ".tmp-checkpoint-000009").mkdir()  # what a kill -9 mid-save leaves: ignored
    assert find_resume_checkpoint("auto", tmp_path) == [tmp_path / "final", *checkpoints[::-1]]
    import shutil

    shutil.rmtree(tmp_path / "final")
    assert find_resume_checkpoint("auto", tmp_path)[0] == tmp_path / "checkpoint-000003"


@pytest.mark.slow
def test_sigterm_finishes_the_step_saves_and_resumes(data_dir, tmp_path):
    args = train_argv("--data-dir", data_dir, "--run-dir", tmp_path, "--max-steps", 100000, "--micro-batch-size", 4,
                         "--total-batch-tokens", 4 * SEQ)
    process = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (
        (tmp_path / "metrics.jsonl").exists() and len(metrics(tmp_path)) >= 3
    ):
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-2000:]
    saved = find_resume_checkpoint("auto", tmp_path)[0]
    step = json.loads((saved / STATE_FILE).read_text())["step"]
    assert step >= 3 and f"saved {saved}" in stdout
    resumed = run_cli("--data-dir", data_dir, "--run-dir", tmp_path, "--max-steps", step + 2,
                      "--micro-batch-size", 4, "--total-batch-tokens", 4 * SEQ, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"at step {step}" in resumed.stdout and (tmp_path / "final").exists()


@pytest.mark.slow
def test_final_checkpoint_loads_through_auto_classes_elsewhere(data_dir, tmp_path):
    run_in_process("--data-dir", data_dir, "--run-dir", tmp_path / "run", "--max-steps", 1, "--micro-batch-size", 4,
                   "--total-batch-tokens", 4 * SEQ)
    final = tmp_path / "run" / "final"
    script = (
        "import sys; sys.path = [p for p in sys.path if p not in ('', %r)]\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "m = AutoModelForCausalLM.from_pretrained(%r, trust_remote_code=True)\n"
        "t = AutoTokenizer.from_pretrained(%r)\n"
        "ids = t('Hello', return_tensors='pt')\n"
        "print(t.decode(m.generate(**ids, max_new_tokens=4, do_sample=False)[0]))\n"
    ) % (str(REPO), str(final), str(final))
    (tmp_path / "elsewhere").mkdir()
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path / "elsewhere")
    assert result.returncode == 0 and result.stdout.startswith("Hello"), result.stderr[-2000:]
    assert "128 tokens of" in (final / "README.md").read_text()


# ---- bad input ----


@pytest.mark.slow
def test_bad_settings_each_give_a_one_line_error(data_dir, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for shard in data_dir.iterdir():
        (foreign / shard.name).write_bytes(shard.read_bytes())
    manifest = json.loads((foreign / "manifest.json").read_text())
    manifest["tokenizer"] = "some-other-bpe-sha256:0000000000000000"
    (foreign / "manifest.json").write_text(json.dumps(manifest))

    cases = {
        "not a multiple of micro-batch x seq-len x processes": ["--data-dir", data_dir, "--micro-batch-size", 3,
                                                              "--total-batch-tokens", 1000],
        "exceeds the model's context": ["--data-dir", data_dir, "--seq-len", 4096],
        "no such directory; create it with python prepare_data.py": ["--data-dir", tmp_path / "missing"],
        "tokenizer": ["--data-dir", foreign],
        "not a complete checkpoint": ["--data-dir", data_dir, "--resume", tmp_path / "nope"],
        "validation tokens in": ["--data-dir", data_dir, "--val-tokens", 10**6],
    }
    from accelerate.state import AcceleratorState

    for i, (expected, args) in enumerate(cases.items()):
        argv = [*TINY, "--run-dir", str(tmp_path / "r"), *map(str, args)]
        if i == 0:  # once through the real command line: a non-zero exit and the message last on stderr
            result = subprocess.run([sys.executable, str(REPO / "train.py"), *argv], capture_output=True, text=True)
            assert result.returncode != 0, result.stderr[-1500:]
            message = [line for line in result.stderr.splitlines() if line.strip()][-1]
        else:  # the same path in this process: train.run exits with the message
            AcceleratorState._reset_state(reset_partial_state=True)
            with pytest.raises(SystemExit) as exit_info:
                train.run(argv)
            message = str(exit_info.value)
        assert message.startswith("error: ") and expected in message and "\n" not in message, (expected, message)
        assert not (tmp_path / "r" / "final").exists()


@pytest.mark.slow
def test_diverging_run_skips_bad_updates_then_aborts(data_dir, tmp_path, capsys):
    with pytest.raises(RuntimeError, match="non-finite steps in a row"):
        run_in_process("--data-dir", data_dir, "--run-dir", tmp_path, "--max-steps", 20, "--micro-batch-size", 4,
                       "--total-batch-tokens", 4 * SEQ, "--lr", 1e30, "--warmup-steps", 1, "--max-bad-steps", 3)
    assert capsys.readouterr().out.count("update skipped") == 3


@pytest.mark.slow
def test_a_push_that_fails_after_training_says_so_and_keeps_the_checkpoint(data_dir, tmp_path, monkeypatch,
                                                                           capsys):
    # the login checked out at the start (the network went away later); conftest's HF_HUB_OFFLINE=1 fails the push
    monkeypatch.setattr(train, "check_push_access", lambda repo_id, private: f"push: to {repo_id}")
    # the upload starts after the last barrier: the other ranks must not wait out the collective timeout for it
    from accelerate import Accelerator

    events, push, finish = [], train.push_to_hub, train.RunLog.finish
    monkeypatch.setattr(Accelerator, "wait_for_everyone", lambda self: events.append("barrier"))
    monkeypatch.setattr(train.RunLog, "finish", lambda self: (events.append("finish"), finish(self)))
    monkeypatch.setattr(train, "push_to_hub", lambda *a, **k: (events.append("push"), push(*a, **k)))
    with pytest.raises(train.PublishError, match="^could not push .* checkpoint is intact"):
        run_in_process("--data-dir", data_dir, "--run-dir", tmp_path, "--max-steps", 1, "--micro-batch-size", 4,
                       "--total-batch-tokens", 4 * SEQ, "--push-to-hub", "someone/gpt2repro-test")
    assert events[-3:] == ["barrier", "finish", "push"]  # the run's last barrier, its trackers closed, then the push
    assert "push: to someone/gpt2repro-test" in capsys.readouterr().out.splitlines()[0]
    assert (tmp_path / "final" / "model.safetensors").exists()


@pytest.mark.slow
def test_a_real_runtime_error_keeps_its_traceback_while_project_errors_are_one_line(data_dir, tmp_path, monkeypatch):
    from accelerate.state import AcceleratorState

    def broken_step(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(train, "train_step", broken_step)
    common = [*TINY, "--data-dir", str(data_dir), "--run-dir", str(tmp_path), "--max-steps", "1",
              "--micro-batch-size", "4", "--total-batch-tokens", str(4 * SEQ)]
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(RuntimeError, match="illegal memory access"):  # not swallowed into `error: ...`
        train.run(common)
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(SystemExit, match="^error: --model: unknown model preset 'gpt5'"):
        train.run([*common, "--model", "gpt5"])


@pytest.mark.slow
def test_a_checkpoint_changed_on_disk_is_refused_in_one_line_and_auto_falls_back_to_the_one_before(
    data_dir, tmp_path, capsys
):
    common = ["--data-dir", data_dir, "--run-dir", tmp_path, "--micro-batch-size", 4, "--total-batch-tokens", 4 * SEQ]
    run_in_process(*common, "--max-steps", 3, "--save-every", 1, "--keep-checkpoints", 3)
    import shutil

    shutil.rmtree(tmp_path / "final")
    newest = tmp_path / "checkpoint-000002"
    weights_file = newest / "training_state" / "model.safetensors"
    data = bytearray(weights_file.read_bytes())
    data[len(data) // 2] ^= 0x10  # one flipped bit in a weight: safetensors would load it as it is
    weights_file.write_bytes(bytes(data))

    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(SystemExit) as exit_info:
        train.run([*TINY, *map(str, common), "--max-steps", "3", "--resume", str(newest)])
    message = str(exit_info.value)
    assert message.startswith(f"error: {newest}: training_state/model.safetensors differs from the file saved")
    assert "\n" not in message
    assert not (tmp_path / "final").exists()

    capsys.readouterr()
    run_in_process(*common, "--max-steps", 3, "--resume", "auto")
    out = capsys.readouterr().out
    assert "trying the checkpoint before it" in out
    assert f"resumed from {tmp_path / 'checkpoint-000001'} at step 1" in out


@pytest.mark.slow
def test_resuming_from_an_earlier_checkpoint_abandons_the_later_branch(data_dir, tmp_path):
    common = ["--data-dir", data_dir, "--run-dir", tmp_path, "--micro-batch-size", 4, "--total-batch-tokens", 4 * SEQ]
    run_in_process(*common, "--max-steps", 4, "--save-every", 1, "--keep-checkpoints", 4)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')  # the torn last line a kill -9 mid-append leaves
    run_in_process(*common, "--max-steps", 4, "--resume", tmp_path / "checkpoint-000001", "--save-every", 0)
    # the first run's checkpoints 2 and 3 and its final were removed, then this run saved its own final
    assert [p.name for p in find_resume_checkpoint("auto", tmp_path)] == ["final", "checkpoint-000001"]
    assert [r["step"] for r in metrics(tmp_path) if "loss" in r] == [1, 2, 3, 4]  # no step logged twice


@pytest.mark.slow
def test_a_fresh_run_refuses_a_directory_holding_another_runs_checkpoints(data_dir, tmp_path, monkeypatch):
    common = ["--data-dir", data_dir, "--run-dir", tmp_path, "--micro-batch-size", 4, "--total-batch-tokens", 4 * SEQ,
              "--max-steps", 1]
    run_in_process(*common)
    with pytest.raises(SettingsError, match="holds another run's checkpoints; continue it with --resume auto"):
        run_in_process(*common)
    # a group that torch elastic restarts resumes from the newest checkpoint, whatever --resume said
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    _, s = parse_settings([*TINY, *map(str, common), "--resume", str(tmp_path / "gone")])
    assert train.resume_candidates(s) == [tmp_path / "final"]


@pytest.mark.slow
def test_a_malformed_hellaswag_file_named_by_the_user_stops_the_run(data_dir, tmp_path):
    bad = tmp_path / "hellaswag.jsonl"
    bad.write_text('{"ind": 1}\n')
    result = run_cli("--data-dir", data_dir, "--run-dir", tmp_path / "r", "--max-steps", 1, "--micro-batch-size", 4,
                     "--total-batch-tokens", 4 * SEQ, "--hellaswag", bad)
    assert result.returncode != 0 and "malformed HellaSwag item" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_the_tiny_default_prepares_its_data_on_first_use_through_the_prepare_data_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # data/tinyshakespeare is relative to where train.py runs
    accelerator = type("OneProcess", (), {"is_main_process": True, "wait_for_everyone": lambda self: None})()
    train.prepare_default_data(Settings(), accelerator)
    manifest = json.loads((tmp_path / Settings.data_dir / "manifest.json").read_text())
    assert manifest["complete"] and manifest["splits"]["val"]["tokens"] > 0


# ---- what a new user meets: reruns, --help, the console, the curves ----


def snapshot(run_dir):
    """{path: (mtime_ns, bytes)} of every file under run_dir."""
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_rerunning_a_finished_run_is_a_no_op_that_says_so_and_changes_no_file(data_dir, tmp_path, capsys):
    common = ["--data-dir", data_dir, "--run-dir", tmp_path, "--max-steps", 2, "--micro-batch-size", 4,
              "--total-batch-tokens", 4 * SEQ, "--log-with", "tensorboard", "--resume", "auto"]
    run_in_process(*common)  # --resume auto with nothing to resume starts afresh, as `make demo` does
    before = snapshot(tmp_path)
    capsys.readouterr()
    time.sleep(0.01)  # a rewrite would show in the mtimes
    run_in_process(*common)
    out = capsys.readouterr().out
    assert f"{tmp_path} is finished: {tmp_path / 'final'} holds step 2 of --max-steps 2; nothing to do" in out
    assert "resumed from" not in out and "step     " not in out
    assert snapshot(tmp_path) == before
    # asking for more steps continues the run
    run_in_process(*[str(a) for a in common[:4]], "--max-steps", 3, *map(str, common[6:]))
    out = capsys.readouterr().out
    assert f"resumed from {tmp_path / 'final'} at step 2" in out and "step     3/3" in out


@pytest.mark.slow
def test_evaluation_lines_name_their_step_no_samples_at_zero_tokens_and_the_end_names_report_and_curves(
        data_dir, tmp_path, capsys):
    run_in_process("--data-dir", data_dir, "--run-dir", tmp_path, "--max-steps", 2, "--micro-batch-size", 4,
                   "--total-batch-tokens", 4 * SEQ, "--eval-every", 1, "--sample-tokens", 0)
    out = capsys.readouterr().out
    assert "eval     1/2 | val_loss " in out and "eval     2/2 | val_loss " in out
    assert "sample:" not in out
    assert f"report: {tmp_path / 'report.md'} | curves: {tmp_path / 'curves.png'}" in out
    # the saved tokenizer claims the model's context (tiny: 256 positions), not GPT-2's 1,024
    saved = json.loads((tmp_path / "final" / "tokenizer_config.json").read_text())
    assert saved["model_max_length"] == 256


@pytest.mark.slow
def test_saving_says_nothing_about_the_tied_lm_head_and_draws_no_one_shard_bar(data_dir, tmp_path, capfd, caplog):
    from transformers.utils import logging as transformers_logging

    with caplog.at_level(logging.WARNING):  # pytest routes log records here, not to stderr
        run_in_process("--data-dir", data_dir, "--run-dir", tmp_path, "--max-steps", 1, "--micro-batch-size", 4,
                       "--total-batch-tokens", 4 * SEQ)
    captured = capfd.readouterr()
    assert "Removed shared tensor" not in captured.err + captured.out + caplog.text
    assert "Writing model shards" not in captured.err
    assert transformers_logging.is_progress_bar_enabled()  # silenced for the save only
    # any other shared tensor still warns
    from gpt2repro.checkpoints import _TiedWeightsNotice

    def record(message):
        return logging.LogRecord("accelerate.utils.other", 30, __file__, 1, message, None, None)

    notice = _TiedWeightsNotice()
    assert not notice.filter(record("[RANK 0] Removed shared tensor {'lm_head.weight'} while saving. check"))
    assert notice.filter(record("Removed shared tensor {'lm_head.weight', 'h.0.mlp.c_fc.weight'} while saving"))


@pytest.mark.slow
def test_hellaswag_auto_offline_names_train_pys_own_flag(data_dir, tmp_path, capsys, monkeypatch):
    from gpt2repro import hellaswag

    monkeypatch.setenv("GPT2REPRO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hellaswag, "HELLASWAG_VAL_URL", "http://127.0.0.1:9/hellaswag_val.jsonl")  # nothing listens
    run_in_process("--data-dir", data_dir, "--run-dir", tmp_path / "run", "--max-steps", 1, "--micro-batch-size", 4,
                   "--total-batch-tokens", 4 * SEQ, "--hellaswag", "auto")
    notice = next(line for line in capsys.readouterr().out.splitlines() if "HellaSwag skipped" in line)
    assert "--hellaswag hellaswag_val.jsonl" in notice and "--data " not in notice


def rows_of_a_run(evaluations, hellaswag):
    rows = [{"step": s, "loss": 10.0 - 0.1 * s} for s in range(1, max(evaluations) + 1)]
    for s in evaluations:
        scores = {"hellaswag_completion_acc_norm": 0.26, "hellaswag_lm_eval_acc_norm": 0.27} if hellaswag else {}
        rows.append({"step": s, "val_loss": 6.0, "val_bpb": 2.3, **scores})
    return rows


def test_curves_have_no_empty_hellaswag_panel_integer_steps_and_legends_off_the_data():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from gpt2repro import report

    fig = report.curves_figure(rows_of_a_run([3], hellaswag=False), None)
    canvas = FigureCanvasAgg(fig)  # the canvas savefig draws the PNG with
    canvas.draw()
    renderer = canvas.get_renderer()
    assert [ax.get_title() for ax in fig.axes] == ["loss", "validation bits per byte"]
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert all(float(t).is_integer() for t in ticks), ticks
        assert ax.get_xlim()[0] <= 0 and ax.get_xlim()[1] >= 3  # one evaluation sits on the run's step axis
        assert not ax.get_legend().get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))


def test_curves_with_hellaswag_draw_both_conventions_and_both_gpt2_references():
    from gpt2repro import report

    fig = report.curves_figure(rows_of_a_run([2, 4], hellaswag=True), None)
    ax = fig.axes[2]
    assert ax.get_title() == "HellaSwag"
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["acc_norm (completion)", "OpenAI GPT-2 124M (completion)", "acc_norm (lm-eval)",
                      "OpenAI GPT-2 124M (lm-eval)"]
    levels = sorted(line.get_ydata()[0] for line in ax.get_lines() if "OpenAI" in line.get_label())
    assert levels == [0.2955, 0.3114]


# ---- --init-from: training on from any GPT-2 ----

NO_MODEL = [arg for i, arg in enumerate(TINY) if arg != "--model" and TINY[i - 1] != "--model"]  # size: the weights'


def gpt2_folder(path, n_positions=64):
    """A GPT2LMHeadModel as any save_pretrained folder holds one: random weights, its embedding scaled up so that its
    loss is far from a fresh initialization's (about ln 50257)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    with torch.random.fork_rng():
        torch.manual_seed(7)
        model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=n_positions))
    with torch.no_grad():
        model.transformer.wte.weight.mul_(20)
    model.save_pretrained(path)
    return path


def test_init_from_takes_the_size_of_the_weights_and_refuses_another_model_in_one_line(data_dir, tmp_path):
    from gpt2repro.settings import check_settings

    base = str(gpt2_folder(tmp_path / "gpt2"))
    _, s = parse_settings(["--init-from", base, "--data-dir", str(data_dir), "--seq-len", "32"])
    config, _, _ = check_settings(s, 1)
    assert (config.n_layer, config.n_embd, config.n_positions, config.vocab_size) == (2, 64, 64, 50257)
    _, s = parse_settings(["--preset", "gpt2-124m", "--init-from", base, "--data-dir", str(data_dir), "--seq-len", "32",
                           "--micro-batch-size", "1", "--total-batch-tokens", "32"])
    assert check_settings(s, 1)[0].n_layer == 2  # the preset's size gives way to the weights'
    _, s = parse_settings(["--init-from", base, "--model", "gpt2-124m", "--data-dir", str(data_dir)])
    with pytest.raises(SettingsError) as error:
        check_settings(s, 1)
    assert str(error.value).startswith(f"--model gpt2-124m conflicts with --init-from {base}, whose weights have 2 "
                                       "layers of width 64") and "drop --model" in str(error.value)
    assert "\n" not in str(error.value)


def test_init_from_a_name_offline_with_no_cached_copy_is_one_line(data_dir, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from gpt2repro.settings import check_settings

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))  # HF_HUB_OFFLINE=1 (conftest)
    _, s = parse_settings(["--init-from", "gpt2", "--data-dir", str(data_dir)])
    with pytest.raises(SettingsError) as error:
        check_settings(s, 1)
    message = str(error.value)
    assert message.startswith("--init-from gpt2: cannot read the config.json of the Hub repo openai-community/gpt2")
    assert "HF_HUB_OFFLINE=1" in message and "local folder" in message and "\n" not in message


def test_init_from_openai_names_and_hub_repos_loads_gpt2_weights_tied(hub, tmp_path, monkeypatch):
    from huggingface_hub import constants
    from transformers import GPT2LMHeadModel

    from gpt2repro.export import base_model, load_pretrained, pretrained_config

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    gpt2_folder(hub.repo("openai-community/gpt2-medium"))  # the stand-in Hub serves it under OpenAI's id
    assert pretrained_config("gpt2-medium").n_layer == 2
    model = load_pretrained("gpt2-medium")
    assert model.lm_head.weight is model.transformer.wte.weight and model.dtype == torch.float32
    reference = GPT2LMHeadModel.from_pretrained(hub.repo("openai-community/gpt2-medium")).eval()
    ids = torch.randint(0, 50257, (1, 12))
    with torch.no_grad():
        assert (model.eval()(ids).logits - reference(ids).logits).abs().max() < 1e-5
    assert base_model("gpt2-medium") == {"name": "gpt2-medium", "hub_id": "openai-community/gpt2-medium"}
    assert base_model(str(tmp_path)) == {"name": str(tmp_path), "hub_id": None}  # a local folder links no repo


@pytest.mark.slow
def test_init_from_a_gpt2_folder_starts_at_its_loss_keeps_the_head_tied_and_records_the_base(data_dir, tmp_path):
    import torch.nn.functional as F
    from accelerate.state import AcceleratorState
    from huggingface_hub import ModelCard
    from transformers import GPT2LMHeadModel

    from gpt2repro.token_shards import ShardedTokenLoader

    base, run = gpt2_folder(tmp_path / "gpt2"), tmp_path / "run"
    AcceleratorState._reset_state(reset_partial_state=True)
    train.main([*NO_MODEL, "--init-from", str(base), "--data-dir", str(data_dir), "--run-dir", str(run),
                "--max-steps", "2", "--micro-batch-size", "4", "--total-batch-tokens", str(4 * SEQ),
                "--sample-tokens", "0"])
    # the first step's loss is the GPT-2's own on the run's first batch: its weights, not a fresh init
    window = ShardedTokenLoader(data_dir, "train", 4, SEQ, 0, 1, seed=Settings.seed).next_batch(torch.device("cpu"))
    gpt2 = GPT2LMHeadModel.from_pretrained(base).eval()
    with torch.no_grad():
        logits = gpt2(window[:, :-1]).logits
    expected = F.cross_entropy(logits.reshape(-1, logits.size(-1)), window[:, 1:].reshape(-1)).item()
    assert logged(run, "loss")[0] == pytest.approx(expected, rel=1e-5) and abs(expected - math.log(50257)) > 1
    # trained on, with lm_head still the embedding: one tensor saved, and it moved
    final = weights(run / "final")
    assert "lm_head.weight" not in final and json.loads((run / "final" / "config.json").read_text())[
        "tie_word_embeddings"]
    assert not torch.equal(final["transformer.wte.weight"][:50257], gpt2.transformer.wte.weight)
    report = json.loads((run / "report.json").read_text())
    assert report["base_model"] == {"name": str(base), "hub_id": None}
    card = ModelCard.load(run / "final" / "README.md")
    assert "started from the weights of the local folder `gpt2`" in card.text and card.data.base_model is None
    assert "pretrained-from-scratch" not in card.data.tags and str(tmp_path) not in card.text.split("## Reproduce")[0]


def test_init_from_one_of_our_checkpoints_loads_its_weights_as_they_are(tiny_config, tmp_path):
    from modeling_gpt2repro import GPT2ReproForCausalLM

    from gpt2repro.export import load_pretrained, pretrained_config, save_ours

    ours = GPT2ReproForCausalLM(tiny_config).eval()
    save_ours(ours, tmp_path / "final")
    assert pretrained_config(str(tmp_path / "final")).n_positions == tiny_config.n_positions
    loaded = load_pretrained(str(tmp_path / "final"))
    assert type(loaded) is GPT2ReproForCausalLM and loaded.lm_head.weight is loaded.transformer.wte.weight
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), ours.state_dict().values()))
