"""The response contract check (issue #17): every answer the app sends, held against the app's
own ``/openapi.json``, for test runs.

``ContractCheck`` is an ASGI middleware that, for each HTTP response, finds the documented
operation of the request (method and path template), and writes one JSON line to its log for
each thing that contradicts the document: a status the operation does not declare, a content
type it does not declare for that status, a JSON body that does not validate against the
declared schema (JSON Schema 2020-12, ``$ref`` into the document's components), an error of
any route, documented or not, that is not problem details (``suitkit.problems``). It never
changes a response. ``ServerConfig.contract_log`` switches it on (``suitkit serve``: the
environment variable ``SUITKIT_TEST_CONTRACT_LOG``, read by the CLI); the test suites of the
tracker, the server and the end-to-end flows turn it on and fail a test whose servers wrote a
line (tests/conftest.py).

Not checked: the probes ``/healthz`` and ``/readyz`` (a 503 of ``/readyz`` is a report of
what is not ready, for an orchestrator, not an error of the API), the API's routes on the
metrics listener (``other_ports``: it answers 404 to all but ``/metrics``), bodies over
``MAX_CHECKED`` bytes, streams (``text/event-stream``), binary bodies (their media type is),
answers to HEAD, the answers of the hawkBit DDI routes (hawkBit's contract:
``FOREIGN_TAGS``; their errors are). Needs ``jsonschema_rs`` (the ``test`` extra): a
test-time tool, never on in production.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from suitkit.problems import PROBLEM_MEDIA_TYPE

__all__ = ["FOREIGN_TAGS", "MAX_CHECKED", "ContractCheck"]

FOREIGN_TAGS = frozenset({"hawkBit DDI"})
"""Operations whose contract is another project's (their tag in ``/openapi.json``): only
their errors are checked (problem details, as every error of the app)."""

_PROBES = frozenset({"/healthz", "/readyz"})
MAX_CHECKED = 4 * 1024 * 1024
"""Bytes of a body the check keeps; a longer body has only its status and type checked."""
_JSON = re.compile(r"application/(?:[a-z0-9.+-]+\+)?json")


class ContractCheck:
    """ASGI middleware: each response checked against ``openapi()``; what contradicts it is
    appended to ``log`` (one JSON object a line: method, path, status, problem)."""

    def __init__(self, app: ASGIApp, openapi: Callable[[], dict[str, Any]], log: Path, *,
                 other_ports: frozenset[int] = frozenset()) -> None:
        self.app = app
        self.openapi = openapi
        self.log = log
        self.other_ports = other_ports
        self._lock = threading.Lock()
        self._routes: list[tuple[re.Pattern[str], str]] | None = None
        self._validators: dict[tuple[str, str, str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seen: dict[str, Any] = {"status": 0, "type": "", "body": bytearray(), "whole": True}

        async def watching(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                for name, value in message.get("headers", []):
                    if name.lower() == b"content-type":
                        seen["type"] = value.decode("latin-1")
            elif message["type"] == "http.response.body" and seen["whole"]:
                body: bytearray = seen["body"]
                body.extend(message.get("body", b""))
                if len(body) > MAX_CHECKED:
                    seen["whole"] = False
                    body.clear()
            await send(message)

        await self.app(scope, receive, watching)
        if seen["status"] and scope["path"] not in _PROBES:
            server = scope.get("server")
            problems = self.problems(scope["method"], scope["path"], seen["status"],
                                     seen["type"], bytes(seen["body"]) if seen["whole"]
                                     else None,
                                     api=not server or server[1] not in self.other_ports)
            if problems:
                self._write(scope["method"], scope["path"], seen["status"], problems)

    # ---- the checks

    def problems(self, method: str, path: str, status: int, media: str,
                 body: bytes | None, *, api: bool = True) -> list[str]:
        """What in this answer contradicts the document (``[]``: nothing); ``api=False``: a
        listener that serves no API (the metrics port): its errors are checked alone."""
        if method == "HEAD":
            return []
        base = media.split(";", maxsplit=1)[0].strip().lower()
        found: list[str] = []
        if status >= 400 and status != 416 and base != PROBLEM_MEDIA_TYPE:
            found.append(f"an error that is not {PROBLEM_MEDIA_TYPE}: {base or 'no type'}")
        template = self._template(path) if api else None
        operation = (self.openapi()["paths"].get(template, {}).get(method.lower())
                     if template is not None else None)
        if operation is None or FOREIGN_TAGS & set(operation.get("tags", ())):
            return found
        responses: dict[str, Any] = operation.get("responses", {})
        declared = responses.get(str(status)) or responses.get(f"{status // 100}XX") \
            or responses.get("default")
        if declared is None:
            return [*found, f"status {status} is not documented "
                            f"({', '.join(sorted(responses))})"]
        content: dict[str, Any] = declared.get("content", {})
        if status in (204, 304) or not content:
            if body and status not in (204, 304, 416):
                found.append(f"a body of {len(body)} bytes where none is documented")
            return found
        if base not in content:
            return [*found, f"content type {base or 'none'} is not documented for {status} "
                            f"({', '.join(sorted(content))})"]
        schema = content[base].get("schema")
        if body is None or schema is None or not _JSON.fullmatch(base):
            return found
        try:
            doc = json.loads(body)
        except ValueError:
            return [*found, "the body is not JSON"]
        validator = self._validator(template or path, method, str(status), base, schema)
        errors = [f"{'/'.join(str(p) for p in e.instance_path) or 'the body'}: "
                  f"{e.message[:200]}" for e in validator.iter_errors(doc)]
        return found + [f"the body does not match its schema: {e}" for e in errors[:5]]

    def _template(self, path: str) -> str | None:
        if self._routes is None:
            self._routes = [
                (re.compile(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(name))), name)
                for name in self.openapi().get("paths", {})]
        for pattern, name in self._routes:
            if pattern.fullmatch(path):
                return name
        return None

    def _validator(self, template: str, method: str, status: str, media: str,
                   schema: dict[str, Any]) -> Any:
        key = (template, method, status, media)
        if key not in self._validators:
            import jsonschema_rs  # noqa: PLC0415 - the test extra's, loaded only when on

            root = {**schema, "components": self.openapi().get("components", {})}
            self._validators[key] = jsonschema_rs.Draft202012Validator(root)
        return self._validators[key]

    def _write(self, method: str, path: str, status: int, problems: list[str]) -> None:
        line = json.dumps({"method": method, "path": path[:200], "status": status,
                           "problems": problems}) + "\n"
        try:
            with self._lock, self.log.open("a", encoding="utf-8") as file:
                file.write(line)
        except OSError:  # the test run that reads it is gone: nothing to tell
            pass
