"""What the checkpoint digests cost: sha256 of every file of a GPT-2 (124M) checkpoint, at save (the files just
written, in the page cache) and at resume (read from disk: the files are evicted from the cache first).

    python benchmarks/bench_checkpoint_digest.py [--dir DIR]

Writes a checkpoint of the training layout (model.safetensors, training_state/model.safetensors, AdamW's
optimizer.bin) of the real model on CPU, times the writes and gpt2repro.checkpoints.file_digests, and prints a
markdown row for benchmarks/RESULTS.md.
"""

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from _common import timed

import torch
from safetensors.torch import save_file

from configuration_gpt2repro import GPT2ReproConfig
from gpt2repro.checkpoints import file_digests
from modeling_gpt2repro import GPT2ReproForCausalLM


def write_checkpoint(folder: Path) -> None:
    model = GPT2ReproForCausalLM(GPT2ReproConfig.from_preset("gpt2-124m"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # AdamW's two moments exist from the first step on
    weights = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied
    (folder / "training_state").mkdir(parents=True)
    save_file(weights, folder / "model.safetensors")
    save_file(weights, folder / "training_state" / "model.safetensors")
    torch.save(optimizer.state_dict(), folder / "training_state" / "optimizer.bin")


def evict(folder: Path) -> None:
    """Drop this checkpoint's files (only them) from the page cache, as after a restart."""
    for file in folder.rglob("*"):
        if file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", help="where to write the checkpoint (default: a temp dir)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="digest-bench-", dir=args.dir))
    try:
        _, write_seconds = timed(write_checkpoint, folder / "checkpoint")
        size = sum(f.stat().st_size for f in (folder / "checkpoint").rglob("*") if f.is_file())
        _, warm = timed(file_digests, folder / "checkpoint")
        evict(folder / "checkpoint")
        _, cold = timed(file_digests, folder / "checkpoint")
        print("| checkpoint | write (s) | sha256, just written (s) | sha256, read from disk (s) |")
        print("| --- | --- | --- | --- |")
        print(f"| gpt2-124m, {size / 1e9:.2f} GB | {write_seconds:.1f} | {warm:.1f} ({size / warm / 1e9:.1f} GB/s) | "
              f"{cold:.1f} ({size / cold / 1e9:.1f} GB/s) |")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
