"""Few-shot demo sets bootstrapped from the program's own right answers, within a call budget.

::

    bootstrap_demos(program, metric, trainset, sets, k)
      trainset, seeded shuffle ──> program(example, instruction, [], lm)  (``concurrency`` at a time)
          metric >= threshold ──> a demo: the example with what the program produced
          until k + sets - 1 demos are kept, the examples run out, or ``max_calls`` LM calls
      demo sets: [] (zero-shot, the default), the first k kept, then seeded samples of k

As DSPy's BootstrapFewShot keeps the traces its program got right, but one pass
serves every set (DSPy bootstraps each set separately), so the calls are about
``(k + sets) / accuracy`` in all.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from studyhall.optimizer.mipro._evaluate import _CountingLM, resolve_lm
from studyhall.storage import InvalidRequest

_log = logging.getLogger("studyhall.mipro")


def as_demo(example: Any, prediction: Any) -> Any:
    """The default demo: a mapping example merged with a mapping prediction (its reasoning, say), else the example."""
    if isinstance(example, Mapping) and isinstance(prediction, Mapping):
        return {**example, **prediction}
    return dict(example) if isinstance(example, Mapping) else example


def bootstrap_demos(
    program: Callable[..., Any],
    metric: Callable[..., Any],
    trainset: Sequence[Any],
    *,
    lm: Any,
    instruction: Any = "",
    sets: int = 4,
    k: int = 4,
    max_calls: int | None = None,
    threshold: float = 1.0,
    seed: int = 0,
    demo: Callable[[Any, Any], Any] = as_demo,
    concurrency: int = 8,
) -> list[Any]:
    """Demo-set candidates made of examples the program gets right, in a bounded number of LM calls.

    Args:
        program: ``program(example, instruction, demos, lm) -> prediction`` (as for MiproLoop).
        metric: ``metric(example, prediction) -> float``; a demo is kept when it is ``>= threshold``.
        trainset: where demos come from (never the valset: it would score its own answers).
        lm: an LLM client or the name of a registered service.
        instruction: what ``program`` is given as its instruction (the default one).
        sets: bootstrapped sets wanted (besides the zero-shot set 0).
        k: demos per set.
        max_calls: the most LM calls spent (default ``3 * (k + sets)``); examples already
            running when it is reached finish.
        seed: seeds the order of the trainset and the sets' samples.
        demo: ``demo(example, prediction) -> demo``; with several predictors, one demo per
            predictor in a list (the result then has one list of sets per predictor).
        concurrency: examples run at once.

    Returns:
        ``[[], set1, ...]``: at most ``sets + 1`` distinct sets (fewer if few demos were kept).

    Example:
        >>> demos = bootstrap_demos(solve, exact_match, trainset, lm=client, sets=4, k=4)  # doctest: +SKIP
    """
    for name, v, low in (("sets", sets, 1), ("k", k, 1), ("concurrency", concurrency, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise InvalidRequest(f"bootstrap_demos: {name} must be an integer >= {low}; got {v!r}")
    if not trainset:
        raise InvalidRequest("bootstrap_demos needs a non-empty trainset to draw demos from")
    budget = max_calls if max_calls is not None else 3 * (k + sets)
    want = min(len(trainset), k + sets - 1)
    order = list(trainset)
    random.Random(f"bootstrap:{seed}").shuffle(order)
    counting = _CountingLM(resolve_lm(lm))
    kept: list[Any] = []

    def run(example: Any) -> Any | None:
        try:
            prediction = program(example, instruction, [], counting)
            ok = float(metric(example, prediction)) >= threshold
        except Exception as exc:  # noqa: BLE001 - an example that fails is no demo; the next one is tried
            _log.debug("bootstrap: an example failed: %s: %s", type(exc).__name__, exc)
            return None
        return demo(example, prediction) if ok else None

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="mipro-bootstrap") as pool:
        at = 0
        while len(kept) < want and at < len(order) and counting.calls < budget:
            # each call seems to cost about one LM call: run no more than the budget and the need allow
            window = min(concurrency, len(order) - at, budget - counting.calls, want - len(kept))
            for got in pool.map(run, order[at : at + window]):
                if got is not None and len(kept) < want:
                    kept.append(got)
            at += window
    if not kept:
        _log.warning(
            "bootstrap_demos: the program got none of %d examples right in %d calls; only the zero-shot set",
            at,
            counting.calls,
        )
    per_predictor = bool(kept) and isinstance(kept[0], list)
    n_pred = len(kept[0]) if per_predictor else 1
    out = []
    for p in range(n_pred):
        pool_p = [d[p] for d in kept] if per_predictor else kept
        out.append(_sets(pool_p, sets, k, seed))
    return out if per_predictor else out[0]


def _sets(kept: list[Any], sets: int, k: int, seed: int) -> list[list[Any]]:
    """``[[], the first k, seeded samples of k ...]``, without repeats."""
    rng = random.Random(f"bootstrap-sets:{seed}")
    out: list[list[Any]] = [[]]
    if not kept:
        return out
    seen: set[str] = set()
    tries = 0
    while len(out) < sets + 1 and tries < 20 * sets:
        pick = kept[:k] if tries == 0 else rng.sample(kept, min(k, len(kept)))
        tries += 1
        key = repr(sorted(map(repr, pick)))
        if key not in seen:
            seen.add(key)
            out.append(pick)
    return out
