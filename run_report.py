"""Re-render a run's report (RUN_DIR/report.md and report.json), with the side-by-side table of an
`eval_hellaswag.py --output` file:

    python run_report.py RUN_DIR [--eval-results results.json]

train.py writes the report itself at every save and at the end of a run; the report is gpt2repro.report.
"""

import argparse
import json
from pathlib import Path

from gpt2repro.errors import cli, first_line
from gpt2repro.checkpoints import RunDir
from gpt2repro.provenance import provenance
from gpt2repro.report import ReportError, eval_summaries, fill_final_eval, save_report


def rerender(run_dir: Path, eval_results_path: Path | None = None) -> dict:
    path = RunDir(run_dir).report_json
    report = _read_json(path, f"train.py writes it at the end of a run into {run_dir}")
    if eval_results_path is not None:
        results = _read_json(eval_results_path, "write it with eval_hellaswag.py --output FILE")
        report["eval_results"] = eval_summaries(results)
        fill_final_eval(report, run_dir)
    report["curves"] = RunDir.CURVES if RunDir(run_dir).curves.is_file() else None
    report["created"] = provenance()["created"]  # "Written": when this file was, not when training ended
    save_report(run_dir, report)
    return report


def _read_json(path: Path, how_to_get_it: str) -> dict:
    if not path.is_file():
        raise ReportError(f"{path}: no such file; {how_to_get_it}")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ReportError(f"{path}: not readable JSON ({first_line(e)}); {how_to_get_it}") from None


@cli
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help=f"a run directory holding {RunDir.REPORT_JSON}")
    parser.add_argument("--eval-results", type=Path, help="an eval_hellaswag.py --output JSON file")
    args = parser.parse_args(argv)
    rerender(args.run_dir, args.eval_results)
    print(f"wrote {RunDir(args.run_dir).report_md} and {RunDir(args.run_dir).report_json}")


if __name__ == "__main__":
    main()
