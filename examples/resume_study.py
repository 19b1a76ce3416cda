"""A MiproLoop run killed halfway (SIGKILL, pool workers and all), then resumed: nothing lost.

    python examples/resume_study.py                 # 16 trials, killed after 8
    python examples/resume_study.py --trials 6

What happens:
1. a child process runs ``MiproLoop.run(n_trials=N)`` with 2 pool workers;
2. once the study has N/2 finished trials and some running, the child is killed with SIGKILL, while
   trials are in flight: they stay RUNNING in the database, their process gone;
3. their heartbeats stop, so after ``grace_period`` seconds studyhall fails them
   as stale and re-enqueues their parameters (the study's retry policy);
4. the same loop runs again: it loads the study, keeps every finished trial and
   full evaluation, re-runs the killed trials' parameters, and stops at N scored trials.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

import optuna

from studyhall.bridge import FakeProvider, LLMClient
from studyhall.optimizer import MiproLoop, Orchestrator, arith_task
from studyhall.storage import connect

GRACE_S = 3  # seconds without a heartbeat before a RUNNING trial counts as dead


def make_loop(storage_url: str, base_url: str, study: str) -> MiproLoop:
    """The loop both runs use: same study name, same candidates, same data."""
    task = arith_task(n_val=30)
    st = connect(storage_url, heartbeat_interval=1, grace_period=GRACE_S)
    return MiproLoop(
        task.program,
        task.metric,
        instructions=task.instructions,
        demos=task.demos,
        valset=task.valset,
        lm=LLMClient("sim-small", base_url=base_url, api_key="sk-studyhall-simulated"),
        study=study,
        storage=st,
        minibatch_size=12,
        full_eval_every=5,
        workers=2,
        concurrency=3,
        retries=1,
    )


def child(storage_url: str, base_url: str, study: str, n_trials: int) -> None:
    make_loop(storage_url, base_url, study).run(n_trials=n_trials)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=int(os.environ.get("EXAMPLE_TRIALS", 16)))
    ap.add_argument("--storage", default=os.environ.get("STUDYHALL_STORAGE", "sqlite:///examples.db"))
    ap.add_argument("--study", default="resume-example")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    orch = Orchestrator(connect(args.storage, heartbeat_interval=1, grace_period=GRACE_S))
    if args.study in orch.study_names():
        orch.delete_study(args.study)

    # Slow answers, so that the kill lands while trials are in flight.
    with FakeProvider(rpm=None, tpm=None, latency_s=(0.05, 0.15), responder=arith_task().responder()) as fp:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", args.storage, fp.base_url, args.study, str(args.trials)],
            start_new_session=True,  # its own process group: the kill takes the pool workers too
        )
        half = args.trials // 2
        while True:
            study = orch.load_study(args.study) if args.study in orch.study_names() else None
            done = len(study.trials(states=["complete", "pruned", "fail"])) if study else 0
            in_flight = len(study.trials(states=["running"])) if study else 0
            if (done >= half and in_flight) or proc.poll() is not None:
                break
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert study is not None
        before = {t.number: t.state.name for t in study.trials()}
        fulls_before = len(make_loop(args.storage, fp.base_url, args.study).full_evals(study))
        running = [n for n, s in before.items() if s == "RUNNING"]
        print(
            f"killed the run with {sum(s != 'RUNNING' for s in before.values())} finished trials, "
            f"{len(running)} RUNNING ({running}) and {fulls_before} full evaluations"
        )

        # The dead run's trials go stale when their heartbeats stop; fail (and retry) them.
        deadline = time.monotonic() + GRACE_S + 10
        while study.trials(states=["running"]) and time.monotonic() < deadline:
            study.fail_stale_trials()
            time.sleep(0.2)

        result = make_loop(args.storage, fp.base_url, args.study).run(n_trials=args.trials)

    after = {t.number: t for t in orch.load_study(args.study).trials()}
    kept = [n for n, s in before.items() if s == "COMPLETE" and after[n].state.name == "COMPLETE"]
    retried = [t.number for t in after.values() if "retry_of" in t.user_attrs]
    print(
        f"resumed: {result.completed + result.pruned} scored trials now (+{result.failed} failed); "
        f"all {len(kept)} trials completed before the kill are kept; "
        f"killed trials {running} failed as stale ({[after[n].user_attrs.get('failure') for n in running]}) "
        f"and re-run as {retried}"
    )
    print(
        f"full evaluations: {fulls_before} before the kill, {len(result.full_evals)} now "
        f"(after trials {[f.after_trials for f in result.full_evals]}); none RUNNING or WAITING: "
        f"{not any(t.state.name in ('RUNNING', 'WAITING') for t in after.values())}"
    )
    print(f"best: {result.best_params} -> {result.best_full_score}")


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        main()
