"""Training throughput: the FLOPs a token costs, the device peak to divide by, and the CPU allocator setting.

MFU = tokens/s * flops_per_token / peak. The peak comes from the vendor table for the GPUs GPT-2 is
usually trained on, and is otherwise measured once with a matmul in the training dtype, so a CPU run
reports utilisation of what this machine can actually do (its bf16 peak depends on AMX, not a datasheet).
"""

import ctypes
import functools
import os
import platform
import re
import time
from pathlib import Path

import torch

# Dense bf16 tensor-core peaks from NVIDIA's datasheets (the "with sparsity" figures are twice these).
# Regular expressions searched in order in torch.cuda.get_device_name: the specific variants before the
# family. Whole words only, so that e.g. an "RTX A1000" or a "GH200" is not taken for an A100 or an H200:
# a GPU no pattern names gets a measured peak instead, and the source string says so.
GPU_BF16_PEAK_TFLOPS = (
    (r"\bH100\b.*\bPCIe\b", 756.0),
    (r"\bH100\b.*\bNVL\b", 835.0),
    (r"\bH100\b", 989.0),  # SXM5, named "NVIDIA H100 80GB HBM3"
    (r"\bH200\b.*\bNVL\b", 835.0),
    (r"\bH200\b", 989.0),
    (r"\bA100\b", 312.0),  # SXM and PCIe alike
)


def flops_per_token(config, seq_len: int) -> float:
    """Training FLOPs per token, PaLM appendix B convention: 6N + 12 * n_layer * n_embd * seq_len.

    N counts the weights a token is multiplied by: every block (attention and MLP matrices, biases,
    LayerNorms), ln_f, and the lm_head over the tokenizer's vocab_size rows (the tied wte, counted
    once; its padding rows are never computed). wpe is excluded: a position embedding is a lookup.
    6N is 2 FLOPs per weight forward and 4 backward. The attention term is QK^T and AV, forward and
    backward, over the full T x T square (the causal half is not subtracted, as in PaLM and nanoGPT).
    Works with our config and with transformers' GPT2Config (same field names).
    """
    L, C, V = config.n_layer, config.n_embd, config.vocab_size
    per_block = 12 * C * C + 13 * C  # c_attn 3C^2+3C, attn c_proj C^2+C, c_fc 4C^2+4C, mlp c_proj 4C^2+C, 2 LN 4C
    n = L * per_block + 2 * C + V * C  # + ln_f + lm_head
    return 6.0 * n + 12.0 * L * C * seq_len


def mfu(tokens_per_second: float, flops_per_token: float, peak_flops: float) -> float:
    """Fraction of the peak the model's useful FLOPs reach (0.4 means 40%)."""
    return tokens_per_second * flops_per_token / peak_flops


def datasheet_bf16_peak(gpu_name: str) -> float | None:
    """The dense bf16 peak FLOP/s of the GPU torch.cuda.get_device_name calls `gpu_name`; None if not in the table."""
    for pattern, tflops in GPU_BF16_PEAK_TFLOPS:
        if re.search(pattern, gpu_name, flags=re.IGNORECASE):
            return tflops * 1e12
    return None


@functools.cache
def device_peak_flops(device, dtype=torch.bfloat16) -> tuple[float, str]:
    """(peak FLOP/s, where it came from): the datasheet for known GPUs in bf16, else a measured matmul probe."""
    device = torch.device(device)
    where = device.type
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = datasheet_bf16_peak(name) if dtype == torch.bfloat16 else None
        if peak is not None:
            return peak, f"table: {name} bf16 dense {peak / 1e12:.0f} TFLOP/s"
        where = name + (" (not in the datasheet table)" if dtype == torch.bfloat16 else "")
    flops = _matmul_probe(device, dtype)
    unit, scale = ("TFLOP/s", 1e12) if flops >= 1e12 else ("GFLOP/s", 1e9)
    return flops, f"measured {str(dtype).removeprefix('torch.')} matmul probe on {where}: {flops / scale:.0f} {unit}"


# On a CPU the probe's matmul doubles from 512 wide until one takes this long (or reaches the cap): enough work for
# every core's tiles on a large server, and no seconds spent at the start of every train.py run on a small machine.
CPU_PROBE_SECONDS, CPU_PROBE_MAX = 0.002, 4096


def _matmul_probe(device, dtype, repeats=10) -> float:
    """Best of several square matmuls, large enough to be compute-bound: 8192 wide on a GPU, sized on a CPU."""
    n = 8192 if device.type == "cuda" else 512
    while device.type != "cuda" and n < CPU_PROBE_MAX and _matmul_seconds(device, dtype, n) < CPU_PROBE_SECONDS:
        n *= 2
    return 2 * n**3 / _matmul_seconds(device, dtype, n, repeats)


def _matmul_seconds(device, dtype, n: int, repeats: int = 1) -> float:
    """The fastest of `repeats` n x n matmuls, after two that warm up the kernels."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for i in range(repeats + 2):
        _sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        if i >= 2:
            best = min(best, time.perf_counter() - start)
    return best


def device_name(device) -> str:
    """The GPU's name, or the CPU's model and core count, for benchmark records."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    return f"{platform.processor() or platform.machine()} x{os.cpu_count()}"


def keep_freed_memory_for_reuse() -> bool:
    """Make glibc's malloc keep freed memory in the process instead of handing it back to the kernel.

    A CPU training step frees and reallocates the same large buffers (activations, gradients, lm_head
    chunks) every step. glibc serves each allocation above its mmap threshold (at most 32 MiB) with a fresh
    mmap and unmaps it on free, so every step faults in those bytes again, one zero-filled 4 KiB page at a
    time, which costs a large share of a CPU step (figures in benchmarks/RESULTS.md). With mmap off and
    trimming deferred, the main heap keeps and reuses that memory
    (threads other than the main one still get mmapped buffers, but training allocates on the main thread);
    the cost is that the process keeps its peak heap, as PyTorch's CUDA caching allocator does. Returns
    whether it applied: only with glibc (not musl, macOS or Windows), and not where another allocator such
    as jemalloc was preloaded in its place.
    """
    if "CS_GNU_LIBC_VERSION" not in getattr(os, "confstr_names", {}):  # not glibc: musl, macOS, Windows
        return False
    try:
        glibc = ctypes.CDLL("libc.so.6")
        in_use = ctypes.CDLL(None)  # symbols as this process resolves them: a preloaded allocator comes first
    except OSError:
        return False
    address = lambda f: ctypes.cast(f, ctypes.c_void_p).value  # noqa: E731
    if address(in_use.malloc) != address(glibc.malloc):  # jemalloc, tcmalloc, ...: glibc's settings would not apply
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(glibc.mallopt(M_MMAP_MAX, 0)) and bool(glibc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


__all__ = [
    "flops_per_token", "device_peak_flops", "datasheet_bf16_peak", "mfu", "device_name", "keep_freed_memory_for_reuse"
]
