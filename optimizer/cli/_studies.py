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
    safe,
    user_errors,
)


@app.command()
def studies(storage: StorageOpt = None, as_json: JsonOpt = False) -> None:
    """List the studies in the storage with their trial counts and best values."""
    from studyhall.optimizer import Orchestrator

    quiet_optuna()
    st = open_storage(storage, must_exist=True)
    from studyhall.optimizer.telemetry._selection import SELECTION_ATTR, Selection
    from studyhall.storage._study_attrs import study_user_attr_by_name

    with user_errors(st.url):
        infos = Orchestrator(st).list_studies()
        chosen = {
            k: Selection.from_dict(v)
            for k, v in study_user_attr_by_name(st, SELECTION_ATTR).items()
            if isinstance(v, dict)
        }
    if as_json:
        print_json(
            [{**i.__dict__, **({"selection": chosen[i.name].as_dict()} if i.name in chosen else {})} for i in infos]
        )
        return
    if not infos:
        console.print("no studies yet: create one with Orchestrator().create_study(...) or `studyhall demo`")
        return
    table = Table("study", "directions", "trials", "best trial value", "selected")
    for i in infos:
        sel = chosen.get(i.name)
        picked = f"{sel.score:.4g} on {sel.n} examples" if sel else "-"
        table.add_row(fmt(i.name), fmt(", ".join(i.directions)), str(i.n_trials), fmt(i.best_value), picked)
    console.print(table)
    for name, sel in chosen.items():  # the whole answer, as the report, the demo and the dashboard's note word it
        console.print(f"{safe(name)}: {safe(sel.line())}", highlight=False, soft_wrap=True)
