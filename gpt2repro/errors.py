"""One way to fail: errors a user can fix end a command with one `error: ...` line and exit status 1; anything
else (a torch RuntimeError, a bug) keeps its traceback.

Every error class of the project derives from UserError, and every command's entry point is wrapped by `cli`:

    @cli
    def main(argv=None): ...
"""

import functools
import sys


class UserError(Exception):
    """A problem the user can fix (a setting, a file, the network): the message says which and what to do."""

    exit_code = 1


class UsageError(UserError, ValueError):
    """A command-line value that cannot work, found before any work starts."""


def first_line(error: BaseException, with_type: bool = False, limit: int = 200) -> str:
    """The first line of an exception's message (libraries' messages run over several), at most `limit` characters,
    after its type if `with_type` (a KeyError's message is only the key); its type alone if it has no message."""
    text = str(error).strip()
    line = text.splitlines()[0].strip()[:limit] if text else ""
    if not line:
        return type(error).__name__
    return f"{type(error).__name__}: {line}" if with_type else line


def cli(main):
    """`main(argv=None)` as a command: a UserError becomes one `error: ...` line on stderr and its exit status
    (SystemExit, so callers and tests can catch it); every other exception passes through unchanged."""

    @functools.wraps(main)
    def command(argv=None):
        try:
            return main(argv)
        except UserError as e:
            if e.exit_code == 1:
                raise SystemExit(f"error: {e}") from None  # Python prints it to stderr and exits 1
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(e.exit_code) from None

    return command


__all__ = ["UsageError", "UserError", "cli", "first_line"]
