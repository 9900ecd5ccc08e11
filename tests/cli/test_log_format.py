"""The serve log's formatters (cli/server.py): JSON lines, the request id, SQL parameters
hidden in messages as in tracebacks (they may hold credential hashes)."""

from __future__ import annotations

import json
import logging

from suitkit.cli.server import _Context, _Json, _Redacting

FMT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
SQL = ("(psycopg.errors.UniqueViolation) duplicate key\n[SQL: INSERT INTO api_tokens ...]\n"
       "[parameters: ('tok_1', 'pbkdf2$secret-hash-42')]\n(Background on this error at: x)")


def record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError(SQL)
        except RuntimeError as e:
            exc_info = (type(e), e, e.__traceback__)
    made = logging.LogRecord("suitkit.tracker", logging.WARNING, __file__, 1, message, args,
                             exc_info)
    _Context(lambda: "rid-7").filter(made)
    return made


def test_sql_parameters_are_hidden_in_messages_and_tracebacks() -> None:
    for formatter in (_Redacting(FMT), _Json(FMT)):
        for made in (record("campaign tick failed: %s", SQL), record("failed", exc=True)):
            line = formatter.format(made)
            assert "secret-hash-42" not in line, line
            assert "[parameters hidden]" in line


def test_json_lines_carry_the_request_id_and_access_fields() -> None:
    access = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1,
                               '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "GET", "/x?secret_key=abc&n=1", "1.1", 200), None)
    _Context(lambda: "rid-8").filter(access)
    doc = json.loads(_Json(FMT).format(access))
    assert doc["request_id"] == "rid-8"
    assert doc["path"] == "/x?secret_key=***&n=1"
    assert (doc["method"], doc["status"], doc["client"]) == ("GET", 200, "127.0.0.1:5")
    assert doc["logger"] == "uvicorn.access" and doc["level"] == "info"
    plain = _Redacting(FMT).format(record("hello"))
    assert plain.endswith("WARNING suitkit.tracker: hello [request rid-7]")
