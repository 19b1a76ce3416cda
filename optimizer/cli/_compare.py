"""``studyhall compare NAME A B``: is A really better than B? The mean difference, its 95% interval, a p-value."""

from __future__ import annotations

from typing import Annotated

import typer

from studyhall.optimizer.cli._app import (
    JsonOpt,
    StorageOpt,
    app,
    console,
    open_storage,
    print_json,
    quiet_optuna,
    safe,
    user_errors,
)


@app.command()
def compare(
    name: Annotated[str, typer.Argument(help="The study's name.")],
    a: Annotated[str, typer.Argument(help="A trial number, 'full:N' (a MiproLoop full evaluation) or 'selected'.")],
    b: Annotated[str, typer.Argument(help="The same kinds of reference as A.")],
    metric: Annotated[str, typer.Option("--metric", help="The per-example distribution to compare.")] = "score",
    storage: StorageOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare two trials (or full evaluations) on the same examples: paired t-test, else Welch's."""
    from studyhall.optimizer import Orchestrator

    quiet_optuna()
    st = open_storage(storage, must_exist=True)
    with user_errors(st.url):
        result = Orchestrator(st).load_study(name).compare(a, b, metric)
    if as_json:
        print_json({"study": name, **result.as_dict()})
        return
    console.print(safe(str(result)), highlight=False)
    console.print(f"  {safe(result.note)}", highlight=False)
