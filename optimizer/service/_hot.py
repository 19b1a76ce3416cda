"""ask and tell answered straight from the gate, without FastAPI's routing and dependency machinery.

They are nearly every request of a busy service, and FastAPI's layers (middleware
stack, route matching, dependency solving, request objects) took about a quarter of
the server's time for each (issue 12). Only ordinary requests take this path, and
only their answers and the errors of the work itself are given here::

    gate (host, token, body read) ─> POST /v1/studies/{name}/ask or .../trials/{n}/tell,
        │  a JSON content type, a body parse_json accepts, the same pydantic model valid?
        ├─ no ─> FastAPI, as for every other request: it answers with its own errors (422 ...)
        └─ yes ─> lease sweep if due ─> the route's own work on a worker thread ─> 200 JSON;
                  a studyhall error ─> the app's handler for it (the same envelope as FastAPI's path)

So a request gets the same answer on either path; the route (and its OpenAPI
description) stays in FastAPI for everything else.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pydantic
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from studyhall.optimizer.service import _models as m
from studyhall.optimizer.service._http import parse_json
from studyhall.optimizer.service._routes import AskWork, TellWork

_ASK = re.compile(r"/v1/studies/([^/]+)/ask")
# No leading zeros, at most Optuna's integer column: anything else is FastAPI's to judge.
_TELL = re.compile(r"/v1/studies/([^/]+)/trials/(0|[1-9][0-9]{0,9})/tell")
_NAME = re.compile(r"[^\x00/]{1," + str(m.MAX_NAME) + "}")


class HotRoutes:
    """The fast path of ask and tell for one app (see the module docstring).

    Args:
        app: the FastAPI app, whose exception handlers answer the work's errors.
        sweep: the routes' dependency that expires due leases.
        ask: the ask route's work, ``(name, body) -> answer``.
        tell: the tell route's work, ``(name, number, body) -> answer``.
    """

    def __init__(self, app: FastAPI, sweep: Callable[[], Awaitable[None]], ask: AskWork, tell: TellWork) -> None:
        self.app = app
        self.sweep = sweep
        self.ask = ask
        self.tell = tell

    async def answer(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> bool:
        """Answer ``scope`` (with its whole ``body``) if it is an ordinary ask or tell; False leaves it to FastAPI."""
        if scope["method"] != "POST" or not body or not _json_body(scope):
            return False
        path = scope["path"]
        model: type[m.AskRequest | m.TellRequest]
        if (match := _ASK.fullmatch(path)) is not None:
            name, number, model, template = match[1], None, m.AskRequest, "/v1/studies/{name}/ask"
        elif (match := _TELL.fullmatch(path)) is not None:
            name, number, model = match[1], int(match[2]), m.TellRequest
            template = "/v1/studies/{name}/trials/{number}/tell"
            if number > m.MAX_TRIAL_NUMBER:
                return False
        else:
            return False
        if not _NAME.fullmatch(name):
            return False
        try:
            doc = parse_json(body)
        except ValueError:  # JSONDecodeError too: FastAPI's InvalidJSON answer
            return False
        if not isinstance(doc, dict):
            return False
        try:
            request = model.model_validate(doc)
        except pydantic.ValidationError:
            return False
        scope["route"] = _Route(template)  # the metrics' label: the route template, as on FastAPI's path
        try:
            await self.sweep()
            if number is None:
                assert isinstance(request, m.AskRequest)
                result = await self.ask(name, request)
            else:
                assert isinstance(request, m.TellRequest)
                result = await self.tell(name, number, request)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise  # the gate's 500, as on FastAPI's path
            response = handler(None, exc)
            if inspect.isawaitable(response):
                response = await response
            await response(scope, receive, send)
            return True
        await JSONResponse(result)(scope, receive, send)
        return True

    def _handler(self, exc: Exception) -> Callable[[Any, Exception], Any] | None:
        handlers = self.app.exception_handlers
        for cls in type(exc).__mro__:
            if cls in handlers:
                return handlers[cls]
        return None


@dataclasses.dataclass(frozen=True)
class _Route:
    """What the gate reads of ``scope["route"]``: the template of the route answered."""

    path: str


def _json_body(scope: Scope) -> bool:
    for k, v in scope["headers"]:
        if k == b"content-type":
            return bool(v.split(b";", 1)[0].strip().lower() == b"application/json")
    return False
