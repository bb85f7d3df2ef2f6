"""One way to fail: every error a user can fix is a UserError, and every command prints it as one line."""

import ast
import importlib.util
import re

import pytest
from conftest import REPO

from gpt2repro.errors import UsageError, UserError, cli, first_line

# What a user runs, and the library beneath it (benchmarks are developer tools with their own reporting).
PROJECT_FILES = sorted([*REPO.glob("*.py"), *(REPO / "gpt2repro").glob("*.py"), *(REPO / "scripts").glob("*.py")])


def load(path):
    spec = importlib.util.spec_from_file_location(f"_errors_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def exception_classes(path) -> list[str]:
    """Classes of `path` with an exception among their bases (by name: Error, Exception, Failed, ...)."""
    tree = ast.parse(path.read_text())
    return [
        node.name for node in tree.body if isinstance(node, ast.ClassDef)
        and any(re.search(r"(Error|Exception|Failed)$", ast.unparse(base)) for base in node.bases)
    ]


def test_every_exception_class_of_the_project_is_a_user_error():
    found = {path: exception_classes(path) for path in PROJECT_FILES}
    found = {path: names for path, names in found.items() if names}
    assert len(sum(found.values(), [])) >= 15  # SettingsError, ShardError, ... : the scan sees them
    for path, names in found.items():
        module = load(path) if path.parent.name == "scripts" else importlib.import_module(
            ("gpt2repro." if path.parent.name == "gpt2repro" else "") + path.stem)
        for name in names:
            assert issubclass(getattr(module, name), UserError), f"{path.name}: {name} is not a UserError"


def test_no_command_ends_with_an_error_of_its_own_making():
    # sys.exit("error: ..."), raise SystemExit("error: ...") and print("error: ...") then exit: errors.cli's job
    pattern = re.compile(r"""(sys\.exit|SystemExit)\(f?["']error|print\(f?["']error:""")
    for path in PROJECT_FILES:
        if path.name != "errors.py":
            assert not pattern.search(path.read_text()), f"{path.name} ends with an error itself; raise a UserError"


@pytest.mark.parametrize("command", ["train.py", "prepare_data.py", "eval_hellaswag.py", "run_report.py",
                                     "convert_gpt2.py", "scripts/reproduce_gpt2.py"])
def test_every_command_entry_is_wrapped_once(command):
    text = (REPO / command).read_text()
    assert len(re.findall(r"^@cli\n", text, re.M)) == 1, f"{command}: wrap its entry in errors.cli exactly once"


def test_a_user_error_is_one_line_and_exit_status_1(capsys):
    @cli
    def main(argv=None):
        raise UsageError(f"--flag {argv}: not possible; pass another")

    with pytest.raises(SystemExit) as exit_info:
        main("x")
    assert exit_info.value.code == "error: --flag x: not possible; pass another"  # printed by Python, exit 1


def test_a_user_error_with_its_own_exit_status_keeps_it(capsys):
    class ChildFailed(UserError):
        exit_code = 3

    @cli
    def main(argv=None):
        raise ChildFailed("step failed (exit 3)")

    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 3 and capsys.readouterr().err == "error: step failed (exit 3)\n"


def test_other_exceptions_keep_their_traceback():
    @cli
    def main(argv=None):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        main()


@pytest.mark.parametrize(("error", "with_type", "expected"), [
    (ValueError("first\nsecond"), False, "first"),
    (ValueError("  padded.  \nmore"), True, "ValueError: padded."),
    (KeyError("weight"), True, "KeyError: 'weight'"),
    (RuntimeError(""), True, "RuntimeError"),
    (OSError(), False, "OSError"),
    (ValueError("x" * 500), False, "x" * 200),
])
def test_first_line_of_an_exception(error, with_type, expected):
    assert first_line(error, with_type=with_type) == expected
