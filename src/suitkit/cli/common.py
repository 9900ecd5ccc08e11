"""What every suitkit command shares: the consoles, exit statuses and error handling.

Both consoles print text from others (device names, hardware facts and event details a device
sent the tracker, campaign names, error messages of a server) with every control character
(but tab and newline) and every bidirectional override shown as an escape such as ``\\u001b``:
a device that stored ``ESC [2J`` or ``U+202E`` cannot clear, retitle or reorder the
operator's terminal (``printable``).

Each command turns a ``SuitError`` into one line on stderr and an exit status: 0 success,
1 verification, policy or processing failure, 2 bad usage or undecodable input, 3 a storage
failure (a disk full, read-only or failing while writing: the input was fine, retry once there is
room), 4 an internal error (a bug).
"""

from __future__ import annotations

import errno
import functools
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console, ConsoleDimensions, ConsoleOptions, RenderableType
from rich.segment import Segment
from rich.table import Table
from rich.tree import Tree

from suitkit.errors import (
    AuthenticationError,
    DecodeError,
    PolicyError,
    ProcessingError,
    StorageError,
    SuitError,
)

PIPE_WIDTH = 1 << 14  # the width a tree or table is laid out in when stdout is not a terminal


_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e"
                     "\u2066-\u2069]")
"""Control characters but tab and newline (ESC starts terminal commands, CR overwrites a line,
C1 0x9B is a one-character CSI) and the bidirectional marks, embeddings, overrides and isolates
that reorder what follows them (the "Trojan Source" characters)."""


def printable(text: str) -> str:
    """``text`` with each control character (but tab and newline) and bidirectional control
    written as an escape ``\\uXXXX``: safe to show on a terminal."""
    return _UNSAFE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


class _Neutral(Console):
    """A console whose text never holds a terminal command from the data it prints
    (``printable``); rich's own styles and cursor moves are not text and go through."""

    def render(self, renderable: RenderableType, options: ConsoleOptions | None = None
               ) -> Any:
        for segment in super().render(renderable, options):
            if segment.control is None and _UNSAFE.search(segment.text):
                yield Segment(printable(segment.text), segment.style)
            else:
                yield segment


class _Out(_Neutral):
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
err = _Neutral(stderr=True, highlight=False, soft_wrap=True)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STORAGE, EXIT_INTERNAL = 0, 1, 2, 3, 4
EXIT_UNREACHABLE = 5
"""Every command that talks to a server: it could not be reached (refused, unknown name,
timeout, TLS failure). Nothing was changed; the same command can simply be run again."""


def new_app(**settings: Any) -> typer.Typer:
    """A command group with the house settings: help text written in Markdown (``code``,
    paragraphs joined as prose), ``-h`` as well as ``--help``, no pretty tracebacks (main()
    prints one line), no completion options (the root command has them)."""
    defaults: dict[str, Any] = {
        "add_completion": False, "pretty_exceptions_enable": False,
        "rich_markup_mode": "markdown",
        "context_settings": {"help_option_names": ["-h", "--help"]},
    }
    return typer.Typer(**{**defaults, **settings})


def _flag_type(self: Any, ctx: Any) -> str | None:
    """No ``<bool>`` beside a flag in the help: a flag takes no value."""
    if getattr(self, "is_flag", False):
        return None
    return _typed_display(self, ctx)


_typed_display = typer.core.TyperOption.display_type_rich
typer.core.TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign]

# OS errors that say the storage failed, not that the user named the wrong file.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG})

F = TypeVar("F", bound=Callable[..., Any])


JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")]
"""``--json``: every command that prints data takes it (tests/cli/test_json.py)."""


def print_json(doc: Any) -> None:
    """One JSON document on stdout (sorted keys, UTF-8 text as it is)."""
    out.print(json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False), markup=False)


def fail(message: str, code: int) -> NoReturn:
    """Print one error line and exit with ``code``."""
    err.print(f"suitkit: error: {message}", markup=False)
    raise typer.Exit(code)


def exit_code(error: SuitError) -> int:
    """1 for a verification, policy or processing failure; 3 for a storage failure; 2 for
    unusable input."""
    if isinstance(error, AuthenticationError | PolicyError | ProcessingError):
        return EXIT_FAILED
    if isinstance(error, StorageError):
        return EXIT_STORAGE
    return EXIT_USAGE


def os_error(error: OSError, where: object = None) -> SuitError:
    """An OS error that escaped the library, as a SuitError: a ``StorageError`` ("no space
    left on device writing PATH") when the storage failed, a ``DecodeError`` naming the file
    otherwise. ``where`` names the place when the error has no file name."""
    reason = (error.strerror or str(error)).strip()
    place = error.filename if error.filename is not None else where
    if error.errno in STORAGE_ERRNOS:
        reason = reason[:1].lower() + reason[1:]
        return StorageError(f"{reason} writing {place}" if place is not None
                            else f"storage failure: {reason}")
    return DecodeError("" if place is None else str(place), reason)


@contextmanager
def writing(where: object) -> Iterator[None]:
    """Inside the block, an OS error with no file name of its own is named after ``where``
    (e.g. a device's slot store failing as the disk fills up)."""
    try:
        yield
    except OSError as e:
        raise os_error(e, where) from e


def handles_errors(fn: F) -> F:
    """Turn SuitError and OSError into one line on stderr and an exit status."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SuitError as e:
            fail(str(e), exit_code(e))
        except OSError as e:
            error = os_error(e)
            fail(str(error), exit_code(error))

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
