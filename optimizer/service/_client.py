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

import datetime
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import optuna.distributions as od
from optuna.trial import FrozenTrial, TrialState

from studyhall.optimizer.study._orchestrator import StudyInfo
from studyhall.optimizer.study._space import Categorical, Float, Int, Space, distribution_spec
from studyhall.optimizer.study._study import TrialHandle
from studyhall.optimizer.study._summary import Summary
from studyhall.storage import DuplicateStudy, InvalidRequest, StudyhallError, StudyNotFound, TrialNotFound

DEFAULT_LEASE_S = 300.0
_NOT_FOUND = {"StudyNotFound": StudyNotFound, "TrialNotFound": TrialNotFound}


class ServiceError(StudyhallError):
    """The service could not be reached, or failed (5xx); ``status`` is None when unreachable."""

    def __init__(self, message: str, status: int | None = None, kind: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


# ---- wire format -----------------------------------------------------------------------


def param_to_json(p: Any) -> dict[str, Any]:
    """A Float/Int/Categorical (or Optuna distribution) as the service's JSON."""
    if isinstance(p, (Float, Int, Categorical)):
        p = p.distribution()
    if isinstance(p, od.BaseDistribution):
        return distribution_spec(p)
    raise InvalidRequest(f"a space value must be Float(low, high), Int(low, high) or Categorical([...]); got {p!r:.60}")


def space_to_json(space: Space | None) -> dict[str, Any] | None:
    """A search space as the service's JSON (None stays None: the study's last space)."""
    if space is None:
        return None
    if not isinstance(space, Mapping):
        raise InvalidRequest(f"a space is a dict of name -> Float/Int/Categorical; got {type(space).__name__}")
    return {str(name): param_to_json(p) for name, p in space.items()}


def _distribution(d: Mapping[str, Any]) -> od.BaseDistribution:
    if d["type"] == "float":
        return od.FloatDistribution(d["low"], d["high"], log=d["log"], step=d["step"])
    if d["type"] == "int":
        return od.IntDistribution(d["low"], d["high"], log=d["log"], step=d["step"])
    return od.CategoricalDistribution(d["choices"])


def _plain(v: Any) -> Any:
    # numpy arrays and scalars, tuples, ranges: what callers pass in-process.
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, range)):
        return [_plain(x) for x in v]
    return v


def _encode(body: Any) -> bytes:
    try:
        return json.dumps(_plain(body), allow_nan=False).encode()
    except ValueError as exc:
        raise InvalidRequest(
            "the request holds a NaN or infinite number; send finite values (tell state='fail' for a failed trial)"
        ) from exc
    except TypeError as exc:
        raise InvalidRequest(f"the request holds something JSON cannot carry: {exc}") from exc


def frozen_trial(d: Mapping[str, Any]) -> FrozenTrial:
    """A TrialOut JSON object as an Optuna FrozenTrial (trial_id is not exposed: -1)."""

    def when(s: str | None) -> datetime.datetime | None:
        return None if s is None else datetime.datetime.fromisoformat(s)

    values = d.get("values")
    return FrozenTrial(
        number=d["number"],
        state=TrialState[d["state"].upper()],
        value=None,
        values=None if values is None else [math.nan if v is None else float(v) for v in values],
        datetime_start=when(d.get("datetime_start")),
        datetime_complete=when(d.get("datetime_complete")),
        params=dict(d.get("params") or {}),
        distributions={k: _distribution(v) for k, v in (d.get("distributions") or {}).items()},
        user_attrs=dict(d.get("user_attrs") or {}),
        system_attrs={},
        intermediate_values={},
        trial_id=-1,
    )


# ---- the client ------------------------------------------------------------------------


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
        content = None if body is None else _encode(body)
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
        return RemoteStudy(self, self.request("GET", f"/v1/studies/{_quote(name)}"))

    def list_studies(self) -> list[StudyInfo]:
        """Every study with its directions, number of trials and best value."""
        return [StudyInfo(**d) for d in self.request("GET", "/v1/studies")]

    def study_names(self) -> list[str]:
        """Every study name on the service, sorted."""
        return sorted(i.name for i in self.list_studies())

    def delete_study(self, name: str) -> None:
        """Delete a study, its trials and their telemetry."""
        self.request("DELETE", f"/v1/studies/{_quote(name)}")

    def healthy(self) -> bool:
        """Whether the service answers /healthz (and reaches its database)."""
        try:
            self.request("GET", "/healthz")
        except StudyhallError:
            return False
        return True


def _quote(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")


class RemoteStudy:
    """A study on a studyhall service, with :class:`optimizer.Study`'s ask/tell surface.

    Each trial it asks holds a lease of ``lease_s`` seconds (default 300): tell it,
    or call :meth:`heartbeat`, before then, or the service fails it and retries it.
    """

    def __init__(self, client: Client, info: Mapping[str, Any]) -> None:
        self.client = client
        self.name: str = info["name"]
        self.directions: list[str] = list(info["directions"])
        self._path = f"/v1/studies/{_quote(self.name)}"

    def __repr__(self) -> str:
        return f"RemoteStudy({self.name!r}, directions={self.directions}, at={self.client.base_url!r})"

    def _info(self) -> dict[str, Any]:
        return self.client.request("GET", self._path)  # type: ignore[no-any-return]

    # ---- ask and tell ------------------------------------------------------------------

    def ask(self, space: Space | None = None, *, lease_s: float = DEFAULT_LEASE_S) -> TrialHandle:
        """Start a trial and sample its parameters from ``space`` (or the study's last space)."""
        return self.ask_batch(space, 1, lease_s=lease_s)[0]

    def ask_batch(self, space: Space | None = None, k: int = 1, *, lease_s: float = DEFAULT_LEASE_S) -> list[TrialHandle]:
        """``k`` trials at once."""
        body: dict[str, Any] = {"k": k, "lease_s": lease_s}
        encoded = space_to_json(space)
        if encoded is not None:
            body["space"] = encoded
        out = self.client.request("POST", f"{self._path}/ask", body)
        return [TrialHandle(t["number"], t["params"]) for t in out["trials"]]

    def tell(
        self,
        trial: TrialHandle | int,
        value: float | Sequence[float] | None = None,
        *,
        values: Sequence[float] | None = None,
        scores: Sequence[float] | Any | None = None,
        metrics: Mapping[str, Sequence[float]] | None = None,
        state: str | TrialState | None = None,
        error: str | None = None,
        user_attrs: Mapping[str, Any] | None = None,
    ) -> FrozenTrial:
        """Finish a trial (see :meth:`optimizer.Study.tell`); returns it as stored."""
        number = trial.number if isinstance(trial, TrialHandle) else trial
        if isinstance(number, bool) or not isinstance(number, int):
            raise InvalidRequest(f"tell needs a TrialHandle or a trial number; got {trial!r:.60}")
        body: dict[str, Any] = {}
        if value is not None and not isinstance(value, (int, float)) and hasattr(value, "__len__"):
            body["values"] = value  # a sequence given positionally, as Study.tell allows
        elif value is not None:
            body["value"] = value
        for key, v in (("values", values), ("scores", scores), ("metrics", metrics), ("error", error), ("user_attrs", user_attrs)):
            if v is not None:
                body[key] = v
        if state is not None:
            body["state"] = state.name.lower() if isinstance(state, TrialState) else str(state).lower()
        return frozen_trial(self.client.request("POST", f"{self._path}/trials/{number}/tell", body))

    def heartbeat(self, trial: TrialHandle | int, lease_s: float | None = None) -> float:
        """Renew a trial's lease; returns its new expiry (the database's epoch seconds)."""
        number = trial.number if isinstance(trial, TrialHandle) else trial
        body = {} if lease_s is None else {"lease_s": lease_s}
        return float(self.client.request("POST", f"{self._path}/trials/{number}/heartbeat", body)["lease_expires_at"])

    def enqueue(self, params: Mapping[str, Any], *, user_attrs: Mapping[str, Any] | None = None) -> None:
        """Queue ``params`` to be handed out by the next ask."""
        body: dict[str, Any] = {"params": params}
        if user_attrs is not None:
            body["user_attrs"] = user_attrs
        self.client.request("POST", f"{self._path}/enqueue", body)

    # ---- what was learned --------------------------------------------------------------

    def trials(self, states: Sequence[str | TrialState] | None = None) -> list[FrozenTrial]:
        """Every trial (as FrozenTrials), optionally only those in ``states``."""
        wanted = [None] if not states else [s.name.lower() if isinstance(s, TrialState) else str(s).lower() for s in states]
        out: list[FrozenTrial] = []
        for state in wanted:
            offset = 0
            while True:
                params: dict[str, Any] = {"limit": 1000, "offset": offset}
                if state is not None:
                    params["state"] = state
                page = self.client.request("GET", f"{self._path}/trials", params=params)
                out.extend(frozen_trial(t) for t in page["trials"])
                offset += len(page["trials"])
                if not page["trials"] or offset >= page["total"]:
                    break
        return sorted(out, key=lambda t: t.number)

    def trial(self, number: int) -> FrozenTrial:
        """One trial by number; TrialNotFound if there is none."""
        return frozen_trial(self.client.request("GET", f"{self._path}/trials/{number}"))

    def trial_metrics(self, number: int) -> dict[str, Summary]:
        """Every distribution stored for trial ``number``."""
        out = self.client.request("GET", f"{self._path}/trials/{number}/metrics")
        return {name: Summary.from_dict(d) for name, d in out.items()}

    def _best(self) -> dict[str, Any]:
        if len(self.directions) != 1:
            raise InvalidRequest("best_* is for single-objective studies; use trials() for the Pareto front")
        info = self._info()
        if info["best_trial"] is None:
            raise InvalidRequest(f"study {self.name!r} has no completed trial yet; tell one first")
        return info

    @property
    def best_trial(self) -> FrozenTrial:
        """The best finished trial (single-objective studies)."""
        return self.trial(self._best()["best_trial"])

    @property
    def best_value(self) -> float:
        """The best objective value so far (single-objective studies)."""
        return float(self._best()["best_value"])

    @property
    def best_params(self) -> dict[str, Any]:
        """The parameters of the best trial (single-objective studies)."""
        return dict(self._best()["best_params"])

    @property
    def retries(self) -> int:
        """How many times a failed (crashed, hung, lease-expired) trial is re-run."""
        return int(self._info()["retries"])
