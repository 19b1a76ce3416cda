"""``studyhall demo``: a small, real ask/tell study on the default storage."""

from __future__ import annotations

import random
from typing import Annotated

import typer

from optimizer.cli import StorageOpt, app, console, fmt, quiet_optuna, user_errors


@app.command()
def demo(
    storage: StorageOpt = None,
    trials: Annotated[int, typer.Option(min=1, help="How many trials to run.")] = 30,
    seed: Annotated[int, typer.Option(help="Seed of the sampler and the simulated scores.")] = 0,
) -> None:
    """Run a small prompt-selection study with simulated per-example scores."""
    from optimizer import Categorical, Float, Orchestrator

    quiet_optuna()
    rng = random.Random(seed)
    with user_errors():
        orch = Orchestrator(storage)
        name = "demo"
        if name in orch.study_names():
            orch.delete_study(name)
        study = orch.create_study(name, direction="maximize", sampler="tpe", seed=seed)
        space = {"instruction": Categorical(range(8)), "temperature": Float(0.0, 1.0)}
        for _ in range(trials):
            t = study.ask(space)
            # Instruction 5 at a low temperature is the best; each of 40 examples passes or fails.
            p = 0.45 + 0.05 * (t.params["instruction"] == 5) * 8 - 0.3 * t.params["temperature"] ** 2
            study.tell(t, scores=[float(rng.random() < p) for _ in range(40)])
        best = study.best_trial
        s = study.trial_metrics(best.number)["score"]
    console.print(f"ran {trials} trials of study [bold]{name}[/] in {orch.storage!r}")
    console.print(f"best value {fmt(best.value)} with {best.params}")
    console.print(f"its score distribution: n={s.n} mean={fmt(s.mean)} std={fmt(s.std)} p50={fmt(s.p50)} p90={fmt(s.p90)}")
    console.print(f"inspect it: studyhall trials {name}   or   optuna-dashboard {orch.storage.url}")
