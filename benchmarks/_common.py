"""What every benchmark needs: the repository importable, timing that waits for the GPU, the machine's
description, and the pieces of a fair comparison with a peer (the same tokens, fp32 without TF32 for parity,
an emptied device between sides, compile counters).

A benchmark imports this first (`from _common import REPO, ...`): the benchmarks folder is on sys.path
when a script in it runs, and importing this puts the repository root there too. torch is imported only
where a function needs it, so a benchmark without torch (bench_prepare) starts without it.
"""

import contextlib
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


# ---- measuring against a peer: the same input, the same precision, an empty device ----


def random_tokens(batch: int, seq: int, device):
    """A (batch, seq) tensor of token ids, the same on every call: each side of a comparison gets the same tokens."""
    import torch

    from gpt2repro.tokenizer import VOCAB_SIZE

    generator = torch.Generator().manual_seed(1234)
    return torch.randint(0, VOCAB_SIZE, (batch, seq), generator=generator).to(device)


@contextlib.contextmanager
def full_fp32():
    """fp32 matmuls without TF32, for parity: TF32 keeps 10 mantissa bits and would hide real differences."""
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def max_logit_diff(ours, peer_logits_fn, input_ids) -> tuple[float, float]:
    """(max |ours - peer| over the tokenizer's ids, largest |logit|), fp32 without TF32, eval mode. `ours` is a
    GPT2ReproForCausalLM; its logits stop at the tokenizer's vocabulary, so a peer's padding columns are cut off."""
    import torch

    with full_fp32(), torch.no_grad():
        reference = ours.eval()(input_ids, use_cache=False).logits
        peer = peer_logits_fn(input_ids)[..., : reference.shape[-1]]
    return (reference - peer).abs().max().item(), reference.abs().max().item()


def release(device) -> None:
    """Drop compiled graphs and cached blocks so the next measurement starts from an empty device."""
    import gc

    import torch

    torch._dynamo.reset()
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def compile_counts() -> tuple[int, int]:
    """(graphs compiled, graph breaks) so far in this process, from dynamo's counters."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
