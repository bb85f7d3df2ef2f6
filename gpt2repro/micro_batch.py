"""The micro-batch that fits in memory: `--micro-batch-size auto`.

A step's tokens are fixed (--total-batch-tokens); how they are split into micro-batches and accumulation is not
a choice of the recipe but of the GPU's memory. With `auto`, the first step of a process starts at the largest
power of two (at most AUTO_START) that divides the sequences each process takes per step; on an out-of-memory
error it halves the micro-batch and doubles the accumulation, rewinds the data and the gradients, and tries
again: the optimizer step sees the same tokens in the same order. Accelerate's find_executable_batch_size does
the retrying (and frees the cached memory between tries).
"""

from collections.abc import Callable

from accelerate.utils import find_executable_batch_size

from gpt2repro.errors import UserError

AUTO_START = 64  # the 124M recipe's micro-batch of 1,024-token windows on an 80 GB GPU; larger models halve from it


class MicroBatchError(UserError, ValueError):
    """Not even one sequence per micro-batch fits: the message says what to do."""


def auto_start(per_process: int, cap: int = AUTO_START) -> int:
    """The largest power of two that divides `per_process` sequences, at most `cap`: each halving still divides."""
    size = 1
    while size * 2 <= cap and per_process % (size * 2) == 0:
        size *= 2
    return size


class MicroBatch:
    """Sequences per micro-batch and micro-steps per optimizer step, for `per_process` sequences a step."""

    def __init__(self, setting: int | str, per_process: int):
        self.auto, self.per_process = setting == "auto", per_process
        self.size = auto_start(per_process) if self.auto else int(setting)
        self.fitted = not self.auto  # whether a step ran at self.size in this process

    @property
    def accumulation(self) -> int:
        return self.per_process // self.size

    def resume_at(self, saved: int, loader) -> None:
        """With auto, continue at the size a saved run settled on (its first step already found the limit)."""
        if self.auto and saved and self.per_process % saved == 0:
            self.size = saved
            loader.rewind(loader.position, saved)

    def step(self, train_step: Callable[[int], tuple], loader, optimizer, say: Callable[[str], None]) -> tuple:
        """train_step(accumulation), at the current size; the first one with auto halves the micro-batch on an
        out-of-memory error until it fits."""
        if self.fitted:
            return train_step(self.accumulation)
        position = loader.position

        def halve() -> int:
            if self.size == 1:
                return 0  # find_executable_batch_size stops at zero
            self.size //= 2
            say(f"out of memory at micro-batch {self.size * 2}: going on with micro-batch {self.size} x "
                f"{self.accumulation} accumulation (the same {self.per_process} sequences per process and step)")
            return self.size

        @find_executable_batch_size(starting_batch_size=self.size, reduce_batch_size_fn=halve)
        def attempt(size: int) -> tuple:
            loader.rewind(position, size)  # the failed try's windows, again
            optimizer.zero_grad(set_to_none=True)  # and none of its partial gradients
            return train_step(self.per_process // size)

        try:
            result = attempt()
        except RuntimeError as e:
            if "No executable batch size found" not in str(e):
                raise
            raise MicroBatchError(
                "out of memory even at micro-batch 1: lower --seq-len, choose a smaller --model, or shard the model "
                "across GPUs (accelerate_configs/fsdp.yaml)"
            ) from None
        self.fitted = True
        return result


__all__ = ["AUTO_START", "MicroBatch", "MicroBatchError", "auto_start"]
