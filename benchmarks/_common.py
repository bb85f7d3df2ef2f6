"""What every benchmark needs: the repository importable, timing that waits for the GPU, the machine's
description, markdown tables.

A benchmark imports this first (`from _common import REPO, ...`): the benchmarks folder is on sys.path
when a script in it runs, and importing this puts the repository root there too. torch is imported only
where a function needs it, so a benchmark without torch (bench_prepare) starts without it.
"""

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def sync(device) -> None:
    """Wait for the device's queued work: CUDA kernels run asynchronously, so a clock read without this
    measures how fast work was queued, not done. Nothing to wait for on a CPU."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, *args, device=None, **kwargs):
    """(fn's result, wall seconds), the device's queue drained before and after (device=None: no device)."""
    if device is not None:
        sync(device)
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    if device is not None:
        sync(device)
    return value, time.perf_counter() - start


def describe_machine(device) -> dict:
    """What a benchmark record names: device, driver (GPU), torch and transformers versions, CPU threads."""
    import platform

    import torch
    import transformers

    from gpt2repro.throughput import device_name

    device = torch.device(device)
    info = {
        "device": device_name(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["driver"] = nvidia_driver_version()
        info["cuda"] = torch.version.cuda
    return info


def nvidia_driver_version() -> str:
    """The NVIDIA driver version (e.g. 550.54.15) from nvidia-smi, else the CUDA driver API version."""
    import subprocess

    import torch

    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        )
        return out.stdout.splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        version = torch._C._cuda_getDriverVersion()  # e.g. 12040; 0 when no driver answers
        return f"CUDA driver API {version // 1000}.{version % 1000 // 10}" if version else "unknown"
