"""What every suitkit command shares: the consoles, exit statuses and error handling.

Each command turns a ``SuitError`` into one line on stderr and an exit status: 0 success,
1 verification, policy or processing failure, 2 bad usage or undecodable input.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console

from suitkit.errors import AuthenticationError, PolicyError, ProcessingError, SuitError

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int) -> NoReturn:
    """Print one error line and exit with ``code``."""
    err.print(f"suitkit: error: {message}", markup=False)
    raise typer.Exit(code)


def exit_code(error: SuitError) -> int:
    """1 for a verification, policy or processing failure; 2 for unusable input."""
    if isinstance(error, AuthenticationError | PolicyError | ProcessingError):
        return EXIT_FAILED
    return EXIT_USAGE


def handles_errors(fn: F) -> F:
    """Turn SuitError and OSError into one line on stderr and an exit status."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SuitError as e:
            fail(str(e), exit_code(e))
        except OSError as e:
            fail(f"{e.filename or ''}: {e.strerror or e}".lstrip(": "), EXIT_USAGE)

    return wrapper  # type: ignore[return-value]


def read_input(path: Path, what: str) -> bytes:
    """Read a file named on the command line, with a one-line error if that fails."""
    try:
        return path.read_bytes()
    except OSError as e:
        fail(f"cannot read {what} {path}: {e.strerror or e}", EXIT_USAGE)


def read_token(path: Path) -> str:
    """A bearer token from a file named on the command line: one token, no spaces (exit 2)."""
    token = read_input(path, "token file").decode("utf-8", "replace").strip()
    if not token or any(c.isspace() for c in token):
        fail(f"token file {path} must hold one token without spaces", EXIT_USAGE)
    return token
