"""User-facing errors: one line that names the problem and the fix, never a traceback."""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., object])


# NOTE: a write that failed for lack of room: a full disk, a quota, a file-size limit (ulimit -f)
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class MaskpruneError(Exception):
    """An error caused by the user's input or environment, printed as one line."""


def permission_text(err: PermissionError) -> str:
    """'<path>: permission denied; ...' with the fix (the data folder and the outputs must be accessible)."""
    path = err.filename or "a file"
    return (
        f"{path}: permission denied; give this user access (e.g. `chmod -R u+rwX` on the folder, or read "
        "access for data) or point data.root at a copy it can read"
    )


def no_room_text(err: OSError) -> str:
    """'<path>: no space left on device; ...' with the fix (room for the outputs; the old ones are whole)."""
    reason = (err.strerror or "no room").lower()
    return (
        f"{err.filename or 'an output'}: {reason}; free space on its file system (or raise the quota or "
        "file-size limit) and rerun: the previous outputs are left whole"
    )


def exit_on_user_error(main: F) -> F:
    """Run a CLI entry point; a MaskpruneError, a file this user may not read or write, or a write
    that found no room, becomes one line on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return main(*args, **kwargs)
        except MaskpruneError as err:
            print(f"maskprune: error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        except PermissionError as err:
            print(f"maskprune: error: {permission_text(err)}", file=sys.stderr)
            raise SystemExit(2) from None
        except OSError as err:
            if err.errno not in NO_ROOM:
                raise
            print(f"maskprune: error: {no_room_text(err)}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper  # type: ignore[return-value]
