"""train.py's command line lives in the library (gpt2repro.settings) and stays what users know: every flag, its
group, metavar, choices and help text (defaults and the presets' values included) against a recorded copy.

A flag added or changed on purpose: regenerate the copy with
    .venv/bin/python tests/test_settings.py > tests/fixtures/train_command_line.json
and let the diff show what --help now says differently."""

import contextlib
import dataclasses
import io
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: this checkout's library
from gpt2repro.settings import Settings, SettingsError, parse_settings, settings_help, settings_parser  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "train_command_line.json"


def command_line() -> list[dict]:
    """Each group of train.py's parser and each flag in it, as --help presents them."""
    parser = settings_parser()
    return [
        {"group": group.title, "flags": [
            {"flag": action.option_strings, "metavar": action.metavar, "choices": list(action.choices or []),
             "default": action.default, "help": action.help}
            for action in group._group_actions
        ]}
        for group in parser._action_groups if group._group_actions
    ]


def test_the_command_line_is_the_recorded_one_flag_for_flag():
    assert command_line() == json.loads(FIXTURE.read_text())


def test_train_py_help_is_the_library_parser_headed_by_train_py_s_docstring(monkeypatch):
    import train

    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps to the terminal's width
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit):
        train.main(["--help"])
    assert printed.getvalue() == settings_parser(train.__doc__).format_help()
    assert printed.getvalue().startswith("usage:") and train.__doc__.splitlines()[0] in printed.getvalue()


def test_config_files_are_typed_like_flags(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("lr: 6e-4\nmax_steps: 100\ncompile: false\n")  # YAML reads 6e-4 as a string
    _, s = parse_settings(["--config", str(config)])
    assert (s.lr, s.max_steps, s.compile) == (6e-4, 100, False)
    for text, message in [("lr: fast\n", "lr: 'fast' is not a float"), ("max_steps: 1.5\n", "is not a int"),
                          ("mixed_precision: fp16\n", "choose one of auto, bf16, no"), ("lrr: 1\n", "unknown")]:
        config.write_text(text)
        with pytest.raises(SettingsError, match=message):
            parse_settings(["--config", str(config)])


def test_help_says_what_every_flag_means_with_its_default_and_choices(capsys):
    with pytest.raises(SystemExit):
        parse_settings(["--help"])
    text = capsys.readouterr().out
    assert "one dataclass below" not in text
    entries = {}  # each option's entry: its first line (two spaces, then the flag) and the deeper-indented ones
    for line in text.split("options:", 1)[1].splitlines():
        if line.startswith("  --"):
            flag = line.split()[0].rstrip(",")
            entries[flag] = line
        elif line.startswith("   ") and entries:
            entries[flag] += line
    entries = {flag: " ".join(entry.split()) for flag, entry in entries.items()}  # argparse wraps: word by word
    options = " ".join(entries.values())
    for f in dataclasses.fields(Settings):
        entry = entries.get("--" + f.name.replace("_", "-"), "")
        comment = " ".join(settings_help()[f.name][1].split())
        assert comment and comment[:30] in entry, f.name  # the dataclass comment is the help text
        assert "(default: " in entry, f.name
    assert "--mixed-precision {auto,bf16,no}" in options and "--hellaswag off|auto|FILE" in options
    assert "--max-steps N optimizer steps to train" in options and "gpt2-124m-40b: 76292" in options


if __name__ == "__main__":
    print(json.dumps(command_line(), indent=1))
