"""A child process that runs ``tracker.store.migrate`` and SIGKILLs itself before its Nth database
statement (tests/tracker/test_migration_kill.py).

It imports suitkit once, then for each line ``N URL`` read from stdin forks a child that
counts every statement sent to the database (``before_cursor_execute``) and every commit
(``commit``), and kills itself with SIGKILL just before the Nth: no ``finally``, no rollback,
exactly a ``kill -9`` (or a power cut of the process) at that point. It answers one line:
``killed N``, or ``done COUNT`` when the migration finished first (COUNT is how many
statements and commits it made: the test's upper bound for N), or ``failed STATUS``.
The hook lives only here: production code has none.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from suitkit.tracker.store import migrate

_steps = {"kill_at": 0, "count": 0}


def _step(*_: Any) -> None:
    _steps["count"] += 1
    if _steps["count"] == _steps["kill_at"]:
        os.kill(os.getpid(), signal.SIGKILL)


event.listen(Engine, "before_cursor_execute", _step)
event.listen(Engine, "commit", _step)


def _child(kill_at: int, url: str) -> None:
    _steps["kill_at"] = kill_at
    try:
        migrate(url)
    except BaseException as e:  # noqa: BLE001 - reported to the test, which fails on it
        sys.stdout.write(f"failed {type(e).__name__}: {e}\n".replace("\n", " ") + "\n")
        sys.stdout.flush()
        os._exit(1)
    sys.stdout.write(f"done {_steps['count']}\n")
    sys.stdout.flush()
    os._exit(0)


def main() -> None:
    for line in sys.stdin:
        number, url = line.split(" ", 1)
        pid = os.fork()
        if pid == 0:
            _child(int(number), url.strip())
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
            sys.stdout.write(f"killed {number}\n")
        elif os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            pass  # the child wrote "done COUNT"
        elif os.WIFEXITED(status) and os.WEXITSTATUS(status) == 1:
            pass  # the child wrote "failed ..."
        else:
            sys.stdout.write(f"failed status {status}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
