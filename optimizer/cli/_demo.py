"""``studyhall demo``: the main job end to end, a MIPROv2-style prompt search.

::

    FakeProvider (loopback, RPM/TPM limits, 0.1-0.4 s latency, the simulated model)
        ^  HTTP, paced by one RateLimiter whose buckets live in the study's database
    LLMClient ── pickled into 2 pool workers ── MiproLoop trials (minibatches of 35)
    MiproLoop ── full evaluations in this process ── sqlite:///studyhall.db
    then: best prompt, score distributions, LLM latency/tokens/429s, the dashboard command

``--base-url/--model`` point the same task at a real OpenAI-compatible provider
instead (``--rpm/--tpm`` then set the limiter to your account's limits). The key
comes from the environment (``--api-key-env``, default ``$OPENAI_API_KEY``) or a
hidden prompt, never from the command line, where ``ps`` shows it to everyone.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from studyhall.optimizer.cli._app import (
    StorageOpt,
    app,
    console,
    fail,
    fmt,
    open_storage,
    quiet_optuna,
    safe,
    user_errors,
    warn,
)

if TYPE_CHECKING:
    from studyhall.optimizer.mipro._results import MiproResult
    from studyhall.optimizer.mipro._simtask import SimTask
    from studyhall.optimizer.study._study import Study

# The simulated provider's limits, per 10-second window (a real provider counts per
# minute; a shorter window makes the limits bind within a one-minute demo). The
# client's limiter is told 3% more requests than the provider allows (as when a limit
# is copied from the docs and the account's is lower); the limiter's headroom (10% of
# its window) absorbs that, so a 429 is rare, and one that happens is retried after
# its Retry-After.
SIM_WINDOW_S = 10.0
SIM_REQUESTS, SIM_TOKENS = 200, 60_000
SIM_LATENCY_S = (0.1, 0.4)
CLIENT_REQUESTS_FACTOR = 1.03


@app.command()
def demo(
    storage: StorageOpt = None,
    trials: Annotated[
        int,
        typer.Option(min=1, help="Search trials (minibatch evaluations) in the study, besides the default program's."),
    ] = 30,
    workers: Annotated[
        int, typer.Option(min=0, help="Trials in flight at once, each in a pool worker (0: in this process).")
    ] = 2,
    seed: Annotated[int, typer.Option(help="Seeds the sampler, the minibatches and the simulated model.")] = 0,
    study: Annotated[str, typer.Option(help="The study's name.")] = "demo",
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the existing demo study instead of starting afresh.")
    ] = False,
    minibatch: Annotated[int, typer.Option(min=1, help="Examples per trial.")] = 30,
    val: Annotated[
        int, typer.Option(min=10, max=120, help="Validation examples (full evaluations score all of them).")
    ] = 60,
    concurrency: Annotated[int, typer.Option(min=1, help="LLM calls in flight per trial.")] = 8,
    prune: Annotated[
        bool, typer.Option("--prune", help="Stop clearly worse trials early (Wilcoxon signed-rank test).")
    ] = False,
    base_url: Annotated[
        str | None,
        typer.Option(help="An OpenAI-compatible API (e.g. https://host/v1) instead of the simulated provider."),
    ] = None,
    model: Annotated[str, typer.Option(help="The model to ask for.")] = "sim-small",
    api_key_env: Annotated[
        str,
        typer.Option(help="The environment variable holding the provider's API key (asked for, hidden, when unset)."),
    ] = "OPENAI_API_KEY",
    api_key: Annotated[str | None, typer.Option(hidden=True, help="Refused: use --api-key-env.")] = None,
    rpm: Annotated[
        int | None, typer.Option(min=1, help="Requests per minute for the limiter (with --base-url; default 500).")
    ] = None,
    tpm: Annotated[
        int | None, typer.Option(min=1, help="Tokens per minute for the limiter (with --base-url; default 200000).")
    ] = None,
) -> None:
    """Optimize a prompt MIPROv2-style on the built-in simulated task and show what it found.

    Every run starts a fresh study named --study (the old one is deleted) unless
    --resume is given, which continues it up to --trials trials.
    """
    from studyhall.bridge import FakeProvider, Limit, LLMClient, RateLimiter
    from studyhall.optimizer import MiproLoop, Orchestrator
    from studyhall.optimizer.mipro._simtask import arith_task
    from studyhall.optimizer.telemetry._artifacts import artifact_dir

    if api_key is not None:
        raise fail(
            "--api-key is refused: on the command line the key is visible to every user of this machine (ps, "
            f"/proc) and stays in your shell history. Put it in ${api_key_env} (or name another variable with "
            "--api-key-env), or leave that unset to be asked for it without echo; and replace the key you typed"
        )
    quiet_optuna()
    key = _api_key(api_key_env, base_url) if base_url is not None else None
    st = open_storage(storage)
    with user_errors(st.url):
        orch = Orchestrator(st)
        task = arith_task(n_val=val, seed=seed)
        if study in orch.study_names() and not resume:
            orch.delete_study(study)
            console.print(
                f"starting a fresh study [bold]{safe(study)}[/] (the previous one was deleted; --resume continues it)"
            )
        fake = None
        if base_url is None:
            fake = FakeProvider(
                rpm=SIM_REQUESTS,
                tpm=SIM_TOKENS,
                per=SIM_WINDOW_S,
                latency_s=SIM_LATENCY_S,
                responder=task.responder(),
                seed=seed,
                model=model,
            )
            fake.start()
            url = fake.base_url
            limits = [
                Limit(requests=SIM_REQUESTS * CLIENT_REQUESTS_FACTOR, per=SIM_WINDOW_S),
                Limit(tokens=SIM_TOKENS, per=SIM_WINDOW_S),
            ]
            where = f"the simulated provider at {url} (it allows {SIM_REQUESTS} requests and {SIM_TOKENS:,} tokens per {SIM_WINDOW_S:g} s)"
        else:
            url = base_url
            limits = [Limit(requests=rpm or 500, per=60.0), Limit(tokens=tpm or 200_000, per=60.0)]
            where = safe(base_url)
            if key:  # the key is never pickled: pool workers read it from their environment
                os.environ[api_key_env] = key
        try:
            limiter = RateLimiter(f"demo:{model}", limits=limits, storage=orch.storage)
            lm = LLMClient(
                model,
                base_url=url,
                api_key=key or ("sk-studyhall-simulated" if fake else None),
                api_key_env=api_key_env,
                limiter=limiter,
                timeout=120.0,
            )
            console.print(
                f"MIPROv2-style search: {len(task.instructions)} instructions x {len(task.demos)} demo sets, "
                f"{trials} search trials (and the default program's) of {min(minibatch, val)} examples, full evaluations on {val} "
                f"only where they can change the answer, "
                f"{workers} workers, model [bold]{safe(model)}[/] on {where}; limiter: "
                + ", ".join(f"{lim.amount:g} {lim.kind}/{lim.per:g}s" for lim in limits)
            )
            loop = MiproLoop(
                task.program,
                task.metric,
                instructions=task.instructions,
                demos=task.demos,
                valset=task.valset,
                lm=lm,
                study=study,
                storage=orch.storage,
                minibatch_size=minibatch,
                seed=seed,
                workers=workers,
                concurrency=concurrency,
                prune=prune,
                progress=True,
                trial_timeout=300.0 if workers else None,
                artifacts=artifact_dir(orch.storage.url),  # the report's figure, for optuna-dashboard
            )
            started = time.monotonic()
            result = loop.run(n_trials=trials)
            elapsed = time.monotonic() - started
        finally:
            stats = fake.stats() if fake is not None else None
            if fake is not None:
                fake.stop()
        done = orch.load_study(study)
        _show(result, task, done, stats, elapsed, orch.storage.url)


def _api_key(env: str, base_url: str) -> str | None:
    """The provider's key: from ``$env``, else asked for without echo on a terminal, else none."""
    key = os.environ.get(env)
    if key:
        return key
    if sys.stdin.isatty():
        typed: str = typer.prompt(
            f"API key for {base_url} (not shown; empty for none)", default="", show_default=False, hide_input=True
        )
        return typed or None
    warn(
        f"${env} is not set: requests to {base_url} go without an API key (set it, or name another with --api-key-env)"
    )
    return None


def _show(
    result: MiproResult, task: SimTask, st: Study, stats: dict[str, int] | None, elapsed: float, url: str
) -> None:
    from studyhall.optimizer import summarize
    from studyhall.optimizer.study._summary import interval_text

    console.print()
    sel = st.selection
    if result.best_full_score is None or sel is None:
        console.print("[yellow]no full evaluation finished; the best minibatch combination is shown[/]")
    else:  # the study's recorded answer, worded as `studyhall trials`, the report and the dashboard's note word it
        console.print(f"[bold green]{safe(sel.line())}[/]", highlight=False, soft_wrap=True)
        best = st.best_trial
        if best.number != sel.trial:
            console.print(
                f"(Optuna's best trial, #{best.number}, has the best minibatch mean, {fmt(best.value)}; the selection "
                "was scored on the whole valset and is the answer)",
                highlight=False,
            )
    console.print(f"[bold]best instruction[/] ({safe(result.best_params)}):  {safe(result.best_instruction)}")
    demos = result.best_demos[0]
    if demos:
        console.print(
            f"[bold]best demos[/] ({len(demos)}, {'with' if any(d.get('reasoning') for d in demos) else 'without'} worked reasoning):"
        )
        for d in demos:
            console.print(f"  Q: {safe(d['question'][:90])}  A: {safe(d['answer'])}", highlight=False)
    else:
        console.print("[bold]best demos[/]: none (zero-shot)")

    fe = Table(
        "after trial",
        "params",
        "full-valset score",
        "95% CI",
        "its minibatch mean",
        "calls",
        title="full evaluations (kept apart from the trials TPE sees; * selected)",
    )
    for f in result.full_evals:
        mark = " *" if f.params == result.best_params else ""
        shown = fmt(f.score) + mark + ("" if f.complete else f" (dropped after {f.n})")
        params = " ".join(f"{fmt(k)}={fmt(v)}" for k, v in f.params.items())
        scored = [x for x in f.scores if x is not None]
        ci = summarize(scored) if scored else None
        fe.add_row(
            str(f.after_trials),
            params,
            shown,
            interval_text(ci.ci_low, ci.ci_high, ci.ci_method) if ci else "-",
            fmt(f.minibatch_mean),
            str(f.llm_calls),
        )
    console.print(fe)

    rows: list[tuple[str, Any]] = []
    values = [t.value for t in st.trials(states=["complete"]) if t.value is not None]
    if values:
        rows.append((f"minibatch means of {len(values)} trials", summarize(values)))
    complete = st.trials(states=["complete"])
    if complete:
        best_trial = max(complete, key=lambda t: t.value or 0.0)
        score = st.trial_metrics(best_trial.number).get("score")
        if score is not None:
            rows.append((f"best trial #{best_trial.number}, per example", score))
    best_fe = next((f for f in result.full_evals if f.params == result.best_params), None)
    if best_fe is not None and best_fe.summary:
        rows.append(("best combination on the full valset, per example", best_fe.summary))
    dist = Table("scores", "n", "mean", "std", "min", "p50", "p90", "max", title="score distributions")
    for label, s in rows:
        get = s.get if isinstance(s, dict) else lambda k, s=s: getattr(s, k)
        dist.add_row(safe(label), *(fmt(get(k)) for k in ("n", "mean", "std", "min", "p50", "p90", "max")))
    console.print(dist)

    llm = Table(
        "LLM calls",
        "tokens",
        "latency p50",
        "p90",
        "p99",
        "429s (retried)",
        "calls saved by pruning",
        "wall time",
        title="cost",
    )
    lat = result.latency
    limited = (
        stats["rate_limited"]
        if stats is not None
        else sum(int(t.user_attrs.get("llm.rate_limited", 0)) for t in st.trials())
    )
    llm.add_row(
        str(result.llm_calls),
        f"{result.tokens:,}",
        *(f"{getattr(lat, k):.3f}s" if lat else "-" for k in ("p50", "p90", "p99")),
        str(limited),
        str(result.calls_saved),
        f"{elapsed:.1f}s",
    )
    console.print(llm)
    counts = f"{result.completed} complete, {result.pruned} pruned, {result.failed} failed"
    console.print(
        f"study [bold]{safe(result.study)}[/]: {result.trials} trials ({counts}); stopped by {safe(result.stopped)}"
    )
    console.print(
        f"inspect it:  [bold]optuna-dashboard {safe(url)}[/]   or   studyhall trials {safe(shlex.quote(result.study))} --storage {safe(url)}"
    )
    from studyhall.optimizer.telemetry._artifacts import artifact_dir

    where = artifact_dir(url)
    if where is not None and where.is_dir():
        console.print(
            f"with the report's figure beside the study:  [bold]studyhall dashboard --storage {safe(url)}[/] "
            f"(artifacts in {safe(where)})",
            highlight=False,
            soft_wrap=True,
        )
