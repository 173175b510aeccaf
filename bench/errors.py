"""The errors a user can cause, and how the CLIs report them: one line naming the problem and the fix, exit 2."""

import errno
import sys
from contextlib import contextmanager


class UserError(Exception):
    """Bad input (missing weights, a wrong path, an impossible option): printed as one line, exit 2."""


# Errors of the environment rather than of the program: each gets its fix.
ENVIRONMENT_FIXES = {
    errno.ENOSPC: "free disk space there, or pass another --out / --cache-dir",
    errno.EDQUOT: "free space in your quota, or pass another --out / --cache-dir",
    errno.EACCES: "make it writable, or pass another --out / --cache-dir",
    errno.EPERM: "make it writable, or pass another --out / --cache-dir",
    errno.EROFS: "the file system is read-only: pass another --out / --cache-dir",
    errno.ENOTDIR: "a file stands where a folder is needed: move it, or pass another --out",
    errno.EISDIR: "a folder stands where a file is needed: move it, or pass another path",
    errno.EEXIST: "a file stands where a folder is needed: move it, or pass another --out",
}


def environment_message(error: OSError) -> str | None:
    """One line for an environment error (full disk, permission, a file in the way), None for any other."""
    fix = ENVIRONMENT_FIXES.get(error.errno)
    if fix is None:
        return None
    where = error.filename if error.filename is not None else "a file"
    return f"cannot write {where} ({error.strerror}): {fix}"


@contextmanager
def exit_on_user_error(prog: str):
    """For CLIs: a UserError, or an environment error such as a full disk, becomes ``prog: error: <message>`` on
    stderr and exit status 2."""
    try:
        yield
    except UserError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:
        message = environment_message(error)
        if message is None:
            raise
        print(f"{prog}: error: {message}", file=sys.stderr)
        sys.exit(2)
