"""``studyhall studies``: the studies in the storage, with trial counts and best values."""

from __future__ import annotations

from rich.table import Table

from studyhall.optimizer.cli._app import (
    JsonOpt,
    StorageOpt,
    app,
    console,
    fmt,
    open_storage,
    print_json,
    quiet_optuna,
    user_errors,
)


@app.command()
def studies(storage: StorageOpt = None, as_json: JsonOpt = False) -> None:
    """List the studies in the storage with their trial counts and best values."""
    from studyhall.optimizer import Orchestrator

    quiet_optuna()
    st = open_storage(storage, must_exist=True)
    with user_errors(st.url):
        infos = Orchestrator(st).list_studies()
    if as_json:
        print_json([i.__dict__ for i in infos])
        return
    if not infos:
        console.print("no studies yet: create one with Orchestrator().create_study(...) or `studyhall demo`")
        return
    table = Table("study", "directions", "trials", "best value")
    for i in infos:
        table.add_row(fmt(i.name), fmt(", ".join(i.directions)), str(i.n_trials), fmt(i.best_value))
    console.print(table)
