"""Task bookkeeping for ``bridge.WorkerPool``: what a task is, how it travels, how it ends.

The pool side of one task: ``Task`` (the future, the pickled call, the deadline,
the channel callbacks), ``encode_call`` before it leaves, ``settle`` when the
worker answers DONE, ``answer_call`` / ``deliver_send`` for channel messages, and
``RemoteTraceback``, the worker's traceback attached to a task's exception (the
errors themselves, ``SerializationError`` and ``ChannelError``, are in
``bridge/_errors.py``). ``run_inline`` runs the same task code in this process
with a channel, for callers that want no subprocess.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any

import cloudpickle

from studyhall.bridge._errors import ChannelError, InvalidRequest, SerializationError
from studyhall.bridge.pool import _worker

logger = logging.getLogger("studyhall.bridge.pool")

OnCall = Callable[[Any], Any]
OnSend = Callable[[Any], None]


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, attached as its ``__cause__``."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "\n\n" + "".join(f"    {line}\n" for line in self.text.rstrip().splitlines())


@dataclass(eq=False)
class Task:
    """One submitted call and everything the pool knows about it."""

    id: int
    blob: bytes
    future: Future[Any]
    timeout: float | None
    on_call: OnCall | None = None
    on_send: OnSend | None = None
    started: float | None = None  # time.monotonic() when it was sent to a worker
    running: bool = False  # its future was set running (it may have been sent ahead to a worker that died)
    deadline: float | None = None


def check_target(fn: object) -> None:
    """Reject what can never run, before it is queued."""
    if isinstance(fn, str):
        module, sep, name = fn.partition(":")
        if not (module and sep and name):
            raise InvalidRequest(
                f"task target {fn!r} is not of the form 'package.module:function'; "
                "pass a callable or a 'module:function' string"
            )
    elif not callable(fn):
        raise InvalidRequest(f"task target must be callable or 'module:function', got {type(fn).__name__}")


def encode_call(fn: object, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """Pickle ``fn(*args, **kwargs)`` for a worker (cloudpickle: lambdas and closures too)."""
    call = (fn, args, kwargs)
    try:
        # Plain pickle is several times faster; it refers to module-level objects by name
        # as cloudpickle does, but a name in the submitter's __main__ would not resolve in
        # a worker, and lambdas and closures do not pickle: cloudpickle takes those by value.
        blob = pickle.dumps(call, protocol=_worker.PROTOCOL)
        if b"__main__" not in blob:
            return blob
    except Exception:  # noqa: BLE001, S110 - pickle raises many kinds; cloudpickle gets its turn
        pass
    try:
        return cloudpickle.dumps(call, protocol=_worker.PROTOCOL)  # type: ignore[no-any-return]
    except Exception as exc:
        raise SerializationError(
            f"could not pickle the task {fn!r} or its arguments for a worker process "
            f"({type(exc).__name__}: {exc}); pass picklable arguments (plain data, module-level "
            "objects) or build the unpicklable object inside the task"
        ) from exc


def settle(task: Task, message: tuple[Any, ...]) -> bool:
    """Resolve the task's future from the worker's DONE message; False if an OK result could not be unpickled."""
    status = message[2]
    if status == _worker.OK:
        try:
            value = pickle.loads(message[3])
        except Exception as exc:  # noqa: BLE001
            _fail(
                task,
                SerializationError(f"the task's result could not be unpickled here: {type(exc).__name__}: {exc}"),
                exc,
            )
            return False
        with contextlib.suppress(InvalidStateError):  # failed meanwhile (its worker was killed)
            task.future.set_result(value)
    elif status == _worker.RAISED:
        _fail(task, _rebuild_exception(*message[3:]), None)
    else:  # UNPICKLABLE
        type_name, reason = message[3], message[4]
        _fail(
            task,
            SerializationError(
                f"the task returned a {type_name} that cannot be pickled ({reason}); "
                "return plain data (numbers, strings, lists, dicts, dataclasses of those)"
            ),
            None,
        )
    return True


def _rebuild_exception(blob: bytes | None, text: str, type_name: str, message: str) -> BaseException:
    exc: BaseException
    problem = "it could not be pickled in the worker"
    if blob is not None:
        try:
            exc = pickle.loads(blob)
        except Exception as unpickling:  # noqa: BLE001
            problem = f"it could not be unpickled here ({type(unpickling).__name__}: {unpickling})"
        else:
            exc.__cause__ = RemoteTraceback(text)
            return exc
    exc = SerializationError(f"the task raised {type_name}: {message} ({problem}; its traceback is the __cause__)")
    exc.__cause__ = RemoteTraceback(text)
    return exc


def _fail(task: Task, exc: BaseException, cause: BaseException | None) -> None:
    if cause is not None:
        exc.__cause__ = cause
    if not task.future.done():
        task.future.set_exception(exc)


def fail(task: Task, exc: BaseException) -> bool:
    """Fail the task's future unless it already finished; True if this call failed it."""
    if task.future.done():
        return False
    task.future.set_exception(exc)
    return True


def answer_call(task: Task | None, blob: bytes) -> tuple[bool, bytes]:
    """Run the submitter's ``on_call`` for one ``Channel.call``; (ok, pickled reply or exception)."""
    try:
        if task is None:
            raise ChannelError("Channel.call() arrived after its task ended; call only while the task runs")
        if task.on_call is None:
            raise ChannelError("the task used Channel.call() but submit() was given no on_call=")
        reply = task.on_call(pickle.loads(blob))
    except Exception as exc:  # noqa: BLE001 - it is re-raised in the worker
        return False, _pickle_error(exc)
    try:
        return True, cloudpickle.dumps(reply, protocol=_worker.PROTOCOL)
    except Exception as exc:  # noqa: BLE001
        return False, _pickle_error(
            SerializationError(f"on_call returned a {type(reply).__name__} that cannot be pickled: {exc}")
        )


def _pickle_error(exc: BaseException) -> bytes:
    try:
        blob: bytes = cloudpickle.dumps(exc, protocol=_worker.PROTOCOL)
        pickle.loads(blob)  # an exception that pickles but cannot be rebuilt would fail in the worker
        return blob
    except Exception:  # noqa: BLE001
        fallback = ChannelError(
            f"on_call raised {type(exc).__name__}: {exc} (not picklable, so re-raised as ChannelError)"
        )
        return cloudpickle.dumps(fallback, protocol=_worker.PROTOCOL)  # type: ignore[no-any-return]


def deliver_send(task: Task | None, blob: bytes) -> None:
    """Run the submitter's ``on_send`` for one ``Channel.send``; its errors are logged, not fatal."""
    if task is None or task.on_send is None:
        return
    try:
        task.on_send(pickle.loads(blob))
    except Exception:  # noqa: BLE001 - one bad message must not take the pool's reader down
        logger.exception("on_send of pool task %d raised; the message is dropped", task.id)


class _InlineChannel(_worker.Channel):
    def __init__(self, on_call: OnCall | None, on_send: OnSend | None) -> None:
        self._on_call = on_call
        self._on_send = on_send

    def call(self, payload: Any) -> Any:
        if self._on_call is None:
            raise ChannelError("the task used Channel.call() but run_inline() was given no on_call=")
        return self._on_call(payload)

    def send(self, payload: Any) -> None:
        if self._on_send is not None:
            self._on_send(payload)


def run_inline(
    fn: Any, /, *args: Any, on_call: OnCall | None = None, on_send: OnSend | None = None, **kwargs: Any
) -> Any:
    """Run a pool task in this process, with a channel that calls ``on_call``/``on_send`` directly.

    The same task code runs unchanged in a pool worker or here: ``worker_channel()``
    returns this channel for the duration of the call (in this thread and its
    context; threads the task starts see it only if they copy the context).
    Payloads are passed as they are, not pickled. Exceptions propagate as they are.
    """
    check_target(fn)
    target = _worker.resolve(fn) if isinstance(fn, str) else fn
    token = _worker._inline.set(_InlineChannel(on_call, on_send))
    try:
        return target(*args, **kwargs)
    finally:
        _worker._inline.reset(token)
