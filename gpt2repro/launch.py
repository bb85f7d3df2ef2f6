"""How the processes of a run start: the precision the hardware computes natively, the Accelerator with its
process group (torch elastic restarts, CPU processes over gloo, FSDP2 kept and its precision set), and how a
process learns that another one is gone."""

import datetime
import os
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, InitProcessGroupKwargs, set_seed
from torch.distributed.fsdp import MixedPrecisionPolicy

from gpt2repro.errors import UserError
from gpt2repro.settings import Settings
from gpt2repro.throughput import keep_freed_memory_for_reuse


def mixed_precision_for(setting: str) -> str:
    """bf16 where the hardware computes it natively (Ampere+ GPUs, CPUs with AVX512-BF16/AMX), else fp32."""
    if setting != "auto":
        return setting
    if torch.cuda.is_available():  # by default torch also counts emulated bf16 (V100, T4): slower than fp32 there
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "no"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "no"
    return "bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "no"


def make_accelerator(s: Settings) -> Accelerator:
    # Without GPUs, several processes are DDP over gloo on the CPU; Accelerate needs cpu=True to pick that.
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    # A lost rank leaves the others waiting in a collective: end them after this long, not the default 30 minutes.
    timeout = datetime.timedelta(minutes=s.collective_timeout_minutes)
    # NCCL's default (1) has its watchdog kill a process whose collective failed or timed out, before Python sees it;
    # 2 aborts the communicator and raises in Python, so that run() prints its one line as over gloo.
    if not nccl_error_handling_chosen():
        os.environ[NCCL_ERROR_HANDLING] = "2"
    start_restarted_group(timeout)
    accelerator = Accelerator(
        mixed_precision=mixed_precision_for(s.mixed_precision), log_with=None if s.log_with == "none" else s.log_with,
        project_dir=s.run_dir, cpu=multi_cpu, kwargs_handlers=[InitProcessGroupKwargs(timeout=timeout)],
    )
    if multi_cpu and os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        keep_fsdp(accelerator)
    set_fsdp_precision(accelerator)
    tune_device(accelerator.device.type)
    set_seed(s.seed)  # the same initial weights on every rank
    return accelerator


NCCL_ERROR_HANDLING = "TORCH_NCCL_ASYNC_ERROR_HANDLING"


def nccl_error_handling_chosen() -> bool:
    """Whether the user set TORCH_NCCL_ASYNC_ERROR_HANDLING. torch elastic's agent (torchrun, accelerate launch) hands
    every worker 1 when the user set nothing, so under an agent the variable alone cannot tell: the agent's own
    environment, as it was started, does (its parent process on Linux, where NCCL runs)."""
    if NCCL_ERROR_HANDLING not in os.environ:
        return False
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return True
    try:
        agent_environment = Path(f"/proc/{os.getppid()}/environ").read_bytes().split(b"\0")
    except OSError:
        return True  # cannot tell: the value stands
    return any(entry.startswith(NCCL_ERROR_HANDLING.encode() + b"=") for entry in agent_environment)


def tune_device(device_type: str) -> None:
    """What a training process sets for its device: TF32 matmuls on a GPU (free speed for the fp32 parts); on a CPU,
    glibc keeping freed memory, so each step's buffers do not page-fault again (benchmarks/RESULTS.md)."""
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif device_type == "cpu":
        keep_freed_memory_for_reuse()


def restart_count() -> int:
    """How many times torch elastic restarted this run's processes (0: the first start, or no torch elastic)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def start_restarted_group(timeout: datetime.timedelta) -> None:
    """Start the process group of a torch-elastic restart on keys of its own. torch stopped scoping the group's keys
    by attempt when its c10d rendezvous began making a new store for each restart (pytorch#135712), but the static
    rendezvous (Accelerate's default) keeps one store: a restarted rank can read a dead rank's address and fail to
    connect. Accelerate then finds the group started and uses it."""
    attempt = restart_count()
    if not attempt or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return
    store = torch.distributed.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                       timeout=timeout)
    torch.distributed.init_process_group(
        store=torch.distributed.PrefixStore(f"gpt2repro-restart-{attempt}", store), rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]), timeout=timeout,
    )


def keep_fsdp(accelerator) -> None:
    """Accelerate silently turns an FSDP launch into DDP without GPUs; keep FSDP, so that it runs (and is tested)
    on CPU processes over gloo too."""
    plugin = FullyShardedDataParallelPlugin()  # from the launcher's environment, as Accelerator reads it
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    accelerator.state.fsdp_plugin = plugin
    for state in (PartialState(), accelerator.state):  # both, as Accelerate's own FSDP set-up does
        state.distributed_type = DistributedType.FSDP


def set_fsdp_precision(accelerator) -> None:
    """FSDP2 under bf16: bf16 parameters for compute, gradients reduced in fp32, outputs (the loss) not cast, as under
    DDP. Accelerate's own bf16 policy reduces gradients in bf16 and casts the loss to bf16 (steps of 1/64 near 3.3)."""
    if accelerator.distributed_type == DistributedType.FSDP and accelerator.mixed_precision == "bf16":
        plugin = accelerator.state.fsdp_plugin
        if plugin.fsdp_version == 2:
            plugin.mixed_precision_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


class LostProcessError(UserError, RuntimeError):
    """Another process of the run died or stopped answering: the message says how to continue."""


def lost_a_process(e: RuntimeError) -> bool:
    """A collective failed because another rank died, or stopped answering for --collective-timeout-minutes:
    gloo reports it from its transport layer, NCCL as a DistError."""
    return isinstance(e, torch.distributed.DistError) or "gloo/transport/" in str(e)
