"""RemoteStudy: a study on a studyhall service, with ``Study``'s ask/tell surface over HTTP."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState

from studyhall.optimizer.service._wire import encode, frozen_trial, quote_name, space_to_json
from studyhall.optimizer.study._space import Space
from studyhall.optimizer.study._study import TrialHandle
from studyhall.optimizer.study._summary import Summary
from studyhall.storage import InvalidRequest

if TYPE_CHECKING:
    from studyhall.optimizer.service._client import Client

DEFAULT_LEASE_S = 300.0


class RemoteStudy:
    """A study on a studyhall service, with :class:`optimizer.Study`'s ask/tell surface.

    Each trial it asks holds a lease of ``lease_s`` seconds (default 300): tell it,
    or call :meth:`heartbeat`, before then, or the service fails it and retries it.
    """

    def __init__(self, client: Client, info: Mapping[str, Any]) -> None:
        self.client = client
        self.name: str = info["name"]
        self.directions: list[str] = list(info["directions"])
        self._path = f"/v1/studies/{quote_name(self.name)}"

    def __repr__(self) -> str:
        return f"RemoteStudy({self.name!r}, directions={self.directions}, at={self.client.base_url!r})"

    def _info(self) -> dict[str, Any]:
        return self.client.request("GET", self._path)  # type: ignore[no-any-return]

    # ---- ask and tell ------------------------------------------------------------------

    def ask(self, space: Space | None = None, *, lease_s: float = DEFAULT_LEASE_S) -> TrialHandle:
        """Start a trial and sample its parameters from ``space`` (or the study's last space)."""
        return self.ask_batch(space, 1, lease_s=lease_s)[0]

    def ask_batch(
        self, space: Space | None = None, k: int = 1, *, lease_s: float = DEFAULT_LEASE_S
    ) -> list[TrialHandle]:
        """``k`` trials at once."""
        body: dict[str, Any] = {"k": k, "lease_s": lease_s}
        encoded = space_to_json(space)
        if encoded is not None:
            body["space"] = encoded
        out = self.client.request("POST", f"{self._path}/ask", body)
        return [TrialHandle(t["number"], t["params"], study=self.name) for t in out["trials"]]

    def _number(self, trial: TrialHandle | int) -> int:
        number = trial.number if isinstance(trial, TrialHandle) else trial
        if isinstance(number, bool) or not isinstance(number, int):
            raise InvalidRequest(f"tell needs a TrialHandle or a trial number; got {trial!r:.60}")
        if isinstance(trial, TrialHandle) and trial.study and trial.study != self.name:
            # Over HTTP a trial is addressed by its number: another study's handle would land on ours.
            raise InvalidRequest(
                f"trial {number} was asked from study {trial.study!r}, not {self.name!r}; tell it on the study that asked"
            )
        return number

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
        number = self._number(trial)
        body: dict[str, Any] = {}
        if value is not None and not isinstance(value, (int, float)) and hasattr(value, "__len__"):
            body["values"] = value  # a sequence given positionally, as Study.tell allows
        elif value is not None:
            body["value"] = value
        for key, v in (
            ("values", values),
            ("scores", scores),
            ("metrics", metrics),
            ("error", error),
            ("user_attrs", user_attrs),
        ):
            if v is not None:
                body[key] = v
        if state is not None:
            body["state"] = state.name.lower() if isinstance(state, TrialState) else str(state).lower()
        path = f"{self._path}/trials/{number}/tell"
        # The same tell sent again (by a retry loop after a lost answer) carries the same key,
        # and the service answers it with the trial as that tell stored it; another tell does not.
        same = hashlib.blake2b(f"{self.client.session} {path} ".encode(), digest_size=16)
        same.update(encode(body))  # what is sent: the same body gives the same bytes
        body["key"] = same.hexdigest()
        return frozen_trial(self.client.request("POST", path, body))

    def heartbeat(self, trial: TrialHandle | int, lease_s: float | None = None) -> float:
        """Renew a trial's lease; returns its new expiry (the database's epoch seconds)."""
        number = self._number(trial)
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
        wanted = (
            [None] if not states else [s.name.lower() if isinstance(s, TrialState) else str(s).lower() for s in states]
        )
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
