"""GPU acceptance in one command: parity, attention kernels, training speed against two peers, data loading,
HellaSwag speed, a short real training run and Muon's step, printed as one markdown table and appended to RESULTS.md.

    python benchmarks/gpu_check.py                              # everything, 124M shape (aimed at ~10 min on an H100)
    python benchmarks/gpu_check.py --sections parity,attention --no-append
    python benchmarks/gpu_check.py --device cpu --no-append     # smoke test: everything at a tiny shape
    python benchmarks/gpu_check.py --list                       # the sections, and the module of each

Each section is a module of benchmarks/gpu_sections/ (its package docstring says how to add one) and runs alone
with --sections NAME. Each checks that its two sides agree before timing them; a section that fails reports it in
its row and the others still run (on a GPU each runs in its own process, with a time limit). This file runs them
and writes the report.
"""

import argparse
import dataclasses
import datetime
import json
import multiprocessing as mp
import os
import sys
import time
import traceback
from pathlib import Path

from _common import REPO, describe_machine, release  # first: puts the repository on sys.path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from gpt2repro.fileio import write_atomically  # noqa: E402
from gpt2repro.launch import tune_device  # noqa: E402
from gpt2repro.provenance import git_state  # noqa: E402
from gpt2repro.report import markdown_table  # noqa: E402
from gpu_sections import PROFILES, SECTION_NAMES, SECTIONS, Row  # noqa: E402

RESULTS = REPO / "benchmarks" / "RESULTS.md"


# ----------------------------------------------------------------------------------------------
# running sections, in this process or one each


def prepare_process(args) -> None:
    """The settings train.py uses: TF32 matmuls on a GPU (fp32 parity turns them off locally), glibc keeping
    freed memory on a CPU."""
    torch.manual_seed(0)
    tune_device(args.device)


def run_here(name, args, context) -> tuple[list[Row], dict]:
    profile = PROFILES[args.device]
    prepare_process(args)
    try:
        rows = SECTIONS[name].run(args, profile, context)
    except Exception as e:  # one section's failure is its row; the others still run
        traceback.print_exc()
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        rows = [Row(name, "section did not finish", f"{type(e).__name__}: {message}"[:300], status="error")]
    finally:
        release(args.device)
    return rows, context


def _section_process(name, args, context, conn) -> None:
    rows, context = run_here(name, args, context)
    conn.send(([dataclasses.asdict(r) for r in rows], context))


def run_isolated(name, args, context) -> tuple[list[Row], dict]:
    """The section in a fresh process: its memory is its own, and a crash or hang costs only its row."""
    spawn = mp.get_context("spawn")
    receiver, sender = spawn.Pipe(duplex=False)
    # not a daemon: inductor starts compile workers, which a daemonic process may not have
    proc = spawn.Process(target=_section_process, args=(name, args, context, sender))
    proc.start()
    sender.close()
    timeout = args.section_timeout or SECTIONS[name].TIMEOUT
    try:
        if receiver.poll(timeout):
            rows, context = receiver.recv()
            proc.join()
            return [Row(**r) for r in rows], context
        failure = f"timed out after {timeout} s"
    except EOFError:
        failure = "crashed"
    if proc.is_alive():
        proc.kill()
    proc.join()
    return [Row(name, "section did not finish", f"{failure} (exit code {proc.exitcode})", status="error")], context


def run_sections(args) -> list[Row]:
    rows, context = [], {}
    for name in args.sections:
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        section_rows, context = (run_isolated if args.isolate else run_here)(name, args, context)
        print("\n".join(markdown_table(TABLE_HEADER, [row_cells(r) for r in section_rows])), flush=True)
        print(f"   ({time.perf_counter() - started:.0f} s)", flush=True)
        rows += section_rows
    return rows


# ----------------------------------------------------------------------------------------------
# the report


TABLE_HEADER = ["section", "check", "result", "compared with", "goal", "status"]


def row_cells(row: Row) -> list:
    status = f"**{row.status}**" if row.status in ("FAIL", "error", "not met") else row.status
    return [row.section, row.check, row.result, row.compared, row.goal, status]


def report_markdown(rows: list[Row], machine: dict, when: datetime.datetime, command: str) -> str:
    """A dated RESULTS.md section: what ran where, then the table."""
    driver = f"driver {machine['driver']} (CUDA {machine.get('cuda')})" if "driver" in machine else "no GPU driver"
    return "\n".join([
        f"## GPU acceptance (gpu_check.py), {when:%Y-%m-%d %H:%M} UTC",
        "",
        f"Device: {machine['device']} | {driver} | torch {machine['torch']} | transformers {machine['transformers']} "
        f"| Python {machine['python']}, {machine['threads']} CPU threads | commit {machine.get('commit', 'unknown')}",
        f"Command: `{command}`",
        "",
        "\n".join(markdown_table(TABLE_HEADER, [row_cells(r) for r in rows])),
    ])


def append_results(path: Path, section: str) -> None:
    """Append a report section to RESULTS.md, keeping everything already there."""
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    write_atomically(path, old.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n")


def git_commit() -> str:
    state = git_state()
    return state["commit"][:12] + ("-dirty" if state["dirty"] else "")  # "-dirty": figures from uncommitted code


# ----------------------------------------------------------------------------------------------
# command line


def section_list(text: str) -> tuple:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in SECTION_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown section {', '.join(unknown) or '(none)'}; "
                                         f"choose from {','.join(SECTION_NAMES)}")
    return names


def section_lines() -> list[str]:
    """One entry per section: its name, its summary, and the module that holds it."""
    lines = []
    for name, module in SECTIONS.items():
        summary = module.SUMMARY.splitlines()
        lines += [f"  {name:<12} {summary[0]}"] + [f"  {'':<12} {line}" for line in summary[1:]]
        lines.append(f"  {'':<12} ({Path(module.__file__).relative_to(REPO)})")
    return lines


def parse_args(argv=None) -> argparse.Namespace:
    description = __doc__ + "\nSections, in the order they run:\n" + "\n".join(section_lines())
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cuda: the 124M acceptance run; cpu: a smoke test of every section at a tiny shape")
    parser.add_argument("--sections", type=section_list, default=SECTION_NAMES,
                        help=f"comma-separated, run in this order (default: {','.join(SECTION_NAMES)})")
    parser.add_argument("--list", action="store_true", help="print the sections and where each is, then exit")
    parser.add_argument("--compile", choices=["inductor", "eager", "off"],
                        help="torch.compile backend for training (default: inductor on cuda, off on cpu)")
    parser.add_argument("--precision", choices=["bf16", "fp32"], help="training (default: bf16 on cuda, fp32 on cpu)")
    for module in SECTIONS.values():
        if hasattr(module, "add_arguments"):
            module.add_arguments(parser)
    parser.add_argument("--isolate", action=argparse.BooleanOptionalAction,
                        help="each section in its own process with a time limit (default: on with cuda)")
    parser.add_argument("--section-timeout", type=int, help="seconds per isolated section (default: per section)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the file the report is appended to")
    parser.add_argument("--no-append", action="store_true", help=f"do not touch {RESULTS.relative_to(REPO)}")
    parser.add_argument("--out", type=Path, help="also write the report to FILE (JSON if FILE ends in .json)")
    args = parser.parse_args(argv)
    for flag, path in (("--out", args.out), ("--results", None if args.no_append else args.results)):
        if path is not None and not path.parent.is_dir():
            parser.error(f"{flag} {path}: no such directory {path.parent}")
    cuda = args.device == "cuda"
    args.compile = args.compile or ("inductor" if cuda else "off")
    args.precision = args.precision or ("bf16" if cuda else "fp32")
    args.isolate = cuda if args.isolate is None else args.isolate
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list:
        print("\n".join(section_lines()))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda: no CUDA device is visible; run on a GPU node (or --device cpu: smoke test)")
    command = "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv)
    machine = dict(describe_machine(args.device), commit=git_commit())
    print(" | ".join(f"{k} {v}" for k, v in machine.items()), flush=True)
    rows = run_sections(args)
    report = report_markdown(rows, machine, datetime.datetime.now(datetime.timezone.utc), command.strip())
    print("\n" + report, flush=True)
    if args.out:
        if args.out.suffix == ".json":
            text = json.dumps(dict(machine=machine, command=command, rows=[dataclasses.asdict(r) for r in rows]),
                              indent=1)
        else:
            text = report
        write_atomically(args.out, text + "\n")
    if not args.no_append:
        append_results(args.results, report)
        print(f"appended to {args.results}")
    failed = [r for r in rows if r.status in ("FAIL", "error")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
