"""Faults a long run meets: a full disk, out-of-memory, a damaged shard, a checkpoint changed on disk, bad numbers."""

import contextlib
import fcntl
import json
import os
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, SEQ, TINY, assert_same_weights, launcher, logged, run_cli, run_in_process, train_argv

import prepare_data
import train
from gpt2repro import checkpoints
from gpt2repro.checkpoints import STATE_FILE, find_resume_checkpoint
from gpt2repro.dir_lock import GUARD_NAME, LOCK_NAME
from gpt2repro.token_shards import write_shard


def run_for_error(*args) -> str:
    """train.run's one line (it exits with it), after resetting Accelerate's process-wide state."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(SystemExit) as exit_info:
        train.run([*TINY, *map(str, args)])
    message = str(exit_info.value)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


# ---- a full disk ----


@contextlib.contextmanager
def files_limited_to(size: int):
    """`ulimit -f` in this process for the block: a write past `size` bytes fails with EFBIG, as on a full disk."""
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, limits[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)


FULL_DISK_RUN = ["--max-steps", 4, "--micro-batch-size", 4, "--total-batch-tokens", 4 * SEQ, "--save-every", 1,
                 "--keep-checkpoints", 3]


def a_run_on_a_full_disk(data_dir, tmp_path, monkeypatch, owner, name, failing, *options) -> tuple[str, Path]:
    """The reference run (tmp_path/whole), then the same run (tmp_path/run) with `owner.name` replaced by `failing`,
    a write that meets a full disk: its one line, which must name the command that continues, and its directory."""
    common = ["--data-dir", data_dir, *FULL_DISK_RUN, *options]
    run_in_process(*common, "--run-dir", tmp_path / "whole")
    run = tmp_path / "run"
    with monkeypatch.context() as patched:
        patched.setattr(owner, name, failing)
        message = run_for_error(*common, "--run-dir", run)
    assert message.endswith("--resume auto") and "continue with: python train.py" in message
    return message, run


def continue_as_told(message: str, tmp_path) -> None:
    """Run the command the line names: the run must end as the reference did, in its weights and every loss."""
    run_in_process(*shlex.split(message.split("continue with: python train.py ")[1])[len(TINY):])
    assert_same_weights(tmp_path / "whole" / "final", tmp_path / "run" / "final")
    assert logged(tmp_path / "run", "loss") == logged(tmp_path / "whole", "loss")


@pytest.mark.slow
def test_a_full_disk_save_names_the_intact_checkpoint_removes_the_temp_folder_and_resumes_bit_identical(
    data_dir, tmp_path, monkeypatch
):
    save_checkpoint, saves = train.save_checkpoint, []

    def second_save_on_a_full_disk(*args, **kwargs):  # as `ulimit -f`: writes past 40 MB fail with EFBIG
        saves.append(args[2])
        if len(saves) != 2:
            return save_checkpoint(*args, **kwargs)
        with files_limited_to(40 * 2**20):  # the tiny optimizer state is ~58 MB
            return save_checkpoint(*args, **kwargs)

    message, run = a_run_on_a_full_disk(data_dir, tmp_path, monkeypatch, train, "save_checkpoint",
                                        second_save_on_a_full_disk)
    assert message.startswith(f"error: could not write checkpoint {run / 'checkpoint-000002'} (")
    assert f"the newest intact checkpoint is {run / 'checkpoint-000001'}" in message
    assert not list(run.glob(".tmp-*")) and [p.name for p in run.glob("checkpoint-*")] == ["checkpoint-000001"]
    continue_as_told(message, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("log_with", ["none", "tensorboard"])
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")  # a traceback beside the line
def test_a_full_disk_while_logging_ends_in_one_line_and_the_resume_is_exact(data_dir, tmp_path, monkeypatch,
                                                                            log_with):
    from gpt2repro.run_log import RunLog

    log_metrics, rows = RunLog.metrics, []

    def third_row_on_a_full_disk(self, step, values):  # as `ulimit -f`: files stop growing mid-write (EFBIG)
        rows.append(step)
        if len(rows) != 3:
            return log_metrics(self, step, values)
        # metrics.jsonl: a torn row; tensorboard: its event file cannot grow at all (the tracker writes first)
        room = 20 if log_with == "none" else 0
        with files_limited_to(self.run_dir.metrics.stat().st_size + room):
            return log_metrics(self, step, values)

    message, run = a_run_on_a_full_disk(data_dir, tmp_path, monkeypatch, RunLog, "metrics", third_row_on_a_full_disk,
                                        "--log-with", log_with)
    assert message.startswith(f"error: could not write the run's logs in {run} (")
    assert f"the newest intact checkpoint is {run / 'checkpoint-000002'}" in message
    if log_with == "none":
        assert not (run / "metrics.jsonl").read_text().endswith("\n")  # the torn row the resume drops
    continue_as_told(message, tmp_path)


@pytest.mark.slow
def test_a_full_disk_while_writing_the_report_at_a_save_ends_in_one_line_and_the_resume_is_exact(data_dir, tmp_path,
                                                                                             monkeypatch):
    write_report, reports = train.write_report, []

    def third_report_on_a_full_disk(run_dir, facts):  # as `ulimit -f`: no file can grow
        reports.append(facts["steps"])
        if len(reports) != 3:
            return write_report(run_dir, facts)
        with files_limited_to(0):
            return write_report(run_dir, facts)

    message, run = a_run_on_a_full_disk(data_dir, tmp_path, monkeypatch, train, "write_report",
                                        third_report_on_a_full_disk)
    assert message.startswith(f"error: could not write the run's logs in {run} (")
    assert f"the newest intact checkpoint is {run / 'checkpoint-000002'}" in message
    continue_as_told(message, tmp_path)


@pytest.mark.slow
def test_the_startup_space_check_warns_and_require_disk_refuses(data_dir, tmp_path, monkeypatch, capsys):
    real = shutil.disk_usage
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda path: real(path)._replace(free=100 * 2**20))
    common = ["--data-dir", data_dir, "--micro-batch-size", 4, "--total-batch-tokens", 4 * SEQ, "--max-steps", 3,
              "--save-every", 1, "--keep-checkpoints", 2]
    message = run_for_error(*common, "--run-dir", tmp_path / "refused", "--require-disk")
    # tiny: 7.3M parameters x 16 bytes + 16 MB a checkpoint; 2 kept, final/ and the one being written: 3 of them
    assert message.startswith("error: the run's checkpoints need about 0.4 GB (3 x 0.13 GB: 2 kept (--keep-checkpoints"
                              "), final/ and the one being written) but ") and "has 0.1 GB free" in message
    assert not (tmp_path / "refused" / "metrics.jsonl").exists()

    run_in_process(*common, "--run-dir", tmp_path / "warned")
    out = capsys.readouterr().out
    assert "warning: the run's checkpoints need about 0.4 GB" in out and "--require-disk refuses" in out
    assert (tmp_path / "warned" / "final").exists()  # a warning only: it may still fit


# ---- out of memory ----


@pytest.mark.slow
def test_out_of_memory_halves_the_micro_batch_and_matches_a_run_started_smaller(data_dir, tmp_path, monkeypatch,
                                                                                capsys):
    from modeling_gpt2repro import GPT2ReproForCausalLM

    forward = GPT2ReproForCausalLM.forward

    def small_memory(self, input_ids=None, **kwargs):  # a GPU that holds 2 windows of activations, not more
        if input_ids is not None and self.training and input_ids.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(self, input_ids=input_ids, **kwargs)

    monkeypatch.setattr(GPT2ReproForCausalLM, "forward", small_memory)
    common = ["--data-dir", data_dir, "--max-steps", 3, "--total-batch-tokens", 8 * SEQ]
    run_in_process(*common, "--run-dir", tmp_path / "auto", "--micro-batch-size", "auto", "--save-every", 1)
    out = capsys.readouterr().out
    assert "batch: 256 tokens/step = 8 (auto) x 32 x 1 processes x 1 accumulation" in out
    assert "out of memory at micro-batch 8: going on with micro-batch 4 x 2 accumulation" in out
    assert "out of memory at micro-batch 4: going on with micro-batch 2 x 4 accumulation" in out
    run_in_process(*common, "--run-dir", tmp_path / "small", "--micro-batch-size", 2)
    assert logged(tmp_path / "auto", "loss") == logged(tmp_path / "small", "loss")
    assert logged(tmp_path / "auto", "grad_norm") == logged(tmp_path / "small", "grad_norm")
    assert_same_weights(tmp_path / "auto" / "final", tmp_path / "small" / "final")
    # recorded where a user and a resume look
    assert yaml.safe_load((tmp_path / "auto" / "settings.yaml").read_text())["micro_batch_size"] == 2
    assert json.loads((tmp_path / "auto" / "report.json").read_text())["settings"]["micro_batch_size"] == 2
    assert json.loads((tmp_path / "auto" / "checkpoint-000002" / STATE_FILE).read_text())["micro_batch_size"] == 2

    capsys.readouterr()
    run_in_process(*common, "--run-dir", tmp_path / "resumed", "--micro-batch-size", "auto",
                   "--resume", tmp_path / "auto" / "checkpoint-000002")
    out = capsys.readouterr().out
    assert "= 2 (auto) x 32 x 1 processes x 4 accumulation" in out and "out of memory" not in out
    assert_same_weights(tmp_path / "auto" / "final", tmp_path / "resumed" / "final")


# ---- a damaged shard ----


def copy_of(data_dir, where):
    shutil.copytree(data_dir, where)
    return where


def test_a_truncated_shard_is_named_at_startup_with_the_command_that_rewrites_it(data_dir, tmp_path):
    data = copy_of(data_dir, tmp_path / "data")
    shard = sorted(data.glob("*_train_*.bin"))[1]
    shard.write_bytes(shard.read_bytes()[:-100])  # a failed copy
    message = run_for_error("--data-dir", data, "--run-dir", tmp_path / "run", "--max-steps", 1)
    assert message.startswith(f"error: {shard}: truncated or corrupt shard (")
    assert "damaged after preparation: rewrite it with python prepare_data.py " in message
    assert message.endswith(f"--out {data} --overwrite")


@pytest.mark.slow
def test_a_shard_damaged_mid_run_is_named_and_re_preparing_resumes_exactly(data_dir, tmp_path, monkeypatch):
    data = tmp_path / "data"  # the fixture's corpus in 2,000-token shards: a run reaches its second shard soon
    prepare_data.main([str(data_dir.parent / "corpus.txt"), "--out", str(data), "--shard-tokens", "2000",
                       "--val-split-tokens", "2048", "--num-proc", "1"])
    step_tokens = 8 * SEQ
    loader = train.ShardedTokenLoader(data, "train", 8, SEQ, seed=train.Settings.seed)
    order, token_starts, _ = loader._epoch_layout(0)
    # checked (so refused) once a batch reaches the shard before it: any of that one's windows may run into it
    slot = next(i for i, start in enumerate(token_starts) if i and token_starts[i - 1] >= 5 * step_tokens)
    damaged = data / loader.entries[order[slot]]["file"]
    common = ["--micro-batch-size", 8, "--total-batch-tokens", step_tokens, "--save-every", 2,
              "--max-steps", int(token_starts[slot - 1]) // step_tokens + 3]
    run_in_process("--data-dir", data, "--run-dir", tmp_path / "whole", *common)

    loader_class = train.ShardedTokenLoader

    def loader_then_a_failed_copy(*args, **kwargs):  # the shard loses its tail after startup, before it is read
        loader = loader_class(*args, **kwargs)
        damaged.write_bytes(damaged.read_bytes()[:-1000])
        return loader

    monkeypatch.setattr(train, "ShardedTokenLoader", loader_then_a_failed_copy)
    run = tmp_path / "run"
    message = run_for_error("--data-dir", data, "--run-dir", run, *common)
    assert message.startswith(f"error: {damaged}: truncated or corrupt shard (")
    assert json.loads((find_resume_checkpoint("auto", run)[0] / STATE_FILE).read_text())["step"] >= 4

    monkeypatch.setattr(train, "ShardedTokenLoader", loader_class)
    command = shlex.split(message.split("rewrite it with ")[1])
    assert command[:2] == ["python", "prepare_data.py"]
    prepare_data.main(command[2:])
    run_in_process("--data-dir", data, "--run-dir", run, *common, "--resume", "auto")
    assert_same_weights(tmp_path / "whole" / "final", run / "final")
    assert logged(run, "loss") == logged(tmp_path / "whole", "loss")


# ---- bad numbers: settings out of range, token ids outside the vocabulary ----


@pytest.mark.parametrize("flag, value, expected", [
    ("--lr", "-1", "--lr -1.0: must be positive"),
    ("--lr", "nan", "--lr nan: must be positive"),
    ("--beta2", "1", "--beta2 1.0: must be in [0, 1)"),
    ("--grad-clip", "0", "--grad-clip 0.0: must be positive"),
    ("--weight-decay", "-0.1", "--weight-decay -0.1: must be 0 or more (0 turns it off)"),
    ("--min-lr-ratio", "2", "--min-lr-ratio 2.0: must be between 0 and 1"),
    ("--warmup-steps", "-5", "--warmup-steps -5: must be 0 or more (0 turns it off)"),
    ("--micro-batch-size", "0", "--micro-batch-size 0: must be positive, or auto"),
])
def test_a_setting_out_of_its_range_is_refused_in_one_line_before_anything_is_built(flag, value, expected,
                                                                                  monkeypatch, tmp_path):
    monkeypatch.setattr(train, "make_accelerator", lambda s: pytest.fail("built an Accelerator"))
    message = run_for_error("--run-dir", tmp_path, flag, value)
    assert message == f"error: {expected}"


def llmc_dir(where, train_tokens):
    where.mkdir()
    write_shard(where / "fineweb_val_000000.bin", np.arange(2048) % 50257)
    write_shard(where / "fineweb_train_000001.bin", train_tokens)
    return where


@pytest.mark.parametrize("foreign_id", [50300, 60000])  # a padding row of the embedding, and beyond the model
def test_llmc_shards_with_ids_outside_the_vocabulary_are_refused_in_one_line(tmp_path, foreign_id):
    tokens = np.arange(20_000) % 50257
    tokens[12_345] = foreign_id
    data = llmc_dir(tmp_path / "llmc", tokens)
    message = run_for_error("--data-dir", data, "--run-dir", tmp_path / "run", "--max-steps", 1)
    shard = data / "fineweb_train_000001.bin"
    assert message.startswith(f"error: {shard}: token id {foreign_id} at token 12,345 is outside the tokenizer's "
                              "vocabulary (0..50256")
    assert message.endswith("replace it with an intact copy (these llm.c shards were not written by prepare_data.py)")


@pytest.mark.slow
def test_a_full_disk_under_a_two_process_launch_ends_in_one_line(data_dir, tmp_path):
    def file_size_limit():  # `ulimit -f` for the launcher and its ranks: rank 0's optimizer state cannot be written
        resource.setrlimit(resource.RLIMIT_FSIZE, (40 * 2**20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    result = run_cli("--data-dir", data_dir, "--run-dir", tmp_path, "--max-steps", 3, "--micro-batch-size", 4,
                     "--total-batch-tokens", 8 * SEQ, "--save-every", 1, "--collective-timeout-minutes", 10,
                     launcher=launcher("cpu_2proc.yaml"), preexec_fn=file_size_limit, timeout=540)  # a hang: TimeoutExpired
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    # rank 0's write failed and it names why; rank 1's writes succeeded: it learns of the failure from a reduction
    # (torch elastic may also end it first, once rank 0 exits, so its line is not required)
    failed = [line for line in lines if "(torch.save could not write its file" in line]
    assert len(failed) == 1 and all("could not write checkpoint" in line for line in lines), result.stderr[-3000:]
    assert failed[0].startswith(f"error: could not write checkpoint {tmp_path / 'checkpoint-000001'} (")
    assert "no checkpoint of this run is intact yet" in failed[0] and failed[0].endswith("--resume auto")
    assert "accelerate launch <the same options> train.py" in failed[0] and not list(tmp_path.glob(".tmp-*"))


def test_a_damaged_downloaded_shard_is_fetched_again_by_the_command_its_line_gives(hub, prepared, tmp_path):
    from pathlib import Path

    from stand_in_hub import download, llmc_repo

    from gpt2repro.token_shards import ShardError, check_shards

    out = tmp_path / "plays"
    download(llmc_repo(hub, prepared), "--out", out)
    shard = out / "plays_train_000001.bin"
    intact = shard.read_bytes()
    shard.write_bytes(intact[:-500])  # a failed copy
    with pytest.raises(ShardError, match=r"plays_train_000001\.bin: truncated or corrupt shard") as error:
        check_shards(out)
    remove, command = str(error.value).split("rewrite it with ")[1].split(" && ")
    Path(shlex.split(remove)[1]).unlink()
    prepare_data.main(shlex.split(command)[2:])
    assert shard.read_bytes() == intact
    check_shards(out)


# ---- two processes, one directory ----


def test_a_lock_held_only_by_the_orphans_of_a_dead_command_is_set_aside_and_a_live_one_refuses(tmp_path):
    from gpt2repro import dir_lock

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    # a forked child of the dead command still holds the lock it inherited
    hold = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); "
            "print('locked', flush=True); time.sleep(600)")
    orphan = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path / LOCK_NAME)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert orphan.stdout.readline() == "locked\n"
        with dir_lock.exclusive(tmp_path, "--out", "choose another --out"):
            assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
            with pytest.raises(dir_lock.DirectoryInUseError) as refused:  # this process, as a second command
                dir_lock.acquire(tmp_path, "--out", "choose another --out")
    finally:
        orphan.kill()
        orphan.communicate()
    assert str(refused.value).startswith(f"--out {tmp_path} is in use by ")
    assert f"(pid {os.getpid()} on {socket.gethostname()}, since " in str(refused.value)
    assert not (tmp_path / LOCK_NAME).exists()  # released: nothing left behind


def test_two_processes_that_find_the_same_stale_lock_never_both_hold_the_directory(tmp_path, monkeypatch):
    # B checks that the stale file is still there and, before its unlink, A sets the same file aside and takes a
    # new one: B's unlink must not remove A's new lock (the interleaving forced, not waited for by the clock)
    import threading

    from gpt2repro import dir_lock

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    orphan = os.open(tmp_path / LOCK_NAME, os.O_RDWR)  # as a dead command's forked child, keeping its lock
    fcntl.flock(orphan, fcntl.LOCK_EX)
    a_stopped, a_done, results = threading.Event(), threading.Event(), {}  # A blocked or finished; finished
    still_there, flock, checks = dir_lock._still_there, fcntl.flock, []

    def blocking_flock(fd, operation):
        if not operation & fcntl.LOCK_NB and threading.current_thread().name == "A":
            a_stopped.set()  # A waits for a lock B holds: it can go no further until B goes on
        return flock(fd, operation)

    def acquire(name):
        try:
            results[name] = dir_lock.acquire(tmp_path, "--out", "choose another --out")
        except dir_lock.DirectoryInUseError as e:
            results[name] = e
        finally:
            if name == "A":
                a_done.set()
                a_stopped.set()

    def b_pauses_after_its_check(fd, path):
        there = still_there(fd, path)
        if threading.current_thread().name == "B" and not checks:
            checks.append(there)
            threading.Thread(target=acquire, args=("A",), name="A").start()
            assert a_stopped.wait(60)
        return there

    monkeypatch.setattr(dir_lock, "_still_there", b_pauses_after_its_check)
    monkeypatch.setattr(dir_lock.fcntl, "flock", blocking_flock)
    try:
        b = threading.Thread(target=acquire, args=("B",), name="B")
        b.start()
        b.join(120)
        assert a_done.wait(120) and checks == [True]
    finally:
        os.close(orphan)
    held = [name for name, result in results.items() if isinstance(result, int)]
    assert len(held) == 1, results  # the other one is refused: the directory is in use
    refused = results["A" if held == ["B"] else "B"]
    assert isinstance(refused, dir_lock.DirectoryInUseError)
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    dir_lock.release(results[held[0]], tmp_path)


def holding(directory, process) -> dict:
    """Once `process` holds `directory`'s lock: who the lock file says holds it."""
    lock, deadline = directory / LOCK_NAME, time.time() + 300
    while not (lock.exists() and lock.read_text()):
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)
    return json.loads(lock.read_text())


def started(argv) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *map(str, argv)], cwd=REPO, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def snapshot(directory) -> dict:
    return {p.relative_to(directory).as_posix(): p.stat().st_mtime_ns for p in directory.rglob("*")}


@pytest.mark.slow
def test_a_second_training_in_a_run_directory_is_refused_naming_the_first_and_a_killed_runs_lock_blocks_nothing(
    data_dir, tmp_path
):
    common = ["--data-dir", data_dir, "--run-dir", tmp_path, "--micro-batch-size", 4, "--total-batch-tokens", 4 * SEQ,
              "--save-every", 1]
    first = started(train_argv(*common, "--max-steps", 10_000))
    try:
        holder = holding(tmp_path, first)
        while not (tmp_path / "checkpoint-000001").is_dir():  # a checkpoint the second one would resume from
            assert first.poll() is None, first.communicate()[1][-3000:]
            time.sleep(0.05)
        first.send_signal(signal.SIGSTOP)  # still running, frozen so that its files can be compared
        before = snapshot(tmp_path)
        message = run_for_error(*common, "--max-steps", 4, "--resume", "auto")
        assert message.startswith(f"error: --run-dir {tmp_path} is in use by train.py (pid {first.pid} on "
                                  f"{socket.gethostname()}, since ") and message.endswith("use another --run-dir")
        assert holder["pid"] == first.pid and snapshot(tmp_path) == before  # refused before touching anything
        first.send_signal(signal.SIGKILL)  # a crash: its lock file stays, its lock goes with it
        first.communicate()
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert (tmp_path / LOCK_NAME).exists()
    run_in_process(*common, "--max-steps", 4, "--resume", "auto")
    assert (tmp_path / "final").is_dir() and not (tmp_path / LOCK_NAME).exists()


@pytest.mark.slow
def test_a_second_preparation_into_one_out_is_refused_and_a_killed_ones_lock_blocks_nothing(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text((REPO / "gpt2repro" / "assets" / "tinyshakespeare.txt").read_text() * 4)
    args = [corpus, "--out", tmp_path / "out", "--shard-tokens", 100_000, "--val-split-tokens", 2048,
            "--num-proc", 1]
    first = started([REPO / "prepare_data.py", *args])
    try:
        holder = holding(tmp_path / "out", first)
        first.send_signal(signal.SIGSTOP)
        assert first.poll() is None and (tmp_path / "out" / LOCK_NAME).exists()  # not finished before the stop
        with pytest.raises(SystemExit) as exit_info:
            prepare_data.main(list(map(str, args)))
        message = str(exit_info.value)
        assert message.startswith(f"error: --out {tmp_path / 'out'} is in use by prepare_data.py (pid {first.pid} on "
                                  f"{socket.gethostname()}, since ") and "\n" not in message, message
        assert holder["pid"] == first.pid
        first.send_signal(signal.SIGKILL)
        first.communicate()
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    prepare_data.main(list(map(str, args)))  # resumes what the killed one left
    prepare_data.main(list(map(str, [*args[:2], tmp_path / "whole", *args[3:]])))
    out, whole = tmp_path / "out", tmp_path / "whole"
    # the killed one's lock was set aside under the guard's lock, whose file stays (dir_lock.py)
    assert sorted(p.name for p in out.iterdir()) == sorted([GUARD_NAME, *(p.name for p in whole.iterdir())])
    for shard in whole.glob("*.bin"):
        assert (out / shard.name).read_bytes() == shard.read_bytes()
