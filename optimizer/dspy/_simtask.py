"""The simulated task for DSPy: the shipped word problems as ``dspy.Example``, a program and a metric.

Served by ``FakeProvider(responder=SimModel(seed))``, which reads DSPy's chat format
(and answers DSPy's proposer) the way it reads studyhall's own ``solve`` prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from studyhall.optimizer.mipro._simtask import arith_task


@dataclass(frozen=True)
class DspyTask:
    """Train and validation ``dspy.Example`` lists, the program to optimize and its metric."""

    trainset: list[Any]
    valset: list[Any]
    program: Any
    seed: int = 0

    @staticmethod
    def metric(example: Any, prediction: Any, trace: Any = None) -> float:
        """1.0 when the predicted answer is the gold one (the number, spaces ignored)."""
        return 1.0 if str(getattr(prediction, "answer", "")).strip() == str(example.answer) else 0.0


def dspy_arith_task(n_train: int = 40, n_val: int = 100, seed: int = 0) -> DspyTask:
    """The word problems split as ``arith_task`` splits them, with ``dspy.ChainOfThought("question -> answer")``."""
    import dspy

    task = arith_task(n_train=n_train, n_val=n_val, seed=seed)

    def ex(p: dict[str, Any]) -> Any:
        return dspy.Example(question=p["question"], answer=str(p["answer"])).with_inputs("question")

    return DspyTask(
        [ex(p) for p in task.trainset], [ex(p) for p in task.valset], dspy.ChainOfThought("question -> answer"), seed
    )
