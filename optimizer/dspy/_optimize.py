"""``optimize_dspy``: DSPy's MIPROv2, run as a studyhall study, returning the compiled DSPy program.

::

    optimize_dspy(program, metric, trainset, valset, lm=LLMClient)
      DspyProgram(program): program(example, instruction, demos, lm) for MiproLoop; each
          call: a copy of the module with the instruction and demos set per predictor,
          run under dspy.LM(engine=StudyhallEngine(lm)) (the client's limiter, retries,
          telemetry)
      MiproLoop.auto(mode, ...):
          propose_instructions (a description of the program's predictors, the data)
          bootstrap_demos (the module's own traces it got right: augmented demos, as
          DSPy's BootstrapFewShot keeps)
          the search on the study (resumable, pruned, workers in parallel)
      ──> program.deepcopy() with the best instructions and demos; .studyhall_result

Nothing here imports DSPy before it is called: ``studyhall.optimizer`` works without it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from studyhall.storage import InvalidRequest


def _dspy() -> Any:
    try:
        import dspy
    except ModuleNotFoundError as exc:  # pragma: no cover - the dev extra installs it
        raise InvalidRequest("the DSPy bridge needs DSPy: pip install 'studyhall[dspy]'") from exc
    return dspy


def _lm_for(lm: Any) -> Any:
    from studyhall.optimizer.dspy._lm import dspy_lm

    return dspy_lm(lm)


@dataclass
class DspyProgram:
    """A ``dspy.Module`` as MiproLoop's ``program(example, instruction, demos, lm)``.

    ``instruction``/``demos`` are one per predictor (a str and a list with a single
    predictor); demos are plain dicts (JSON, kept in the study) made ``dspy.Example``
    here. With ``trace=True`` it returns a :class:`Traced` (for bootstrapping).
    """

    module: Any
    trace: bool = False

    def __call__(self, example: Any, instruction: Any, demos: Any, lm: Any) -> Any:
        """Run a copy of the module with these instructions and demos on ``example``."""
        dspy = _dspy()
        prog = self.module.deepcopy()
        preds = prog.predictors()
        ins = [instruction] if isinstance(instruction, str) else list(instruction)
        dem = [demos] if len(preds) == 1 and (not demos or isinstance(demos[0], dict)) else list(demos)
        for pred, text, shots in zip(preds, ins, dem):
            if text:
                pred.signature = pred.signature.with_instructions(text)
            pred.demos = [dspy.Example(**d) for d in shots]
        inputs = example.inputs() if hasattr(example, "inputs") else example
        with dspy.context(lm=_lm_for(lm), trace=[]):
            prediction = prog(**inputs)
            trace = list(dspy.settings.trace or [])
        if not self.trace:
            return prediction
        index = {id(p): i for i, p in enumerate(preds)}
        per: list[dict[str, Any] | None] = [None] * len(preds)
        for predictor, pin, pout in trace:
            i = index.get(id(predictor))
            if i is not None and per[i] is None:
                out = pout.toDict() if hasattr(pout, "toDict") else dict(pout)
                per[i] = {**dict(pin), **out, "augmented": True}
        return Traced(prediction, per)


@dataclass
class Traced:
    """A prediction and, per predictor, the demo its trace makes (None if it was not called)."""

    prediction: Any
    demos: list[dict[str, Any] | None]


@dataclass
class DspyMetric:
    """A DSPy metric ``metric(example, prediction, trace=None)`` as MiproLoop's ``metric(example, prediction)``."""

    metric: Callable[..., Any]

    def __call__(self, example: Any, prediction: Any) -> float:
        """The metric as a float (True is 1.0); a Traced prediction is unwrapped."""
        if isinstance(prediction, Traced):
            prediction = prediction.prediction
        return float(self.metric(example, prediction))


def _trace_demos(example: Any, traced: Any) -> Any:
    demos = traced.demos
    if any(d is None for d in demos):
        return None  # a predictor the program did not call cannot get this example's demo
    return demos if len(demos) > 1 else demos[0]


def describe_program(program: Any) -> str:
    """A short description of a DSPy program for the proposer: its class, docstring and predictors."""
    parts = [type(program).__name__]
    doc = (type(program).__doc__ or "").strip().split("\n\n")[0]
    if doc and not doc.startswith("Base class"):
        parts.append(doc)
    for name, pred in program.named_predictors():
        sig = pred.signature
        parts.append(f"{name}: {', '.join(sig.input_fields)} -> {', '.join(sig.output_fields)}")
    return "; ".join(parts)


def optimize_dspy(
    program: Any,
    metric: Callable[..., Any],
    trainset: Sequence[Any],
    valset: Sequence[Any] | None = None,
    *,
    lm: Any,
    auto: str = "light",
    study: str = "dspy",
    storage: Any = None,
    prompt_lm: Any = None,
    seed: int = 0,
    workers: int = 0,
    **overrides: Any,
) -> Any:
    """Optimize a DSPy program's instructions and demos MIPROv2-style on a studyhall study.

    Args:
        program: a ``dspy.Module`` (its predictors' instructions are candidate 0).
        metric: DSPy's ``metric(example, prediction, trace=None)``.
        trainset, valset: ``dspy.Example`` lists (inputs marked ``with_inputs``); without
            a valset, the last 80% of the trainset (as DSPy).
        lm: the task model: an ``LLMClient`` (its RateLimiter, shared by every process on
            its storage, paces DSPy's calls; they are recorded as trial telemetry) or a
            service name.
        auto: ``"light"``, ``"medium"`` or ``"heavy"`` (:func:`MiproLoop.auto`'s budgets).
        study, storage: where the search lives; run again to resume it.
        prompt_lm: the model that proposes instructions (default ``lm``).
        seed, workers: as for ``MiproLoop`` (workers=N runs trials in pool workers).
        overrides: any other ``MiproLoop`` argument (``n_trials``, ``callbacks`` ...).

    Returns:
        A copy of ``program`` with the best instructions and demos; its ``studyhall_result``
        is the :class:`MiproResult` (and ``score`` the best full-valset score).

    Example:
        >>> compiled = optimize_dspy(dspy.ChainOfThought("question -> answer"), metric,
        ...                          trainset, valset, lm=LLMClient("gpt-4o-mini", limiter=lim))  # doctest: +SKIP
    """
    dspy = _dspy()
    if not isinstance(program, dspy.Module):
        raise InvalidRequest(
            f"optimize_dspy optimizes a dspy.Module; got {type(program).__name__} (use MiproLoop for a plain function)"
        )
    preds = program.predictors()
    if not preds:
        raise InvalidRequest("the program has no predictors (dspy.Predict, ChainOfThought ...) to optimize")
    from studyhall.optimizer.mipro._loop import MiproLoop

    basics = [p.signature.instructions for p in preds]
    n_trials = overrides.pop("n_trials", None)
    loop = MiproLoop.auto(
        auto,  # type: ignore[arg-type]
        DspyProgram(program),
        DspyMetric(metric),
        trainset=trainset,
        valset=valset,
        lm=lm,
        instruction=basics[0] if len(basics) == 1 else basics,
        program_description=describe_program(program),
        prompt_lm=prompt_lm,
        study=study,
        storage=storage,
        seed=seed,
        workers=workers,
        demo=_trace_demos,
        bootstrap_program=DspyProgram(program, trace=True),
        **overrides,
    )
    result = loop.run(n_trials)
    compiled = program.deepcopy()
    for pred, text, shots in zip(compiled.predictors(), result.best_instructions, result.best_demos):
        pred.signature = pred.signature.with_instructions(text)
        pred.demos = [dspy.Example(**d) for d in shots]
    compiled.studyhall_result = result
    compiled.score = result.best_full_score
    return compiled


class StudyhallMIPRO:
    """A DSPy-style teleprompter: ``StudyhallMIPRO(metric, lm=client).compile(student, trainset=...)``.

    The same as :func:`optimize_dspy`, for code written against ``dspy.MIPROv2``.
    """

    def __init__(self, metric: Callable[..., Any], *, lm: Any, auto: str = "light", **kwargs: Any) -> None:
        self.metric, self.lm, self.auto, self.kwargs = metric, lm, auto, kwargs

    def compile(
        self, student: Any, *, trainset: Sequence[Any], valset: Sequence[Any] | None = None, **kwargs: Any
    ) -> Any:
        """Optimize ``student`` and return the compiled copy."""
        return optimize_dspy(
            student, self.metric, trainset, valset, lm=self.lm, auto=self.auto, **{**self.kwargs, **kwargs}
        )
