"""The layout: entry points above one library that never imports them, and one owner per name.

Every file name of a run directory and every HellaSwag metric name is written in exactly one place of the
project's code (docstrings and comments aside): everything else imports it."""

import ast

import pytest
from conftest import REPO

from gpt2repro.checkpoints import RunDir
from gpt2repro.hellaswag import HELLASWAG_ITEMS, HELLASWAG_METRICS

ENTRY_POINTS = ("train", "prepare_data", "eval_hellaswag", "convert_gpt2", "run_report")
LIBRARY = sorted((REPO / "gpt2repro").glob("*.py"))
COMMANDS = [REPO / f"{name}.py" for name in ENTRY_POINTS] + [REPO / "scripts" / "reproduce_gpt2.py"]
CODE = sorted({*REPO.glob("*.py"), *LIBRARY, *COMMANDS, *(REPO / "benchmarks").rglob("*.py")})

RUN_DIR_NAMES = [RunDir.SETTINGS, RunDir.METRICS, RunDir.CURVES, RunDir.REPORT_JSON, RunDir.REPORT_MD,
                 RunDir.CHECKPOINT_PREFIX, RunDir.FINAL, RunDir.EVAL_RESULTS]
METRIC_NAMES = [HELLASWAG_ITEMS, *(metric.name for metric in HELLASWAG_METRICS)]


def strings(path) -> list[str]:
    """The string constants of a file's code, f-string pieces included, docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value) for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body
        and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def spellings(name: str) -> list[str]:
    """Where `name` is written: a word like "final" as a whole string, a file name anywhere in one."""
    found = []
    for path in CODE:
        for text in strings(path):
            if text == name or ("." in name or name.endswith("-")) and name in text:
                found.append(f"{path.relative_to(REPO)}: {text!r}")
    return found


@pytest.mark.parametrize("name", RUN_DIR_NAMES + METRIC_NAMES)
def test_each_run_directory_file_and_hellaswag_metric_is_named_in_one_place(name):
    assert len(spellings(name)) == 1, f"{name!r} is written in several places: {spellings(name)}"


def test_the_run_directory_names_are_those_of_a_run():
    assert RUN_DIR_NAMES == ["settings.yaml", "metrics.jsonl", "curves.png", "report.json", "report.md",
                             "checkpoint-", "final", "eval_results.json"]
    assert RunDir("runs/x").checkpoint(500).as_posix() == "runs/x/checkpoint-000500"


def imported_modules(path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", LIBRARY + COMMANDS, ids=lambda path: path.name)
def test_no_entry_point_is_imported_by_the_library_or_by_another_entry_point(path):
    # an entry point runs another as a command (subprocess), and shares code through the library
    assert not imported_modules(path) & set(ENTRY_POINTS) - {path.stem}


def test_the_published_gpt2_figures_are_written_only_in_the_report_module():
    from gpt2repro.report import GPT2_124M_REFERENCE

    figures = [value for value in GPT2_124M_REFERENCE.values() if isinstance(value, float)]
    spellings = {f"{value:g}" for value in figures} | {f"{100 * value:.2f}" for value in figures if value < 1}
    for path in CODE:
        if path.name != "report.py":  # code, docstrings and comments alike: prose reads the figures from there
            found = [figure for figure in spellings if figure in path.read_text()]
            assert not found, f"{path.relative_to(REPO)} restates {found}; read them from GPT2_124M_REFERENCE"


@pytest.mark.parametrize("path", [p for p in LIBRARY if p.name != "__init__.py"], ids=lambda path: path.name)
def test_every_library_module_has_its_row_in_the_readme_layout_table(path):
    assert f"| `gpt2repro/{path.name}` |" in (REPO / "README.md").read_text()
