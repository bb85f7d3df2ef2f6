"""The sections of benchmarks/gpu_check.py, one module each, run in the order of MODULES.

A section module defines:

    NAME = "muon"                    # what --sections names and each of its report rows starts with
    SUMMARY = "one line for --list"  # newlines allowed: the help text indents the rest
    TIMEOUT = 300                    # seconds in its own process on a GPU (where gpu_check isolates sections)
    def run(args, profile, context) -> list[Row]
    def add_arguments(parser)        # optional: flags of its own (args carries them and the common ones)

`run` checks that the sides it compares agree before it times them (a failed check is a row with status FAIL,
or CheckFailed), builds the model from `profile` (base.PROFILES: the 124M shape on a GPU, a tiny one on a CPU),
and returns base.Row objects; an exception becomes its one "error" row and the other sections still run.
`context` carries figures from earlier sections of the same command (section train leaves its tok/s for
section data). Shared pieces: base (Row, verdicts, the recipe, autocast, compile, time_steps) and
benchmarks/_common.py (timing, the same tokens for every side, fp32 parity, releasing the device).

Adding a section: write its module here and add it to MODULES; that is all gpu_check.py needs (--sections, --list,
--help, its flags, its time limit). tests/test_gpu_check.py::test_each_section_runs_alone_on_cpu then runs it alone
at the CPU shape (marked slow unless it takes about a second); test there what its own rows compute.
"""

from . import attention, data, fsdp, hellaswag, muon, parity, shakespeare, syncs, training
from .base import PROFILES, CheckFailed, Profile, Row

MODULES = (parity, attention, training, data, hellaswag, shakespeare, syncs, fsdp, muon)
SECTIONS = {module.NAME: module for module in MODULES}
SECTION_NAMES = tuple(SECTIONS)

__all__ = ["PROFILES", "SECTIONS", "SECTION_NAMES", "CheckFailed", "Profile", "Row"]
