"""The one-command reproduction: its dry run plans the right commands for the GPUs and the data found, and
bad input is refused with one line. Nothing here launches training."""

import importlib.util
import os
import shlex
import signal
import sys

import numpy as np
import pytest
import torch
from gpt2repro.checkpoints import STATE_FILE
from conftest import REPO

from gpt2repro.token_shards import MANIFEST_NAME, write_manifest, write_shard

spec = importlib.util.spec_from_file_location("reproduce_gpt2", REPO / "scripts" / "reproduce_gpt2.py")
reproduce = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reproduce)


def make_data(data_dir, complete=True):
    """A prepared data directory in miniature: one val and one train shard and their manifest."""
    data_dir.mkdir(parents=True)
    shards = []
    for split in ("val", "train"):
        name = f"{data_dir.name}_{split}_000000.bin"
        write_shard(data_dir / name, np.arange(100, dtype=np.uint16))
        shards.append({"file": name, "split": split, "tokens": 100})
    write_manifest(data_dir, {"format_version": 1, "name": data_dir.name, "source": {}, "tokenizer": "test",
                              "shards": shards, "splits": {}, "complete": complete})
    return data_dir


@pytest.fixture
def run_dir(tmp_path):
    return tmp_path / "run"


@pytest.fixture
def data(tmp_path):
    return make_data(tmp_path / "fineweb-edu-10b")


def plan(capsys, *args) -> list[list[str]]:
    """The commands a dry run prints, each split back into its arguments."""
    reproduce.main(["--dry-run", *args])
    return [shlex.split(line) for line in capsys.readouterr().out.splitlines()]


def refusal(capsys, *args) -> str:
    """The one-line error of a dry run that must not go ahead."""
    with pytest.raises(SystemExit) as exit_info:
        reproduce.main(["--dry-run", *args])
    assert capsys.readouterr().out == ""  # not a single command planned
    message = exit_info.value.code
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message
    return message


def train_command(commands) -> tuple[list[str], list[str]]:
    """(accelerate launch's arguments, train.py's arguments) of the planned training command."""
    [command] = [c for c in commands if "train.py" in c]
    split = command.index("train.py")
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    return command[3:split], command[split + 1:]


def flag(args, name):
    """The last value given to `name` (the one argparse keeps), or None."""
    values = [args[i + 1] for i, arg in enumerate(args) if arg == name]
    return values[-1] if values else None


def test_one_gpu_trains_with_the_1gpu_config_resuming_automatically_then_evaluates_against_gpt2_and_reports(
        capsys, data, run_dir):
    commands = plan(capsys, "--gpus", "1", "--run-dir", str(run_dir), "--", "--data-dir", str(data))
    assert len(commands) == 3  # complete data: nothing to prepare
    launch, args = train_command(commands)
    assert launch == ["--config_file", "accelerate_configs/1gpu.yaml"]
    assert (flag(args, "--preset"), flag(args, "--resume")) == ("gpt2-124m", "auto")
    assert flag(args, "--run-dir") == str(run_dir)
    assert flag(args, "--micro-batch-size") is None  # 64 x 1024 divides 524,288: the preset's own
    assert commands[1] == [sys.executable, "eval_hellaswag.py", "--model", str(run_dir / "final"), "--model", "gpt2",
                           "--val-data", str(data), "--output", str(run_dir / "eval_results.json")]
    assert commands[2] == [sys.executable, "run_report.py", str(run_dir),
                           "--eval-results", str(run_dir / "eval_results.json")]


@pytest.mark.parametrize("gpus, launch, micro_batch", [
    (8, ["--config_file", "accelerate_configs/8gpu.yaml"], None),
    (4, ["--multi_gpu", "--num_processes", "4"], None),
    (16, ["--multi_gpu", "--num_processes", "16"], "32"),  # 64 x 1024 x 16 is twice the batch: halve the micro-batch
])
def test_the_launch_fits_the_gpu_count_and_the_micro_batch_divides_the_524288_token_batch(
        capsys, data, run_dir, gpus, launch, micro_batch):
    reproduce.main(["--dry-run", "--gpus", str(gpus), "--run-dir", str(run_dir), "--", "--data-dir", str(data)])
    out, err = capsys.readouterr()
    launch_args, args = train_command([shlex.split(line) for line in out.splitlines()])
    assert launch_args == launch
    assert flag(args, "--micro-batch-size") == micro_batch
    assert 524_288 % (int(micro_batch or 64) * 1024 * gpus) == 0
    assert ("--micro-batch-size 32, not 64" in err) == (micro_batch is not None)  # a lowered micro-batch is said


def test_a_batch_that_cannot_split_over_the_gpus_is_refused_with_one_line(capsys, data, run_dir):
    message = refusal(capsys, "--gpus", "3", "--run-dir", str(run_dir), "--", "--data-dir", str(data))
    assert "524,288-token batch" in message and "3 GPUs" in message


def test_steps_print_numbered_banners_on_stderr_and_only_commands_on_stdout(capsys, data, run_dir):
    reproduce.main(["--dry-run", "--gpus", "8", "--run-dir", str(run_dir), "--", "--data-dir", str(data)])
    out, err = capsys.readouterr()
    banners = [line for line in err.splitlines() if line.startswith("== step")]
    assert [b.split(":")[0] for b in banners] == [f"== step {i}/4" for i in range(1, 5)]
    assert "skipped" in banners[0] and "== step 2/4: train ==" in banners
    assert not any(line.startswith("==") for line in out.splitlines())


def test_absent_data_is_prepared_first_by_its_data_preset(capsys, monkeypatch, tmp_path, run_dir):
    for name in reproduce.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    data = tmp_path / "fineweb-edu-10b"
    commands = plan(capsys, "--gpus", "8", "--run-dir", str(run_dir), "--", "--data-dir", str(data))
    assert commands[0] == [sys.executable, "prepare_data.py", "fineweb-edu-10b", "--out", str(data), "--from-hub"]
    assert "train.py" in commands[1] and [c[1] for c in commands[2:]] == ["eval_hellaswag.py", "run_report.py"]
    assert not data.exists() and not run_dir.exists()  # a dry run writes nothing


def test_the_dry_run_shows_the_download_and_says_it_falls_back_to_tokenizing(capsys, monkeypatch, tmp_path, run_dir):
    for name in reproduce.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    data = tmp_path / "fineweb-edu-10b"
    reproduce.main(["--dry-run", "--gpus", "8", "--run-dir", str(run_dir), "--", "--data-dir", str(data)])
    out, err = capsys.readouterr()
    assert out.splitlines()[0].endswith(f"prepare_data.py fineweb-edu-10b --out {data} --from-hub")
    assert "kjj0/finewebedu10B-gpt2" in err and "if that fails, tokenizing" in err
    commands = plan(capsys, "--tokenize", "--gpus", "8", "--run-dir", str(run_dir), "--", "--data-dir", str(data))
    assert commands[0] == [sys.executable, "prepare_data.py", "fineweb-edu-10b", "--out", str(data)]


def test_a_failed_download_falls_back_to_tokenizing_and_says_so(capsys, monkeypatch, tmp_path):
    for name in reproduce.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    ran = []

    def run_command(name, command, stop_on_failure=True):  # the download fails, tokenizing works
        ran.append(command[2:])
        return "--from-hub" not in command

    monkeypatch.setattr(reproduce, "run_command", run_command)
    data = tmp_path / "fineweb-edu-10b"
    reproduce.prepare_data_step(reproduce.Steps(dry_run=False), str(data))
    assert ran == [["fineweb-edu-10b", "--out", str(data), "--from-hub"],
                   ["fineweb-edu-10b", "--out", str(data), "--overwrite"]]
    err = capsys.readouterr().err
    assert "the download failed, so tokenizing" in err and "== step 1/4: data (again) ==" in err


def test_half_prepared_data_is_handed_back_to_prepare_data_which_resumes_it(capsys, monkeypatch, tmp_path, run_dir):
    for name in reproduce.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    data = make_data(tmp_path / "fineweb-edu-10b", complete=False)
    commands = plan(capsys, "--gpus", "8", "--run-dir", str(run_dir), "--", "--data-dir", str(data))
    assert commands[0] == [sys.executable, "prepare_data.py", "fineweb-edu-10b", "--out", str(data)]


def test_the_training_preset_chooses_the_data_preset(capsys, monkeypatch, tmp_path, run_dir):
    for name in reproduce.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(reproduce, "ROOT", tmp_path / "checkout")  # a checkout without data/fineweb-10b prepared
    commands = plan(capsys, "--preset", "gpt2-124m-fineweb", "--gpus", "8", "--run-dir", str(run_dir))
    assert commands[0] == [sys.executable, "prepare_data.py", "fineweb-10b", "--from-hub"]  # into data/fineweb-10b
    assert flag(commands[2], "--val-data") == os.path.join("data", "fineweb-10b")


def test_absent_data_while_offline_is_refused_up_front(capsys, monkeypatch, tmp_path, run_dir):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = tmp_path / "fineweb-edu-10b"
    message = refusal(capsys, "--gpus", "8", "--run-dir", str(run_dir), "--", "--data-dir", str(data))
    assert "HF_HUB_OFFLINE" in message and str(data) in message


@pytest.mark.parametrize("damage", ["no manifest", "corrupt manifest"])
def test_data_that_prepare_data_cannot_resume_is_refused_with_one_line(capsys, tmp_path, run_dir, damage):
    data = make_data(tmp_path / "fineweb-edu-10b", complete=False)
    if damage == "no manifest":
        (data / MANIFEST_NAME).unlink()
    else:
        (data / MANIFEST_NAME).write_text('{"format_version": 1, "shards": [')
    message = refusal(capsys, "--gpus", "8", "--run-dir", str(run_dir), "--", "--data-dir", str(data))
    assert str(data) in message and ("--overwrite" in message or "delete it" in message)


def test_absent_data_that_no_data_preset_makes_is_refused_with_one_line(capsys, tmp_path, run_dir):
    data = tmp_path / "my-corpus"
    message = refusal(capsys, "--gpus", "8", "--run-dir", str(run_dir), "--", "--data-dir", str(data))
    assert f"prepare_data.py CORPUS --out {data}" in message


def test_a_finished_run_skips_training_and_an_evaluated_one_skips_evaluation(capsys, data, run_dir):
    (run_dir / "final" / "training_state").mkdir(parents=True)
    (run_dir / "final" / STATE_FILE).write_text('{"step": 100}')
    args = ["--gpus", "8", "--run-dir", str(run_dir), "--", "--data-dir", str(data), "--max-steps", "100"]
    assert [c[1] for c in plan(capsys, *args)] == ["eval_hellaswag.py", "run_report.py"]
    (run_dir / "eval_results.json").write_text("{}")
    assert [c[1] for c in plan(capsys, *args)] == ["run_report.py"]


def test_a_shorter_run_left_in_the_run_dir_is_not_taken_for_the_reproduction(capsys, data, run_dir):
    (run_dir / "final" / "training_state").mkdir(parents=True)
    (run_dir / "final" / STATE_FILE).write_text('{"step": 100}')  # a trial with -- --max-steps 100
    message = refusal(capsys, "--gpus", "8", "--run-dir", str(run_dir), "--", "--data-dir", str(data))
    assert "trained for 100 steps, this run asks for 19073" in message and "--run-dir" in message


def test_no_gpu_is_refused_with_one_line_unless_the_cpu_is_allowed(capsys, data, run_dir):
    args = ["--gpus", "0", "--run-dir", str(run_dir), "--", "--data-dir", str(data)]
    message = refusal(capsys, *args)
    assert message.startswith("error: no GPU found") and "run train.py directly" in message
    launch, _ = train_command(plan(capsys, "--allow-cpu", *args))
    assert launch == ["--config_file", "accelerate_configs/cpu.yaml"]


def test_a_dry_run_without_a_gpu_plans_for_an_eight_gpu_node_and_says_how_to_change_it(capsys, monkeypatch, data,
                                                                                       run_dir):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # this machine: no GPU
    reproduce.main(["--dry-run", "--run-dir", str(run_dir), "--", "--data-dir", str(data)])
    captured = capsys.readouterr()
    launch, _ = train_command([shlex.split(line) for line in captured.out.splitlines()])
    assert launch == ["--config_file", "accelerate_configs/8gpu.yaml"]
    assert "no GPU here: planning for 8 GPUs; --gpus N plans for N" in captured.err


def test_the_muon_dry_run_plans_its_preset_and_prints_its_cost_next_to_the_adamw_recipe_s(capsys, monkeypatch, data,
                                                                                            run_dir):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    reproduce.main(["--preset", "gpt2-124m-muon", "--dry-run", "--run-dir", str(run_dir), "--", "--data-dir",
                    str(data)])
    captured = capsys.readouterr()
    _, args = train_command([shlex.split(line) for line in captured.out.splitlines()])
    assert flag(args, "--preset") == "gpt2-124m-muon"
    muon, adamw = (line for line in captured.err.splitlines() if line.startswith("  gpt2-124m"))
    assert muon.startswith("  gpt2-124m-muon (muon, wsd): 6,500 steps") and "3.41B tokens" in muon
    assert adamw.startswith("  gpt2-124m (adamw, cosine): 19,073 steps") and "10.00B tokens" in adamw
    cost = [float(line.rsplit("$", 1)[1].replace(",", "")) for line in (muon, adamw)]
    assert cost[0] / cost[1] == pytest.approx(6_500 / 19_073, rel=0.1)  # the same model and batch: steps decide


def test_an_unknown_preset_is_refused_with_one_line(capsys):
    message = refusal(capsys, "--preset", "gpt2-125m", "--gpus", "8")
    assert "gpt2-125m" in message and "gpt2-124m" in message  # names the mistake and the choices


def test_options_and_the_args_after_the_double_dash_reach_train_py_shell_quoted(capsys, data, tmp_path):
    run_dir = tmp_path / "my run"  # a space: the printed command must still split back into the same arguments
    commands = plan(capsys, "--gpus", "8", "--run-dir", str(run_dir), "--gpu-hour-usd", "2.5",
                    "--", "--data-dir", str(data), "--max-steps", "10")
    _, args = train_command(commands)
    assert args[-4:] == ["--data-dir", str(data), "--max-steps", "10"]  # last: the user's flags win
    assert flag(args, "--gpu-hour-usd") == "2.5" and flag(args, "--run-dir") == str(run_dir)
    assert commands[-1][2] == str(run_dir)


def test_a_failing_step_says_how_to_continue_and_exits_with_its_code(capsys):
    with pytest.raises(reproduce.StepFailed) as failure:
        reproduce.run_command("train", [sys.executable, "-c", "raise SystemExit(3)"])
    assert failure.value.exit_code == 3  # the command's exit status becomes ours (errors.cli)
    assert str(failure.value) == "train failed (exit 3); rerun the same command to continue"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_lets_the_running_step_save_and_finish_instead_of_killing_it(tmp_path, signum):
    # The child signals us, as a terminal's Ctrl-C or a scheduler's SIGTERM would; it needs time after that to save.
    saved = tmp_path / "saved"
    child = (f"import os, signal, sys, time\n"
             f"signal.signal(signal.SIGTERM, lambda *_: (open({str(saved)!r}, 'w').close(), sys.exit(0)))\n"
             f"os.kill(os.getppid(), {int(signum)})\n"
             f"time.sleep(0.5)\n"
             f"open({str(saved)!r}, 'w').close()\n")
    reproduce.run_command("train", [sys.executable, "-c", child])  # SIGTERM is passed on, SIGINT waited out
    assert saved.exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # our own handlers are back


def test_training_that_stops_without_a_final_checkpoint_is_not_evaluated(run_dir):
    with pytest.raises(reproduce.ReproduceError, match="rerun the same command to continue"):
        reproduce.train_step(reproduce.Steps(dry_run=False), [sys.executable, "-c", "pass"], str(run_dir), 10)
