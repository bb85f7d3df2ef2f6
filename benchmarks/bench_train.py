"""Training-step throughput and peak memory: our GPT2ReproForCausalLM vs transformers' GPT2LMHeadModel.

One step = forward with labels + backward + AdamW step, the same for both sides: same machine, model
shape, batch, tokens, precision, compile setting and optimizer. HF's dropout is set to 0 (ours has none)
and its KV cache off, so both do the same work; HF's vocab is 50304 by default (the same matmul width as
our padded lm_head; --hf-vocab 50257 for stock GPT-2).

Each side lives in its own worker process, so its memory is its own. The parent times them in
alternating rounds (ours first on even rounds, HF first on odd), so background load on a shared machine
hits both alike; it reports medians, the spread, and the load average of every round.

Peak memory. CUDA: torch.cuda.max_memory_allocated over the timed steps. CPU has no allocator
statistics, so two measures: (1) tensor peak, the exact bytes of parameters + AdamW state plus the
highest rise of allocated tensor bytes during one profiled step (torch.profiler's allocation events,
the CPU analogue of max_memory_allocated); (2) the process's peak RSS (VmHWM, reset before the timed
steps), which also counts the interpreter, libraries, compiled code and allocator slack.

    python benchmarks/bench_train.py                     # bf16 + torch.compile, CPU defaults below
    python benchmarks/bench_train.py --precision fp32 --no-compile
"""

import argparse
import datetime
import multiprocessing as mp
import os
import statistics
from pathlib import Path

from _common import sync, timed  # first: puts the repository on sys.path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from gpt2repro.throughput import device_name, device_peak_flops, flops_per_token, keep_freed_memory_for_reuse, mfu  # noqa: E402

CPU_DEFAULTS = dict(n_layer=6, n_head=6, n_embd=384, seq=256, batch=8)
CUDA_DEFAULTS = dict(n_layer=12, n_head=12, n_embd=768, seq=1024, batch=None)  # None: largest that fits
CUDA_BATCHES = (64, 48, 32, 24, 16, 12, 8, 4, 2, 1)


def build(side, args):
    """The model (train mode, on the device) and its config, for one side."""
    shape = dict(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, n_positions=args.seq)
    if side == "ours":
        from configuration_gpt2repro import GPT2ReproConfig
        from modeling_gpt2repro import GPT2ReproForCausalLM

        config = GPT2ReproConfig(vocab_size=50257, **shape)  # lm_head padded to 50304, 50257 predicted
        model = GPT2ReproForCausalLM(config)
    else:
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(
            vocab_size=args.hf_vocab, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False, **shape
        )
        model = GPT2LMHeadModel(config)
    return model.to(args.device).train(), config


class Worker:
    """One side's model, optimizer and step function, driven by the parent through a pipe."""

    def __init__(self, side, args):
        torch.manual_seed(0)
        # both sides alike, as train.py does on CPU; False where glibc's malloc is not the one in use
        self.reuses_memory = args.reuse_memory and args.device == "cpu" and keep_freed_memory_for_reuse()
        if args.threads:
            torch.set_num_threads(args.threads)
        self.side, self.args, self.device = side, args, torch.device(args.device)
        self.model, self.config = build(side, args)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True
        )
        self.forward = torch.compile(self.model, dynamic=False) if args.compile else self.model
        self.dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32

    def step(self, input_ids):
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == torch.bfloat16):
            loss = self.forward(input_ids, labels=input_ids).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def tokens(self, batch):
        generator = torch.Generator().manual_seed(1234)  # the same tokens on both sides
        return torch.randint(0, 50257, (batch, self.args.seq), generator=generator).to(self.device)

    def fits(self, batch):
        try:
            self.step(self.tokens(batch))
            return True
        except torch.OutOfMemoryError:
            self.optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            return False

    def setup(self, batch):
        self.input_ids = self.tokens(batch)
        for _ in range(self.args.warmup):  # compilation and first-touch allocations happen here
            self.step(self.input_ids)
        sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak RSS
        params = sum(p.numel() for p in self.model.parameters())
        return dict(
            params=params, flops_per_token=flops_per_token(self.config, self.args.seq), reuses_memory=self.reuses_memory
        )

    def time(self, steps):
        return [timed(self.step, self.input_ids, device=self.device)[1] for _ in range(steps)]

    def memory(self):
        """Peak memory over the timed steps (read first), then the CPU tensor peak of one profiled step."""
        if self.device.type == "cuda":
            return dict(peak_allocated=torch.cuda.max_memory_allocated(self.device))
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
        peak_rss = int(status["VmHWM"].split()[0]) * 1024
        return dict(peak_rss=peak_rss, tensor_peak=self.cpu_tensor_peak())

    def cpu_tensor_peak(self):
        from torch._C._profiler import _EventType
        from torch.profiler import ProfilerActivity, profile

        # Live between steps: parameters and AdamW's two moments (+ its step counters); grads are None.
        state = [t for s in self.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
        persistent = sum(t.nbytes for t in [*self.model.parameters(), *state, self.input_ids])
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            self.step(self.input_ids)

        def walk(nodes):
            for node in nodes:
                yield node
                yield from walk(node.children)

        # total_allocated counts from the profiler's start: its maximum is the step's peak rise.
        totals = [
            n.extra_fields.total_allocated
            for n in walk(prof.profiler.kineto_results.experimental_event_tree())
            if n.tag == _EventType.Allocation
        ]
        return persistent + max(totals, default=0)

    def peak(self):
        return device_peak_flops(self.device, self.dtype)


def serve(side, args, conn):
    worker = Worker(side, args)
    while True:
        command, *payload = conn.recv()
        if command == "stop":
            return
        conn.send(getattr(worker, command)(*payload))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--n-layer", type=int)
    parser.add_argument("--n-head", type=int)
    parser.add_argument("--n-embd", type=int)
    parser.add_argument("--seq", type=int)
    parser.add_argument("--batch", type=int, help="micro-batch; on CUDA default the largest both sides fit")
    parser.add_argument("--hf-vocab", type=int, default=50304, choices=[50304, 50257])
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per side (compilation included)")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per side per round")
    parser.add_argument(
        "--reuse-memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="CPU: glibc keeps freed memory (train.py's setting), in both workers",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: torch's default)")
    args = parser.parse_args()
    defaults = CUDA_DEFAULTS if args.device.startswith("cuda") else CPU_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    context = mp.get_context("spawn")  # fresh interpreters: no shared allocator, compile cache or threads
    conns, procs = {}, []
    for side in ("ours", "hf"):
        conns[side], child = context.Pipe()
        procs.append(context.Process(target=serve, args=(side, args, child), daemon=True))
        procs[-1].start()

    def ask(side, *command):
        conns[side].send(command)
        return conns[side].recv()

    if args.batch is None:  # CUDA: the largest micro-batch both sides fit (HF's logits make it the limit)
        maxima = {side: next(b for b in CUDA_BATCHES if ask(side, "fits", b)) for side in ("hf", "ours")}
        args.batch = min(maxima.values())
        print(f"largest micro-batch that fits: {maxima}; comparing at {args.batch}")
    start_load = os.getloadavg()
    info = {side: ask(side, "setup", args.batch) for side in ("ours", "hf")}
    peak_flops, peak_source = ask("ours", "peak")

    times = {"ours": [], "hf": []}
    round_ratios, loads = [], []
    for r in range(args.rounds):
        order = ("ours", "hf") if r % 2 == 0 else ("hf", "ours")
        this_round = {side: ask(side, "time", args.steps) for side in order}
        for side in order:
            times[side] += this_round[side]
        round_ratios.append(statistics.median(this_round["hf"]) / statistics.median(this_round["ours"]))
        loads.append(os.getloadavg()[0])
    memory = {side: ask(side, "memory") for side in ("ours", "hf")}
    for side in conns:
        conns[side].send(("stop",))
    for proc in procs:
        proc.join()

    tokens = args.batch * args.seq
    tok_s = {side: tokens / statistics.median(times[side]) for side in times}
    print(f"date {datetime.date.today()} | {device_name(args.device)} | torch {torch.__version__} | threads {torch.get_num_threads()}")
    print(
        f"config n_layer {args.n_layer}, n_head {args.n_head}, n_embd {args.n_embd}, seq {args.seq}, batch {args.batch} "
        f"| {args.precision} | compile {'on' if args.compile else 'off'} | HF vocab {args.hf_vocab} "
        f"| reuse memory {'on' if all(info[side]['reuses_memory'] for side in info) else 'off'} "
        f"| {args.rounds} rounds x {args.steps} steps after {args.warmup} warm-up"
    )
    print(f"load average: start {start_load[0]:.2f}, per round {', '.join(f'{x:.2f}' for x in loads)}")
    print(f"peak: {peak_source}")
    for side, label in (("ours", "GPT2ReproForCausalLM"), ("hf", "GPT2LMHeadModel")):
        steps = sorted(times[side])
        line = (
            f"{label:21s} {tok_s[side]:9,.0f} tok/s  (step median {statistics.median(steps) * 1e3:.0f} ms, "
            f"min {steps[0] * 1e3:.0f}, max {steps[-1] * 1e3:.0f})  "
            f"MFU {mfu(tok_s[side], info[side]['flops_per_token'], peak_flops):.1%}  params {info[side]['params'] / 1e6:.1f}M"
        )
        print(line + "  " + format_memory(memory[side]))
    ratios = sorted(round_ratios)
    print(
        f"ours / HF tokens/s: {tok_s['ours'] / tok_s['hf']:.2f}x (medians); per round median "
        f"{statistics.median(ratios):.2f}x, range {ratios[0]:.2f}-{ratios[-1]:.2f}"
    )
    for key in memory["ours"]:
        print(f"ours / HF {key.replace('_', ' ')}: {memory['ours'][key] / memory['hf'][key]:.2f}x")


def format_memory(memory):
    return "  ".join(f"{key.replace('_', ' ')} {value / 2**20:,.0f} MiB" for key, value in memory.items())


if __name__ == "__main__":
    main()
