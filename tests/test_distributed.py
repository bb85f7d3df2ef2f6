"""Every distributed path on CPU processes over gloo: FSDP2, two machines on 127.0.0.1, torch.compile under DDP,
a killed rank restarted by torch elastic, a lost node survived by the others, a hung rank ending the others, and
every accelerate config as documented.

All runs share one layout (8 steps of 8 x 32 tokens on 2 processes) so that any two can be compared step by step.
"""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import psutil
import pytest
from conftest import (REPO, SEQ, assert_same_weights, free_port, launcher, logged, run_cli, run_in_process,
                      train_argv)

CONFIGS = REPO / "accelerate_configs"
STEPS = 8
# AdamW: FSDP refuses Muon (tests/test_muon.py), and the DDP runs here are FSDP's reference
COMMON = ["--max-steps", STEPS, "--total-batch-tokens", 8 * SEQ, "--micro-batch-size", 4, "--optimizer", "adamw"]
# Runs that split their work differently agree closely, not bit for bit. The widest gap is DDP vs FSDP: torch's
# fp32 vector_norm on CPU drifts with tensor size (about 1e-3 relative on the 6.4M-element embedding gradient), and
# DDP takes it over the whole tensor, FSDP over two shards, so the gradient clipping scales differ by ~5e-4; over 8
# steps that moves a few weights by up to ~4e-5. A resumed optimizer started afresh would move them by ~lr (1e-3).
WEIGHT_ATOL, LOSS_RTOL = 1e-4, 1e-5


def launch(config: str, *args):
    result = run_cli(*args, launcher=launcher(config))
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def worker(launcher_pid: int, rank: int, timeout: float = 120) -> psutil.Process:
    """One rank's process under `accelerate launch`: torch elastic puts RANK in each worker's environment, which
    /proc shows to the same user, so the test needs no hook in train.py. (psutil's Process refuses to signal a
    recycled pid.)"""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for child in psutil.Process(launcher_pid).children(recursive=True):
            try:
                if child.environ().get("RANK") == str(rank) and "train.py" in " ".join(child.cmdline()):
                    return child
            except psutil.Error:  # exited meanwhile, or not ours to read
                continue
        time.sleep(0.1)
    raise AssertionError(f"no worker with RANK={rank} under {launcher_pid}")


def wait_for(condition, process, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def stop_all(process) -> None:
    """What is left of a launch that did not finish (a failed test): its workers, then the launcher."""
    if process.poll() is not None:
        return
    for child in psutil.Process(process.pid).children(recursive=True):
        try:
            child.kill()
        except psutil.Error:
            pass
    process.kill()
    process.communicate()


def losses(run_dir):
    return logged(run_dir, "loss")


@pytest.fixture(scope="module")
def ddp(data_dir, tmp_path_factory):
    """The reference: 2-process DDP, checkpoints at steps 2, 4 and 6."""
    run_dir = tmp_path_factory.mktemp("ddp")
    launch("cpu_2proc.yaml", "--data-dir", data_dir, "--run-dir", run_dir, *COMMON, "--save-every", 2,
           "--keep-checkpoints", 3)
    return run_dir


@pytest.fixture(scope="module")
def fsdp(data_dir, tmp_path_factory):
    """The same run under FSDP2, with 2 micro-steps of accumulation (gradients not reduced on the first) and
    520 validation tokens, which give rank 0 one forward more than rank 1 where ranks split the evaluation."""
    run_dir = tmp_path_factory.mktemp("fsdp")
    result = launch("cpu_fsdp_2proc.yaml", "--data-dir", data_dir, "--run-dir", run_dir, *COMMON,
                    "--micro-batch-size", 2, "--val-tokens", 520, "--save-every", 2, "--keep-checkpoints", 3)
    assert "2 process(es)" in result.stdout and "x 2 accumulation" in result.stdout
    return run_dir


# ---- FSDP2 ----


@pytest.mark.slow
def test_fsdp_matches_ddp_and_saves_whole_model_folders_that_load_anywhere(ddp, fsdp, tmp_path):
    assert (fsdp / "final" / "training_state" / "pytorch_model_fsdp_0").is_dir()  # sharded: FSDP really ran
    assert losses(fsdp) == pytest.approx(losses(ddp), rel=LOSS_RTOL)
    assert logged(fsdp, "val_tokens") == [520]
    # the gathered weights, the tied lm_head once, under the model's own class and code (not FSDP's)
    assert_same_weights(ddp / "final", fsdp / "final", atol=WEIGHT_ATOL)
    files = {p.name for p in (fsdp / "final").iterdir()}
    assert {"modeling_gpt2repro.py", "configuration_gpt2repro.py"} <= files and not any("fsdp" in f for f in files)
    config = json.loads((fsdp / "final" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_gpt2repro.GPT2ReproForCausalLM"
    assert config["architectures"] == ["GPT2ReproForCausalLM"]

    script = (
        "import sys; sys.path = [p for p in sys.path if p not in ('', %r)]\n"
        "import torch\n"
        "from safetensors.torch import load_file\n"
        "from transformers import AutoModelForCausalLM\n"
        "m = AutoModelForCausalLM.from_pretrained(%r, trust_remote_code=True)\n"
        "saved = load_file(%r)\n"
        "assert all(torch.equal(m.state_dict()[k], v) for k, v in saved.items())\n"
        "assert m.lm_head.weight.data_ptr() == m.transformer.wte.weight.data_ptr()\n"
        "print(m.generate(torch.tensor([[15496]]), max_new_tokens=4, do_sample=False).shape)\n"
    ) % (str(REPO), str(fsdp / "final"), str(fsdp / "final" / "model.safetensors"))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0 and "torch.Size([1, 5])" in result.stdout, result.stderr[-2000:]


@pytest.mark.slow
def test_fsdp_resumes_exactly_from_its_own_checkpoint(data_dir, fsdp, tmp_path):
    launch("cpu_fsdp_2proc.yaml", "--data-dir", data_dir, "--run-dir", tmp_path, *COMMON,
           "--micro-batch-size", 2, "--val-tokens", 520, "--resume", fsdp / "checkpoint-000004")
    assert losses(tmp_path) == losses(fsdp)[4:]
    assert_same_weights(fsdp / "final", tmp_path / "final")


@pytest.mark.slow
def test_ddp_and_fsdp_checkpoints_resume_under_each_other(data_dir, ddp, fsdp, tmp_path):
    # an optimizer started afresh at step 4 would move the weights by ~lr, far beyond the tolerance
    launch("cpu_fsdp_2proc.yaml", "--data-dir", data_dir, "--run-dir", tmp_path / "fsdp", *COMMON,
           "--resume", ddp / "checkpoint-000004")
    assert losses(tmp_path / "fsdp") == pytest.approx(losses(ddp)[4:], rel=LOSS_RTOL)
    assert_same_weights(ddp / "final", tmp_path / "fsdp" / "final", atol=WEIGHT_ATOL)

    launch("cpu_2proc.yaml", "--data-dir", data_dir, "--run-dir", tmp_path / "ddp", *COMMON,
           "--resume", fsdp / "checkpoint-000004")
    assert losses(tmp_path / "ddp") == pytest.approx(losses(fsdp)[4:], rel=LOSS_RTOL)
    assert_same_weights(fsdp / "final", tmp_path / "ddp" / "final", atol=WEIGHT_ATOL)

    run_in_process("--data-dir", data_dir, "--run-dir", tmp_path / "one", *COMMON,
                   "--resume", fsdp / "checkpoint-000004")
    assert_same_weights(fsdp / "final", tmp_path / "one" / "final", atol=WEIGHT_ATOL)


# ---- more machines, torch.compile ----


@pytest.mark.slow
def test_two_machines_on_localhost_match_one_and_save_together_on_time(data_dir, ddp, tmp_path):
    # multinode.yaml as 2 machines of 1 process; a save every 6 ms means one after every step, which only works if
    # every rank agrees on when (a lone rank saving would wait for the others forever)
    args = ["--data-dir", data_dir, "--run-dir", tmp_path, *COMMON, "--save-every-minutes", 0.0001,
            "--keep-checkpoints", STEPS]
    port = free_port()  # the one both machines meet on
    machines = [
        subprocess.Popen(
            [*launcher("multinode.yaml", "--machine_rank", rank, "--main_process_ip", "127.0.0.1",
                       "--num_machines", 2, "--num_processes", 2, port=port),
             *train_argv(*args)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for rank in (0, 1)
    ]
    try:
        outputs = [machine.communicate(timeout=600) for machine in machines]
    finally:
        for machine in machines:
            stop_all(machine)
    for machine, (_, stderr) in zip(machines, outputs):
        assert machine.returncode == 0, stderr[-3000:]
    assert "2 process(es)" in outputs[0][0]
    assert losses(tmp_path) == losses(ddp)
    assert_same_weights(ddp / "final", tmp_path / "final")
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == [f"checkpoint-{s:06d}" for s in range(1, STEPS)]


@pytest.mark.slow
def test_compiled_ddp_with_accumulation_matches_eager_ddp(data_dir, ddp, tmp_path):
    result = launch("cpu_2proc.yaml", "--data-dir", data_dir, "--run-dir", tmp_path, *COMMON,
                    "--micro-batch-size", 2, "--compile")
    assert "compile True" in result.stdout and "x 2 accumulation" in result.stdout
    assert losses(tmp_path) == pytest.approx(losses(ddp), rel=LOSS_RTOL)
    assert_same_weights(ddp / "final", tmp_path / "final", atol=WEIGHT_ATOL)


# ---- a lost rank ----


@pytest.mark.slow
def test_a_killed_rank_is_restarted_and_the_run_ends_as_if_uninterrupted(data_dir, ddp, tmp_path):
    # Started from the reference's step 2 (as a resumed job), killed once it saved its own step 4: the restarted
    # group must continue from its own newest checkpoint, not from where the job first started.
    process = subprocess.Popen(
        [*launcher("cpu_2proc.yaml", "--max_restarts", 1),
         *train_argv("--data-dir", data_dir, "--run-dir", tmp_path, *COMMON, "--save-every", 2,
                     "--resume", ddp / "checkpoint-000002")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for(lambda: (tmp_path / "checkpoint-000004").is_dir(), process)
        worker(process.pid, 1).send_signal(signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=600)
    finally:
        stop_all(process)
    assert process.returncode == 0, stderr[-3000:]
    assert f"resumed from {ddp / 'checkpoint-000002'} at step 2" in stdout
    assert re.search(rf"resumed from {re.escape(str(tmp_path))}/checkpoint-00000[46] at step [46]", stdout), stdout
    # The survivor says so in one line when it meets the loss in a collective; the agent may also tear it down
    # first (the hung-rank test below checks the message). Either way, never a traceback.
    assert "[rank0]: Traceback" not in stderr
    assert_same_weights(ddp / "final", tmp_path / "final")  # fp32: exactly


def elastic_node(node: int, port: int, train: list[str], last_call: int = 5) -> subprocess.Popen:
    """Node `node` of 2 as scripts/slurm_multinode.sbatch starts it (srun runs scripts/elastic_node.sh with SLURM_*
    set), on 127.0.0.1 with one process of one thread: CPU matmuls sum in an order that follows the thread count,
    and accelerate launch gives each of the reference's two processes one thread."""
    env = {**os.environ, "SLURM_NODEID": str(node), "SLURM_NNODES": "2", "SLURM_JOB_ID": f"test-{port}",
           "RDZV_HOST": "127.0.0.1", "RDZV_PORT": str(port), "GPUS_PER_NODE": "1", "MAX_RESTARTS": "1",
           "LAST_CALL_SECONDS": str(last_call), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([str(REPO / "scripts" / "elastic_node.sh"), *train], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_lost_node_leaves_the_run_on_the_other_which_ends_as_a_switch_to_one_process_would(data_dir, ddp,
                                                                                            tmp_path):
    train = train_argv("--data-dir", data_dir, "--run-dir", tmp_path, *COMMON, "--save-every", 2)
    port = free_port()
    # Node 1 first: ranks follow the agents' pids, so the node lost below holds rank 0 (the one that logs and
    # saves) and the workers' store; node 0 hosts the rendezvous, the one node a run cannot lose.
    nodes = {1: elastic_node(1, port, train)}
    nodes[0] = elastic_node(0, port, train)
    try:
        wait_for(lambda: (tmp_path / "checkpoint-000004").is_dir(), nodes[0])
        lost = psutil.Process(nodes[1].pid)
        for process in [lost, *lost.children(recursive=True)]:  # the node: its agent and its worker, no notice
            process.kill()
        lost_stdout = nodes[1].communicate(timeout=60)[0]
        stdout, stderr = nodes[0].communicate(timeout=600)
    finally:
        for node in nodes.values():
            stop_all(node)
    assert nodes[0].returncode == 0, stderr[-3000:]
    assert "2 process(es)" in lost_stdout  # the lost node held rank 0
    resumed = re.search(rf"resumed from {re.escape(str(tmp_path))}/checkpoint-\d+ at step (\d+)", stdout)
    assert resumed, stdout
    step = int(resumed[1])
    # the same 256 tokens a step: 4 x 32 x 1 process x 2 micro-steps instead of 4 x 32 x 2 processes x 1
    assert "batch: 256 tokens/step = 4 x 32 x 1 processes x 2 accumulation" in stdout
    assert "[rank0]: Traceback" not in stderr
    switched = tmp_path / "switched"  # 2 processes to `step`, then 1: the reference's checkpoint resumed here
    result = run_cli("--data-dir", data_dir, "--run-dir", switched, *COMMON, "--resume", ddp / f"checkpoint-{step:06d}",
                     env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_weights(switched / "final", tmp_path / "final", atol=1e-7)
    assert losses(tmp_path) == losses(ddp)[:step] + losses(switched)


@pytest.mark.slow
def test_a_node_that_joins_is_taken_in_at_a_save_and_the_run_goes_on_with_both(data_dir, tmp_path):
    # 16 micro-steps a step on one process: slow enough for the second node to start while the first trains alone
    # (it joins within the first few; the steps after the join are trained twice, by both nodes and the reference)
    steps = 12
    layout = ["--max-steps", steps, "--total-batch-tokens", 16 * 4 * SEQ, "--micro-batch-size", 4]
    train = train_argv("--data-dir", data_dir, "--run-dir", tmp_path / "run", *layout, "--resume", "auto")
    port = free_port()
    nodes = {0: elastic_node(0, port, train, last_call=1)}
    try:
        wait_for(lambda: (tmp_path / "run" / "metrics.jsonl").exists(), nodes[0])  # training alone
        nodes[1] = elastic_node(1, port, train)
        outputs = {n: node.communicate(timeout=600) for n, node in nodes.items()}
    finally:
        for node in nodes.values():
            stop_all(node)
    for n, node in nodes.items():
        assert node.returncode == 0, outputs[n][1][-3000:]
    stdout = outputs[0][0]
    # the agents stop their processes (SIGTERM) to take the new node in: a save first, so that nothing is lost
    stopped = re.search(r"stop requested: saved (\S+/checkpoint-(\d+)); continue: --resume auto", stdout)
    assert stopped, stdout
    step = int(stopped[2])
    assert f"resumed from {stopped[1]} at step {step}" in stdout and 0 < step < steps
    assert "1 processes x 16 accumulation" in stdout and "2 processes x 8 accumulation" in stdout
    reference = tmp_path / "reference"  # that checkpoint resumed on 2 processes by hand
    launch("cpu_2proc.yaml", "--data-dir", data_dir, "--run-dir", reference, *layout, "--resume", stopped[1])
    assert_same_weights(reference / "final", tmp_path / "run" / "final")
    assert losses(tmp_path / "run")[step:] == losses(reference)


@pytest.mark.slow
def test_a_hung_rank_ends_the_others_after_the_collective_timeout_in_one_line(data_dir, tmp_path):
    process = subprocess.Popen(
        [*launcher("cpu_2proc.yaml"),
         *train_argv("--data-dir", data_dir, "--run-dir", tmp_path, *COMMON, "--max-steps", 10_000,
                     "--collective-timeout-minutes", 0.1)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for(lambda: (tmp_path / "metrics.jsonl").exists() and len(losses(tmp_path)) >= 2, process)
        hung, survivor = worker(process.pid, 1), worker(process.pid, 0)
        hung.send_signal(signal.SIGSTOP)  # alive but silent: only the timeout can end the wait for it
        survivor.wait(timeout=180)  # far below the 10-minute default and torch's 30
        hung.send_signal(signal.SIGCONT)  # let the launcher's SIGTERM reach it
        stdout, stderr = process.communicate(timeout=120)
    finally:
        stop_all(process)
    assert process.returncode != 0
    survivor_said = [line for line in stderr.splitlines() if line.startswith("error: rank 0: ")]
    assert survivor_said and "another process died or stopped answering" in survivor_said[0], stderr[-3000:]
    assert "6000ms" in survivor_said[0]  # 0.1 minutes, as configured
    assert "--resume auto" in survivor_said[0] and "[rank0]: Traceback" not in stderr


@pytest.mark.slow
def test_time_based_saves_need_no_step_interval(data_dir, tmp_path):
    # every 6 ms: after every step (each takes longer), never at the last (the final checkpoint is that one)
    run_in_process("--data-dir", data_dir, "--run-dir", tmp_path, "--max-steps", 3, "--micro-batch-size", 4,
                   "--total-batch-tokens", 4 * SEQ, "--save-every-minutes", 0.0001, "--keep-checkpoints", 5)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-000001", "checkpoint-000002"]
    assert (tmp_path / "final").is_dir()


# ---- the configs ----


def readme_configs() -> dict:
    """The README's table of accelerate configs: {file: (processes, machines, strategy)}."""
    rows = re.findall(r"^\| `accelerate_configs/([\w.]+)` \| (\d+) \| (\d+) \| (\w+) \|",
                      (REPO / "README.md").read_text(), flags=re.M)
    return {name: (int(processes), int(machines), strategy) for name, processes, machines, strategy in rows}


def test_every_accelerate_config_loads_and_is_what_the_readme_says():
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.utils import DistributedType

    import modeling_gpt2repro

    table = readme_configs()
    assert sorted(table) == sorted(p.name for p in CONFIGS.glob("*.yaml"))
    strategies = {"none": DistributedType.NO, "DDP": DistributedType.MULTI_GPU, "FSDP2": DistributedType.FSDP}
    for name, (processes, machines, strategy) in table.items():
        config = load_config_from_file(str(CONFIGS / name))
        assert isinstance(config, ClusterConfig), name
        assert (config.num_processes, config.num_machines) == (processes, machines), name
        assert config.distributed_type == strategies[strategy], name
        assert config.num_processes % config.num_machines == 0, name
        if strategy == "FSDP2":
            fsdp = config.fsdp_config
            assert fsdp["fsdp_version"] == 2, name
            assert hasattr(modeling_gpt2repro, fsdp["fsdp_transformer_layer_cls_to_wrap"]), name
        if machines > 1:
            assert config.main_process_ip and config.main_process_port, name
    # the CPU variant tests the GPU config's FSDP settings, not some others
    fsdp_settings = [load_config_from_file(str(CONFIGS / n)).fsdp_config for n in ("fsdp.yaml", "cpu_fsdp_2proc.yaml")]
    assert fsdp_settings[0] == fsdp_settings[1]


def test_every_launch_command_in_the_readme_table_has_a_batch_its_processes_divide_and_an_optimizer_it_allows():
    import shlex

    from accelerate.utils import DistributedType

    from gpt2repro.optim import check_optimizer
    from gpt2repro.settings import parse_settings

    strategies = {"none": DistributedType.NO, "DDP": DistributedType.MULTI_GPU, "FSDP2": DistributedType.FSDP}
    rows = re.findall(r"^\| `accelerate_configs/[\w.]+` \| (\d+) \| \d+ \| (\w+) \|.*`[^`]*train\.py([^`]*)` \|$",
                      (REPO / "README.md").read_text(), flags=re.M)
    assert len(rows) == len(readme_configs())
    for processes, strategy, args in rows:
        _, s = parse_settings(shlex.split(args))
        per_micro_step = s.micro_batch_size * s.seq_len * int(processes)
        assert s.total_batch_tokens % per_micro_step == 0, (args, processes)  # else train.py refuses to start
        check_optimizer(s, strategies[strategy])  # Muon (the tiny preset's) is refused under FSDP


def test_near_its_time_limit_the_slurm_script_stops_the_step_which_saves_then_requeues_the_job(tmp_path):
    # Slurm requeues no job that reached its time limit: the script must. srun and scontrol stand in as scripts that
    # note what they are asked; srun's tasks save on SIGTERM (train.py's StopRequest), as the step's end shows.
    sbatch = (REPO / "scripts" / "slurm_multinode.sbatch").read_text()
    notice = re.search(r"^#SBATCH --signal=B:USR1@(\d+)$", sbatch, re.M)
    assert notice and int(notice[1]) >= 90 + 30  # SHUTDOWN_SECONDS for the save, and time to requeue
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/usr/bin/env bash\ntrap \'echo "step: SIGTERM, saved" >> "$LOG"; exit 143\' TERM\n'
                                  'echo "step: started" >> "$LOG"\nwhile true; do sleep 0.05; done\n')
    (bin_dir / "scontrol").write_text('#!/usr/bin/env bash\nif [[ $1 == show ]]; then echo node0; exit; fi\n'
                                      'echo "scontrol $*" >> "$LOG"\n')
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LOG": str(log), "SLURM_JOB_ID": "42",
           "SLURM_JOB_NODELIST": "node[0-1]"}
    job = subprocess.Popen(["bash", str(REPO / "scripts" / "slurm_multinode.sbatch")], env=env, cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: log.exists() and "step: started" in log.read_text(), job)
        job.send_signal(signal.SIGUSR1)  # Slurm's --signal=B:USR1, 120 s before the limit
        stdout, stderr = job.communicate(timeout=60)
    finally:
        stop_all(job)
    assert log.read_text().splitlines() == ["step: started", "step: SIGTERM, saved", "scontrol requeue 42"], stderr
    assert "time limit near: saving, then requeueing job 42" in stdout


def test_the_slurm_script_starts_on_every_node_the_elastic_launch_the_readme_documents():
    readme = (REPO / "README.md").read_text()
    sbatch = (REPO / "scripts" / "slurm_multinode.sbatch").read_text()
    node_script = (REPO / "scripts" / "elastic_node.sh").read_text()
    for script in ("slurm_multinode.sbatch", "elastic_node.sh"):
        assert subprocess.run(["bash", "-n", str(REPO / "scripts" / script)]).returncode == 0
    # a lost node leaves the job allocated (--no-kill) and its step running; one torch elastic agent per node
    assert {"--no-kill", "--ntasks-per-node=1", "--requeue"} <= set(re.findall(r"^#SBATCH (\S+)", sbatch, re.M))
    srun = next(line for line in re.sub(r"\\\n\s*", " ", sbatch).splitlines() if line.startswith("srun "))
    srun = srun.removesuffix(" &")  # in the background: the script waits for it, and traps the time limit meanwhile
    documented = re.search(r"`(srun [^`]+)`", readme)[1]
    assert shlex.split(srun) == shlex.split(documented)
    assert {"--no-kill", "--kill-on-bad-exit=0"} <= set(shlex.split(srun))
    node_command = shlex.split(srun)[shlex.split(srun).index("scripts/elastic_node.sh"):]
    by_hand = re.search(r"^    (SLURM_NODEID=I .*)$", readme, re.M)[1].split()
    assert by_hand[by_hand.index("scripts/elastic_node.sh"):] == node_command
    assert set(re.findall(r"^export (\w+)", sbatch, re.M)) <= set(re.findall(r"\$\{(\w+)", node_script))

    # what the script runs, with the README's placeholders for a node's values: the README's torchrun line
    env = {**os.environ, "SLURM_NODEID": "0", "SLURM_NNODES": "N", "SLURM_JOB_ID": "gpt2", "RDZV_HOST": "NODE0",
           "PYTHON": "echo"}
    ran = subprocess.run([str(REPO / "scripts" / "elastic_node.sh"), *node_command[1:]], env=env, cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.split()
    torchrun = re.search(r"^    (\.venv/bin/python -m torch\.distributed\.run .*)$", readme, re.M)[1].split()
    assert [word.replace("is_host=1", "is_host=IS_NODE0") for word in ran] == torchrun[1:]
    from torch.distributed.run import get_args_parser

    args = get_args_parser().parse_args([a.replace("1:N", "1:2") for a in torchrun[3:]])  # every flag is torchrun's
    assert (args.rdzv_backend, args.nnodes, args.max_restarts) == ("c10d", "1:2", 3)
