"""Client: the create-study / ask / tell API of a remote ``studyhall serve``, in Python.

The same surface as :class:`~optimizer.Orchestrator` and :class:`~optimizer.Study`,
so a loop moves from in-process to remote by changing the line that builds it::

    orch = Orchestrator("sqlite:///studyhall.db")            # in-process
    orch = Client("http://127.0.0.1:8765", token="s3cret")   # remote
    study = orch.create_study("qa", direction="maximize")
    t = study.ask({"temperature": Float(0, 1)})
    study.tell(t, scores=[1, 0, 1])

Errors come back as the same exceptions: StudyNotFound, TrialNotFound,
DuplicateStudy and InvalidRequest (a trial told twice or whose lease expired is
an InvalidRequest, as in-process); an unreachable or failing service is a
:class:`ServiceError`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from studyhall.optimizer.service._remote_study import RemoteStudy
from studyhall.optimizer.service._wire import encode, quote_name
from studyhall.optimizer.study._orchestrator import StudyInfo
from studyhall.storage import DuplicateStudy, InvalidRequest, StudyhallError, StudyNotFound, TrialNotFound

_NOT_FOUND = {"StudyNotFound": StudyNotFound, "TrialNotFound": TrialNotFound}


class ServiceError(StudyhallError):
    """The service could not be reached, or failed (5xx); ``status`` is None when unreachable."""

    def __init__(self, message: str, status: int | None = None, kind: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


class Client:
    """A remote studyhall service with the Orchestrator's surface.

    Args:
        base_url: e.g. ``http://127.0.0.1:8765``.
        token: the service's bearer token (``--token`` on the server); default ``$STUDYHALL_TOKEN``.
        timeout: seconds per request.
        http: an ``httpx.Client`` to send through instead (e.g. FastAPI's TestClient).

    Example:
        >>> with Client("http://127.0.0.1:8765") as orch:  # doctest: +SKIP
        ...     study = orch.create_study("qa", direction="maximize")
        ...     t = study.ask({"x": Float(0, 1)})
        ...     study.tell(t, 0.5)
    """

    def __init__(
        self, base_url: str, token: str | None = None, *, timeout: float = 30.0, http: httpx.Client | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        token = token if token is not None else os.environ.get("STUDYHALL_TOKEN")
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        # Names this client's tells: a tell repeated after its answer was lost (a dropped
        # connection) is recognised as the same tell and answered as it was stored.
        self.session = uuid.uuid4().hex
        self._owns_http = http is None
        self._http = http if http is not None else httpx.Client(base_url=self.base_url, timeout=timeout)
        self._headers = headers

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool (one passed in as ``http`` stays open: it is the caller's)."""
        if self._owns_http:
            self._http.close()

    def request(self, method: str, path: str, body: Any = None, params: Mapping[str, Any] | None = None) -> Any:
        """Send one request; the decoded JSON answer, or the matching studyhall exception."""
        url = f"{self.base_url}{path}"
        content = None if body is None else encode(body)
        try:
            resp = self._http.request(method, url, content=content, params=params, headers=self._headers)
        except httpx.TransportError as exc:
            raise ServiceError(
                f"cannot reach the studyhall service at {self.base_url} ({type(exc).__name__}: {exc}); "
                "is `studyhall serve` running there?"
            ) from exc
        if resp.status_code < 400:
            return resp.json() if resp.content else None
        try:
            err = resp.json()["error"]
            kind, message = str(err["type"]), str(err["message"])
        except (ValueError, KeyError, TypeError):
            kind, message = "HTTPError", resp.text[:300] or resp.reason_phrase
        if resp.status_code >= 500:
            raise ServiceError(f"the service failed ({resp.status_code} {kind}): {message}", resp.status_code, kind)
        if kind in _NOT_FOUND:
            raise _NOT_FOUND[kind](message)
        if kind == "DuplicateStudy":
            raise DuplicateStudy(message)
        raise InvalidRequest(f"{message} [{resp.status_code} {kind}]")

    # ---- the Orchestrator surface ------------------------------------------------------

    def create_study(
        self,
        name: str,
        direction: str | None = None,
        *,
        directions: Sequence[str] | None = None,
        sampler: str | None = None,
        seed: int | None = None,
        load_if_exists: bool = False,
        retries: int | None = None,
    ) -> RemoteStudy:
        """Create study ``name`` on the service (see :meth:`optimizer.Orchestrator.create_study`)."""
        if sampler is not None and not isinstance(sampler, str):
            raise InvalidRequest("over HTTP the sampler is a name: 'tpe', 'random', 'cmaes' or 'nsga2'")
        body: dict[str, Any] = {"name": name, "load_if_exists": load_if_exists}
        for key, v in (("direction", direction), ("sampler", sampler), ("seed", seed), ("retries", retries)):
            if v is not None:
                body[key] = v.lower() if isinstance(v, str) and key != "name" else v
        if directions is not None:
            body["directions"] = [d.lower() if isinstance(d, str) else d for d in directions]
        return RemoteStudy(self, self.request("POST", "/v1/studies", body))

    def load_study(self, name: str) -> RemoteStudy:
        """An existing study; StudyNotFound names the known ones."""
        return RemoteStudy(self, self.request("GET", f"/v1/studies/{quote_name(name)}"))

    def list_studies(self) -> list[StudyInfo]:
        """Every study with its directions, number of trials and best value."""
        return [StudyInfo(**d) for d in self.request("GET", "/v1/studies")]

    def study_names(self) -> list[str]:
        """Every study name on the service, sorted."""
        return sorted(i.name for i in self.list_studies())

    def delete_study(self, name: str) -> None:
        """Delete a study, its trials and their telemetry."""
        self.request("DELETE", f"/v1/studies/{quote_name(name)}")

    def healthy(self) -> bool:
        """Whether the service answers /healthz (and reaches its database)."""
        try:
            self.request("GET", "/healthz")
        except StudyhallError:
            return False
        return True
