"""studyhall's complete MIPRO loop against DSPy's MIPROv2(auto="light"), side by side, calls counted by the provider.

The task: the shipped arithmetic word problems answered by ``dspy.ChainOfThought("question
-> answer")``; the model behind FakeProvider is ``SimModel`` (its accuracy depends on the
instruction's wording and on the demos; it also answers proposal requests with a mix of
good and poor phrasings, the same mix whoever asks). Each side gets its own provider, so
every call it makes (proposals, bootstrapping, search) is counted where it is served.

1. complete loops: DSPy ``MIPROv2(auto="light").compile`` and studyhall's
   ``optimize_dspy(auto="light")`` (proposer + bootstrapping + search), 10 seeds.
   The chosen prompt's true quality is its expected accuracy over all 160 problems
   (no coin); the ceiling is the best any proposable phrasing with any demos reaches.
   Targets: 90% of the ceiling in >= 9 of 10 seeds; <= 60% of DSPy's calls; mean
   true quality >= DSPy's.
2. DSPy's candidate spaces: the instructions and demo sets DSPy made, searched by
   MiproLoop with DSPy's 10 trials, minibatches of 35 (DSPy's) and of 15 (light);
   DSPy's search calls against MiproLoop's. Issue 14's target: fewer than 275 calls
   to the same result, a figure from an earlier run on another valset where DSPy's
   search took 375. Both are printed: the absolute "< 275" check, and MiproLoop's
   calls divided by DSPy's search calls in the same seed, against that run's
   275/375 = 0.73. Per seed, a line says where MiproLoop's calls went: its trials
   (how many pruned) and each full evaluation (why, its calls, the examples reused
   from trials, "dropped" when a race stopped it, its valset score and its true quality).
   "Same result as DSPy": as many seeds at 90% of the ceiling and a mean true quality
   at most 0.005 below DSPy's.

    python benchmarks/mipro_vs_dspy.py                       # 10 seeds, a few minutes
    python benchmarks/mipro_vs_dspy.py --seeds 2             # quicker
    python benchmarks/mipro_vs_dspy.py --only space --seeds 3 --first-seed 3   # part 2 only (DSPy still runs)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import statistics
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline: litellm must not fetch its cost map
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dspy  # noqa: E402
import optuna  # noqa: E402

from studyhall.bridge import FakeProvider, LLMClient  # noqa: E402
from studyhall.optimizer import MiproLoop  # noqa: E402
from studyhall.optimizer.dspy import DspyMetric, DspyProgram, optimize_dspy  # noqa: E402
from studyhall.optimizer.dspy._simtask import DspyTask, dspy_arith_task  # noqa: E402
from studyhall.optimizer.mipro._simmodel import PHRASINGS, SimModel  # noqa: E402
from studyhall.optimizer.mipro._simtask import true_quality  # noqa: E402

MODEL = "sim-small"


def quality(program: Any) -> float:
    """The true quality of a compiled program's prompt: expected accuracy over every problem."""
    pred = program.predictors()[0]
    demos = list(pred.demos)
    worked = sum(bool(str(d.get("reasoning", "") or "").strip()) for d in demos)
    return true_quality(pred.signature.instructions, len(demos), worked / len(demos) if demos else 0.0, model=MODEL)


def ceiling(default_instruction: str) -> float:
    """The best true quality any instruction the proposer can give (or the default) reaches, with any demos."""
    return max(
        true_quality(ins, k, w, model=MODEL)
        for ins in (*PHRASINGS, default_instruction)
        for k in range(9)
        for w in (0.0, 1.0)
    )


@contextlib.contextmanager
def quiet() -> Any:
    with (
        contextlib.redirect_stderr(io.StringIO()),
        contextlib.redirect_stdout(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        yield


def run_dspy(task: DspyTask, seed: int) -> dict[str, Any]:
    """DSPy's MIPROv2(auto="light") with its defaults (its own response cache, fresh per run)."""
    captured: dict[str, Any] = {}
    original = dspy.MIPROv2._optimize_prompt_parameters

    def spy(self: Any, program: Any, instruction_candidates: Any, demo_candidates: Any, *a: Any, **kw: Any) -> Any:
        captured["instructions"] = [list(v) for _, v in sorted(instruction_candidates.items())]
        captured["demos"] = [[[d.toDict() for d in s] for s in demo_candidates[i]] for i in sorted(demo_candidates)]
        captured["before_search"] = fp.stats()["completed"]
        return original(self, program, instruction_candidates, demo_candidates, *a, **kw)

    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=True)  # a new, empty cache
    with FakeProvider(rpm=None, tpm=None, latency_s=0.0, responder=SimModel(seed), model=MODEL) as fp:
        dspy.configure(lm=dspy.LM(f"openai/{MODEL}", api_base=fp.base_url, api_key="sim"))
        dspy.MIPROv2._optimize_prompt_parameters = spy  # type: ignore[method-assign]
        try:
            with quiet():
                out = dspy.MIPROv2(metric=task.metric, auto="light", seed=seed, num_threads=8).compile(
                    task.program.deepcopy(), trainset=task.trainset, valset=task.valset
                )
        finally:
            dspy.MIPROv2._optimize_prompt_parameters = original  # type: ignore[method-assign]
        calls = fp.stats()["completed"]
    return {"calls": calls, "search_calls": calls - captured["before_search"], "quality": quality(out), **captured}


def run_studyhall(task: DspyTask, seed: int, url: str) -> dict[str, Any]:
    """optimize_dspy(auto="light"): studyhall's proposer, bootstrapping and search, LLMClient(cache=True)."""
    with FakeProvider(rpm=None, tpm=None, latency_s=0.0, responder=SimModel(seed), model=MODEL) as fp:
        client = LLMClient(MODEL, base_url=fp.base_url, api_key="sim", cache=True)
        with quiet():
            out = optimize_dspy(
                task.program.deepcopy(),
                task.metric,
                task.trainset,
                task.valset,
                lm=client,
                study=f"complete-{seed}",
                storage=url,
                seed=seed,
            )
        calls = fp.stats()["completed"]
    r = out.studyhall_result
    return {
        "calls": calls,
        "setup": r.setup_calls,
        "search": r.llm_calls,
        "quality": quality(out),
        "full_evals": len(r.full_evals),
    }


def run_on_dspy_space(task: DspyTask, seed: int, url: str, space: dict[str, Any], minibatch: int) -> dict[str, Any]:
    """MiproLoop on DSPy's own candidates and DSPy's 10 trials, minibatches of ``minibatch``."""
    with FakeProvider(rpm=None, tpm=None, latency_s=0.0, responder=SimModel(seed), model=MODEL) as fp:
        client = LLMClient(MODEL, base_url=fp.base_url, api_key="sim", cache=True)
        loop = MiproLoop(
            DspyProgram(task.program),
            DspyMetric(task.metric),
            instructions=space["instructions"][0],
            demos=space["demos"][0],
            valset=task.valset,
            lm=client,
            study=f"space-{seed}-{minibatch}",
            storage=url,
            minibatch_size=minibatch,
            seed=seed,
            workers=0,
            prune=True,
            n_trials=10,
        )
        with quiet():
            r = loop.run()
        calls = fp.stats()["completed"]
    fes = r.full_evals
    fe_calls = sum(f.llm_calls for f in fes)
    true = [_chosen_quality(task, *loop.candidates.chosen(f.params)) for f in fes]
    return {
        "calls": calls,
        "quality": _chosen_quality(task, r.best_instructions, r.best_demos),
        "trial_calls": calls - fe_calls,
        "fe_calls": fe_calls,
        "full_evals": len(fes),
        "dropped": sum(not f.complete for f in fes),
        "pruned": r.pruned,
        "fe_detail": [(f.reason, f.llm_calls, f.reused, f.complete, f.score, q) for f, q in zip(fes, true)],
    }


def _chosen_quality(task: DspyTask, instructions: list[str], demos: list[list[Any]]) -> float:
    prog = task.program.deepcopy()
    pred = prog.predictors()[0]
    pred.signature = pred.signature.with_instructions(instructions[0])
    pred.demos = [dspy.Example(**d) for d in demos[0]]
    return quality(prog)


def spread(xs: list[float], fmt: str = "{:.0f}") -> str:
    return f"median {fmt.format(statistics.median(xs))} (range {fmt.format(min(xs))}-{fmt.format(max(xs))})"


EARLIER_CALLS, EARLIER_DSPY = 275, 375  # the earlier run: MiproLoop's and DSPy's search calls on DSPy's spaces


def space_detail(o: dict[str, Any]) -> str:
    """Where one MiproLoop run's calls went: its trials, and each full evaluation (reason, calls, examples reused)."""
    fes = ", ".join(
        f"{why} {c}{'' if done else ' dropped'} (reused {reused}, score {score:.2f}, true {q:.3f})"
        for why, c, reused, done, score, q in o["fe_detail"]
    )
    return f"{o['calls']} = trials {o['trial_calls']} ({o['pruned']} pruned) + full evals {o['fe_calls']} [{fes}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument(
        "--only",
        choices=("all", "space"),
        default="all",
        help="space: part 2 only (DSPy still runs once per seed, for its candidate space)",
    )
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("dspy", "LiteLLM", "httpx", "studyhall.bridge.llm", "studyhall.mipro"):
        logging.getLogger(name).setLevel(logging.ERROR)
    rows = []
    part1 = args.only == "all"
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{os.path.join(tmp, 'bench.db')}"
        print(
            f"{'seed':>4} {'ceiling':>7} | {'DSPy calls':>10} {'quality':>7} {'90%':>3} | {'studyhall calls':>15} "
            f"{'(setup+search)':>14} {'quality':>7} {'90%':>3} {'ratio':>5} | {'DSPy search':>11} {'MiproLoop on DSPy space':>23}"
        )
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            task = dspy_arith_task(n_train=40, n_val=100, seed=seed)
            top = ceiling(task.program.predictors()[0].signature.instructions)
            d = run_dspy(task, seed)
            s = run_studyhall(task, seed, url) if part1 else None
            o = run_on_dspy_space(task, seed, url, d, 35)
            o15 = run_on_dspy_space(task, seed, url, d, 15)
            row = {"seed": seed, "ceiling": top, "dspy": d, "sh": s, "space": o, "space15": o15}
            rows.append(row)
            sh = (
                (
                    f"{s['calls']:>15} {s['setup']:>6}+{s['search']:<7} {s['quality']:>7.3f} {'yes' if s['quality'] >= 0.9 * top else 'no':>3} "
                    f"{s['calls'] / d['calls']:>5.2f}"
                )
                if s
                else f"{'-':>15} {'-':>14} {'-':>7} {'-':>3} {'-':>5}"
            )
            print(
                f"{seed:>4} {top:>7.3f} | {d['calls']:>10} {d['quality']:>7.3f} {'yes' if d['quality'] >= 0.9 * top else 'no':>3} | "
                f"{sh} | {d['search_calls']:>11} {o['calls']:>4} calls q {o['quality']:.3f} (mb 35), "
                f"{o15['calls']:>4} q {o15['quality']:.3f} (mb 15)",
                flush=True,
            )
            print(f"{'':>4} mb 35: {space_detail(o)}\n{'':>4} mb 15: {space_detail(o15)}", flush=True)
    n = len(rows)
    reach_d = sum(r["dspy"]["quality"] >= 0.9 * r["ceiling"] for r in rows)
    q_d = statistics.mean(r["dspy"]["quality"] for r in rows)
    if part1:
        reach_s = sum(r["sh"]["quality"] >= 0.9 * r["ceiling"] for r in rows)
        ratios = [r["sh"]["calls"] / r["dspy"]["calls"] for r in rows]
        q_s = statistics.mean(r["sh"]["quality"] for r in rows)
        print("\n== 1. complete loops (proposals, bootstrapping, search)")
        print(
            f"DSPy MIPROv2(auto='light'): {spread([r['dspy']['calls'] for r in rows])} calls; "
            f"reaches 90% of the ceiling in {reach_d}/{n}; mean quality {q_d:.3f}"
        )
        print(
            f"studyhall optimize_dspy(auto='light'): {spread([r['sh']['calls'] for r in rows])} calls; "
            f"reaches 90% in {reach_s}/{n}; mean quality {q_s:.3f}"
        )
        total = sum(r["sh"]["calls"] for r in rows) / sum(r["dspy"]["calls"] for r in rows)
        print(f"studyhall's calls / DSPy's: {spread(ratios, '{:.2f}')}; over all {n} seeds together {total:.2f}")
        print(
            f"target 90% of the ceiling in >= {int(0.9 * n + 0.999)}/{n}: {'MET' if reach_s >= 0.9 * n else 'NOT MET'} ({reach_s}/{n})"
        )
        print(
            f"target <= 60% of DSPy's calls: {'MET' if max(ratios) <= 0.6 else ('MET on the median' if statistics.median(ratios) <= 0.6 else 'NOT MET')} "
            f"(median {statistics.median(ratios):.2f}, all seeds together {total:.2f}, worst {max(ratios):.2f})"
        )
        print(f"target mean quality >= DSPy's: {'MET' if q_s >= q_d else 'NOT MET'} ({q_s:.3f} vs {q_d:.3f})")
    print("\n== 2. DSPy's candidate spaces, DSPy's 10 trials (MiproLoop with pruning)")
    print(
        f"DSPy's search:         {spread([r['dspy']['search_calls'] for r in rows])} calls; 90% in {reach_d}/{n}; mean quality {q_d:.3f}"
    )
    earlier = EARLIER_CALLS / EARLIER_DSPY
    for key, label in (("space", "minibatch 35 (DSPy's)"), ("space15", "minibatch 15 (light)")):
        reach_o = sum(r[key]["quality"] >= 0.9 * r["ceiling"] for r in rows)
        q_o = statistics.mean(r[key]["quality"] for r in rows)
        med = statistics.median(r[key]["calls"] for r in rows)
        ratio = [r[key]["calls"] / r["dspy"]["search_calls"] for r in rows]
        print(
            f"MiproLoop, {label}: {spread([r[key]['calls'] for r in rows])} calls; 90% in {reach_o}/{n}; mean quality {q_o:.3f}; "
            f"same result as DSPy: {'yes' if reach_o >= reach_d and q_o >= q_d - 0.005 else 'no'}"
        )
        print(
            f"    fewer than {EARLIER_CALLS} calls (absolute): {'MET' if med < EARLIER_CALLS else 'NOT MET'} (median {med:.0f}); "
            f"calls / DSPy's search calls: {spread(ratio, '{:.2f}')}, earlier run {EARLIER_CALLS}/{EARLIER_DSPY} = {earlier:.2f}: "
            f"{'MET' if statistics.median(ratio) <= earlier else 'NOT MET'} on the median"
        )


if __name__ == "__main__":
    main()
