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
from rich.console import Console, ConsoleDimensions
from rich.table import Table
from rich.tree import Tree

from suitkit.errors import AuthenticationError, PolicyError, ProcessingError, SuitError

PIPE_WIDTH = 1 << 14  # the width a tree or table is laid out in when stdout is not a terminal


class _Out(Console):
    """Standard output: a line of text is never wrapped (``soft_wrap``), and a tree or table
    never loses the end of a line. Soft wrap on a renderable crops each line at the terminal
    width with no mark (a digest cut short looks whole), so renderables fold instead; piped, a
    tree or a table is laid out ``PIPE_WIDTH`` wide so that each item stays on one line for
    scripts (a rule, which fills the width, keeps the usual one)."""

    _wide = False

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        return ConsoleDimensions(PIPE_WIDTH, size.height) if self._wide else size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]

    def print(self, *objects: Any, **kwargs: Any) -> None:
        if all(isinstance(o, str) for o in objects):
            super().print(*objects, **kwargs)
            return
        kwargs.setdefault("soft_wrap", False)
        self._wide = (not self.is_terminal
                      and all(isinstance(o, str | Tree | Table) for o in objects))
        try:
            super().print(*objects, **kwargs)
        finally:
            self._wide = False


out = _Out(highlight=False, soft_wrap=True)
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
