"""prepare_data.py against build-nanogpt's fineweb.py method, on the same ~20 MB local corpus.

    python benchmarks/bench_prepare.py [--megabytes 20] [--repeats 3] [--doc-chars N]

The corpus repeats the shipped tiny-Shakespeare as separate documents (--doc-chars cuts each copy
into documents of about N characters, closer to web pages). The baseline is build-nanogpt's
method: multiprocessing.Pool(cpu_count() // 2), tiktoken encode_ordinary of each document with
<|endoftext|> prepended, pool.imap(chunksize=16), uint16 arrays copied into shard buffers and
saved with np.save. Both must produce the same token stream. The two run alternately, --repeats
times each; runs during which other processes kept the CPUs busy are reported but not counted,
and the figure is the best remaining run of each.
"""

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import REPO  # first: puts the repository on sys.path

import prepare_data
from gpt2repro.token_shards import load_manifest, read_shard
from gpt2repro.tokenizer import EOT_ID, get_encoding

SHARD_SIZE = 100_000_000  # fineweb.py's shard size; prepare_data's default


def tokenize(doc):
    # fineweb.py, verbatim but for the encoder (the same GPT-2 BPE, built offline)
    tokens = [EOT_ID]
    tokens.extend(get_encoding().encode_ordinary(doc["text"]))
    tokens_np = np.array(tokens)
    assert (0 <= tokens_np).all() and (tokens_np < 2**16).all(), "token dictionary too large for uint16"
    return tokens_np.astype(np.uint16)


def baseline(corpus: Path, out_dir: Path) -> None:
    """build-nanogpt fineweb.py's main loop, reading the corpus instead of the Hub dataset."""
    nprocs = max(1, os.cpu_count() // 2)
    with open(corpus) as f, mp.Pool(nprocs) as pool:
        docs = (json.loads(line) for line in f)
        shard_index = 0
        all_tokens_np = np.empty((SHARD_SIZE,), dtype=np.uint16)
        token_count = 0
        for tokens in pool.imap(tokenize, docs, chunksize=16):
            if token_count + len(tokens) < SHARD_SIZE:
                all_tokens_np[token_count : token_count + len(tokens)] = tokens
                token_count += len(tokens)
            else:
                remainder = SHARD_SIZE - token_count
                all_tokens_np[token_count : token_count + remainder] = tokens[:remainder]
                np.save(out_dir / f"baseline_{shard_index:06d}.npy", all_tokens_np)
                shard_index += 1
                all_tokens_np[0 : len(tokens) - remainder] = tokens[remainder:]
                token_count = len(tokens) - remainder
        if token_count != 0:
            np.save(out_dir / f"baseline_{shard_index:06d}.npy", all_tokens_np[:token_count])


def write_corpus(path: Path, megabytes: float, doc_chars: int | None) -> int:
    text = (REPO / "gpt2repro" / "assets" / "tinyshakespeare.txt").read_text()
    copies = max(1, round(megabytes * 1e6 / len(text.encode())))
    docs = [text[i : i + doc_chars] for i in range(0, len(text), doc_chars)] if doc_chars else [text]
    with open(path, "w") as f:
        for _ in range(copies):
            f.writelines(json.dumps({"text": doc}) + "\n" for doc in docs)
    return copies * len(docs)


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds used by the whole machine, by this process and its finished children).

    The difference tells how much of a run's machine went to other people's processes."""
    with open("/proc/stat") as f:
        jiffies = [int(x) for x in f.readline().split()[1:]]
    machine = (sum(jiffies) - jiffies[3] - jiffies[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait
    mine = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return machine, sum(r.ru_utime + r.ru_stime for r in mine)


def timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, share of the machine's CPUs that other processes used meanwhile)."""
    machine, mine = cpu_seconds()
    start = time.perf_counter()
    fn(*args)
    seconds = time.perf_counter() - start
    machine_after, mine_after = cpu_seconds()
    others = (machine_after - machine) - (mine_after - mine)
    return seconds, max(0.0, others) / (seconds * os.cpu_count())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=float, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--doc-chars", type=int, help="cut each copy into documents of this many characters")
    parser.add_argument("--num-proc", type=int, default=os.cpu_count(), help="prepare_data --num-proc")
    parser.add_argument(
        "--max-contention",
        type=float,
        default=0.05,
        help="ignore runs during which other "
        "processes used more than this share of the CPUs (the machine may be shared)",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus, ours_out, baseline_out = tmp / "corpus.jsonl", tmp / "ours", tmp / "baseline"
        baseline_out.mkdir()
        n_docs = write_corpus(corpus, args.megabytes, args.doc_chars)
        print(
            f"corpus: {corpus.stat().st_size / 1e6:.1f} MB, {n_docs:,} documents; {os.cpu_count()} CPUs; "
            f"baseline Pool({max(1, os.cpu_count() // 2)}), prepare_data --num-proc {args.num_proc}"
        )
        argv = [str(corpus), "--out", str(ours_out), "--num-proc", str(args.num_proc), "--overwrite"]
        runs = {"baseline (fineweb.py method)": [], "prepare_data": []}
        for _ in range(args.repeats):  # alternating, so that load from other processes hits both alike
            runs["prepare_data"].append(timed(prepare_data.main, argv))
            runs["baseline (fineweb.py method)"].append(timed(baseline, corpus, baseline_out))

        ours = np.concatenate([read_shard(ours_out / s["file"]) for s in load_manifest(ours_out)["shards"]])
        baseline_files = sorted(baseline_out.glob("*.npy"))
        if not np.array_equal(ours, np.concatenate([np.load(f) for f in baseline_files])):
            sys.exit("FAIL: prepare_data and the baseline produced different token streams")
        print(f"same token stream: {len(ours):,} tokens")
        rates = {}
        for name, timings in runs.items():
            listed = ", ".join(f"{t:.2f}s ({100 * c:.0f}% busy elsewhere)" for t, c in timings)
            quiet = [t for t, c in timings if c <= args.max_contention]
            rates[name] = len(ours) / min(quiet) if quiet else None
            rate = f"{rates[name]:12,.0f} tokens/s" if quiet else "no quiet run    "
            print(f"{name:30s} {rate}  runs: {listed}")
        if None in rates.values():
            sys.exit(
                f"the machine was busy with other work (> {args.max_contention:.0%}) in every run of one side; "
                "rerun when it is quiet"
            )
        print(f"speedup: {rates['prepare_data'] / rates['baseline (fineweb.py method)']:.2f}x (best quiet run of each)")


if __name__ == "__main__":
    main()
