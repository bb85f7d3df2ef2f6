"""AdamW against Muon, step for step, on a CPU proxy of the recipe (issue 24).

The same model (GPT2ReproForCausalLM, 6 layers x 128 wide, 64-token windows) trains on the same data (the
tokenized tiny-Shakespeare of prepare_data.py, in the project's loader's seeded order), with the same batch,
warmup and schedule, once with `--optimizer adamw` and once with `--optimizer muon`, both built by
gpt2repro/optim.py (make_optimizer, set_learning_rates). Only the optimizer differs.

The proxy keeps the hidden matrices a real share of the parameters: the token ids are relabeled densely (the
11,707 ids tiny-Shakespeare uses, in id order: the same text, the same tokens), so the tied embedding is 1.5M
parameters instead of 6.4M, next to 1.2M in the blocks' matrices, and a step costs a third as much.

Protocol: for each optimizer, a grid of peak learning rates on seed 0 (Muon's groups other than the matrices
take AdamW's best --lr); the best (lowest best val loss) is run on the other seeds. Reported: every run's val
loss curve (a fixed 4,096-target slice of the val split, every --eval-every steps), each optimizer's best val
loss per seed, and the steps each run takes to reach AdamW's best (the lowest point of AdamW's median-over-seeds
curve), with the median over seeds and the spread. One torch thread per run; --jobs 2 runs two at once.

    python benchmarks/bench_recipe.py                    # the full protocol: 10 runs, minutes per run on a CPU
    python benchmarks/bench_recipe.py --quick            # smoke test: 2 short runs
    python benchmarks/bench_recipe.py --only muon --adamw-lr 4e-3 --muon-lrs 0.01 0.02 0.04 --adjust-lr-fn original
"""

import argparse
import datetime
import io
import json
import multiprocessing as mp
import os
import statistics
import time
import types
from pathlib import Path

from _common import REPO, describe_machine  # noqa: F401  (first: puts the repository on sys.path)

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from configuration_gpt2repro import GPT2ReproConfig  # noqa: E402
from gpt2repro.document_sources import DEFAULT_DATA_DIR  # noqa: E402
from gpt2repro.fileio import write_atomically  # noqa: E402
from gpt2repro.optim import (  # noqa: E402
    MUON_ADJUST_LR,
    MUON_QKV_SPLIT,
    learning_rate,
    make_optimizer,
    set_learning_rates,
)
from gpt2repro.throughput import device_name  # noqa: E402
from gpt2repro.token_shards import ShardedTokenLoader, open_split  # noqa: E402
from modeling_gpt2repro import GPT2ReproForCausalLM  # noqa: E402

MODEL = dict(n_layer=6, n_head=4, n_embd=128)
FULL = dict(steps=100, batch=16, seq=64, eval_every=10, val_targets=4096, seeds=3,
            adamw_lrs=[4e-3, 8e-3, 1.6e-2], muon_lrs=[8e-3, 1.6e-2, 3.2e-2])
QUICK = dict(steps=20, batch=8, seq=64, eval_every=5, val_targets=2048, seeds=1, adamw_lrs=[4e-3], muon_lrs=[4e-3])


def dense_ids(data_dir) -> np.ndarray:
    """A lookup from GPT-2 ids to 0..n-1 over the ids the data uses (both splits), in id order."""
    shards = [s for split in ("train", "val") for s in open_split(data_dir, split)[1]]
    used = np.unique(np.concatenate([np.unique(s) for s in shards]))
    lookup = np.zeros(int(used.max()) + 1, dtype=np.int64)
    lookup[used] = np.arange(len(used))
    return lookup


def run(job: dict) -> dict:
    """One training run: {"job", "steps": [...], "val": [...], "seconds"}."""
    torch.set_num_threads(1)
    a = types.SimpleNamespace(**job["args"])
    lookup = torch.from_numpy(np.load(job["lookup"]))
    s = types.SimpleNamespace(
        optimizer=job["optimizer"], lr=job["lr"], muon_lr=job.get("muon_lr", job["lr"]), weight_decay=0.1,
        beta1=0.9, beta2=0.95, warmup_steps=max(1, a.steps // 15), max_steps=a.steps, min_lr_ratio=0.1,
        lr_schedule=a.lr_schedule, cooldown_frac=a.cooldown_frac,
    )
    torch.manual_seed(job["seed"])
    config = GPT2ReproConfig(**MODEL, n_positions=a.seq, vocab_size=job["vocab"], bos_token_id=None, eos_token_id=None)
    model = GPT2ReproForCausalLM(config).train()
    optimizer = make_optimizer(model, s, qkv_split=a.qkv_split, adjust_lr_fn=a.adjust_lr_fn)
    loader = ShardedTokenLoader(a.data_dir, "train", a.batch, a.seq, seed=job["seed"])
    val = lookup[ShardedTokenLoader(a.data_dir, "val", a.val_targets // a.seq, a.seq).next_batch()]
    steps, losses, start = [], [], time.perf_counter()

    def evaluate(step):
        model.eval()
        with torch.no_grad():
            losses.append(model(input_ids=val[:, :-1], shift_labels=val[:, 1:]).loss.item())
        steps.append(step)
        model.train()

    evaluate(0)
    for step in range(a.steps):
        window = lookup[loader.next_batch()]
        model(input_ids=window[:, :-1], shift_labels=window[:, 1:]).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        set_learning_rates(optimizer, learning_rate(step, s), s)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % a.eval_every == 0 or step + 1 == a.steps:
            evaluate(step + 1)
    return {"job": {k: v for k, v in job.items() if k not in ("args", "lookup")}, "steps": steps, "val": losses,
            "seconds": time.perf_counter() - start}


def run_all(jobs: list[dict], n_jobs: int) -> list[dict]:
    results = []
    if n_jobs > 1:
        with mp.get_context("spawn").Pool(n_jobs) as pool:
            for r in pool.imap(run, jobs):
                results.append(report_run(r))
    else:
        results = [report_run(run(job)) for job in jobs]
    return results


def label(job: dict) -> str:
    if job["optimizer"] == "adamw":
        return f"adamw lr {job['lr']:g}"
    return f"muon muon_lr {job['muon_lr']:g} (lr {job['lr']:g})"


def report_run(r: dict) -> dict:
    curve = " ".join(f"{v:.3f}" for v in r["val"])
    print(f"{label(r['job'])} seed {r['job']['seed']}: best val {min(r['val']):.4f} | {r['seconds']:.0f}s | "
          f"val every {r['steps'][1]} steps: {curve}", flush=True)
    return r


def steps_to(r: dict, target: float) -> int | None:
    """The first evaluated step whose val loss is at or below `target`; None if none is."""
    return next((step for step, v in zip(r["steps"], r["val"]) if v <= target), None)


def median_curve(runs: list[dict]) -> list[float]:
    return [statistics.median(vs) for vs in zip(*(r["val"] for r in runs))]


def best_lr(runs: list[dict], key: str) -> float:
    return min(runs, key=lambda r: min(r["val"]))["job"][key]


def plot(results: dict, path: Path, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, color in (("adamw", "tab:blue"), ("muon", "tab:orange")):
        for i, r in enumerate(results[name]):
            ax.plot(r["steps"], r["val"], color=color, alpha=0.35, lw=1)
        ax.plot(results[name][0]["steps"], median_curve(results[name]), color=color, lw=2,
                label=f"{label(results[name][0]['job'])}: median of {len(results[name])} seeds")
    ax.axhline(target, color="gray", ls="--", lw=1, label=f"AdamW's best (median curve): {target:.3f}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("val loss")
    lows = [min(r["val"]) for rs in results.values() for r in rs]
    ax.set_ylim(min(lows) - 0.1, min(lows) + 1.6)
    ax.set_title("CPU proxy (6x128 GPT-2, tiny-Shakespeare): AdamW vs Muon")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    write_atomically(path, image.getvalue())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke test: 2 short runs")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="tiny-Shakespeare shards (made if missing)")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--seeds", type=int, help="seeds of each optimizer's best learning rate")
    parser.add_argument("--adamw-lrs", type=float, nargs="+", help="AdamW's grid of peak learning rates")
    parser.add_argument("--muon-lrs", type=float, nargs="+", help="Muon's grid of peak learning rates (matrices)")
    parser.add_argument("--adamw-lr", type=float, help="skip AdamW's grid: its --lr (also Muon's other groups')")
    parser.add_argument("--only", choices=("adamw", "muon"), help="run one optimizer's side only")
    parser.add_argument("--qkv-split", type=int, default=MUON_QKV_SPLIT, help="c_attn as 3 matrices (3) or one (1)")
    parser.add_argument("--adjust-lr-fn", default=MUON_ADJUST_LR, choices=("original", "match_rms_adamw"))
    parser.add_argument("--lr-schedule", default="cosine", choices=("cosine", "wsd"))
    parser.add_argument("--cooldown-frac", type=float, default=0.3, help="with --lr-schedule wsd")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, one thread each")
    parser.add_argument("--out", default="runs/bench_recipe", help="bench_recipe.json and bench_recipe.png go here")
    args = parser.parse_args()
    preset = QUICK if args.quick else FULL
    for key, value in preset.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.adamw_lr:
        args.adamw_lrs = [args.adamw_lr]

    if not Path(args.data_dir).is_dir():
        import prepare_data

        prepare_data.main(["--out", args.data_dir])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lookup = dense_ids(args.data_dir)
    saved = io.BytesIO()
    np.save(saved, lookup)
    write_atomically(out / "lookup.npy", saved.getvalue())  # the workers read it
    shared = dict(args={k: v for k, v in vars(args).items() if k not in ("adamw_lrs", "muon_lrs")},
                  lookup=str(out / "lookup.npy"), vocab=int(lookup.max()) + 1)
    print(f"machine: {device_name('cpu')}, torch {torch.__version__}, 1 thread per run, {args.jobs} at once, "
          f"load average {os.getloadavg()[0]:.2f}, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"model {MODEL}, vocab {shared['vocab']} (dense ids), {args.steps} steps of {args.batch} x {args.seq} "
          f"tokens, {args.lr_schedule} schedule; Muon: qkv split {args.qkv_split}, adjust_lr_fn {args.adjust_lr_fn}")

    seeds = range(1, args.seeds)
    results = {}
    adamw_lr = args.adamw_lrs[0]
    if args.only != "muon":
        grid = run_all([dict(shared, optimizer="adamw", lr=lr, seed=0) for lr in args.adamw_lrs], args.jobs)
        adamw_lr = best_lr(grid, "lr")
        best = [r for r in grid if r["job"]["lr"] == adamw_lr]
        results["adamw"] = best + run_all([dict(shared, optimizer="adamw", lr=adamw_lr, seed=s) for s in seeds],
                                          args.jobs)
    if args.only != "adamw":
        grid = run_all([dict(shared, optimizer="muon", lr=adamw_lr, muon_lr=lr, seed=0) for lr in args.muon_lrs],
                       args.jobs)
        muon_lr = best_lr(grid, "muon_lr")
        best = [r for r in grid if r["job"]["muon_lr"] == muon_lr]
        results["muon"] = best + run_all(
            [dict(shared, optimizer="muon", lr=adamw_lr, muon_lr=muon_lr, seed=s) for s in seeds], args.jobs)

    write_atomically(out / "bench_recipe.json", json.dumps({**results, "machine": describe_machine("cpu")}, indent=1))
    print("\nbest val loss per seed, median [min, max]:")
    for name, runs in results.items():
        bests = [min(r["val"]) for r in runs]
        print(f"  {label(runs[0]['job'])}: {' '.join(f'{b:.4f}' for b in bests)} | "
              f"median {statistics.median(bests):.4f} "
              f"[{min(bests):.4f}, {max(bests):.4f}]")
    if "adamw" not in results:
        return
    target = min(median_curve(results["adamw"]))
    print(f"\nsteps to AdamW's best ({target:.4f}, the lowest point of its median curve), per seed:")
    medians = {}
    for name, runs in results.items():
        reached = [steps_to(r, target) for r in runs]
        shown = " ".join(str(n) if n is not None else f">{args.steps}" for n in reached)
        counted = [n if n is not None else float("inf") for n in reached]
        medians[name] = statistics.median(counted)
        print(f"  {name}: {shown} | median {medians[name]}")
    if "muon" in medians:
        print(f"Muon / AdamW steps (medians): {medians['muon'] / medians['adamw']:.2f}x "
              f"(resolution: {args.eval_every} steps)")
        plot(results, out / "bench_recipe.png", target)
        print(f"plot: {out / 'bench_recipe.png'}")


if __name__ == "__main__":
    main()
