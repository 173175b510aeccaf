"""The one error type a user can cause: its message names the problem and the fix in one line."""

import sys
from contextlib import contextmanager


class UserError(Exception):
    """Bad input (missing weights, a wrong path, an impossible option): printed as one line, exit 2."""


@contextmanager
def exit_on_user_error(prog: str):
    """For CLIs: a UserError becomes ``prog: error: <message>`` on stderr and exit status 2."""
    try:
        yield
    except UserError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        sys.exit(2)
