"""A MIPROv2-style prompt search with MiproLoop, trials in parallel pool workers.

The program, metric, instruction candidates and demo sets are yours; here they are
the built-in simulated task (arithmetic word problems) and its simulated model,
served by FakeProvider, a real OpenAI-compatible HTTP server on loopback. Point
``--base-url`` at a real provider to run the same search there.

    python examples/miprov2_loop.py                       # 20 trials, 2 workers
    python examples/miprov2_loop.py --trials 6 --val 20 --prune
    python examples/miprov2_loop.py --auto light          # proposes and bootstraps its own candidates
    STUDYHALL_STORAGE=postgresql+psycopg://... python examples/miprov2_loop.py
"""

from __future__ import annotations

import argparse
import os

import optuna

from studyhall.bridge import FakeProvider, LLMClient, RateLimiter
from studyhall.optimizer import MiproLoop, arith_task


def solve(example: dict, instruction: str, demos: list[dict], lm: LLMClient) -> str:
    """The program being optimized: one LLM call with the instruction, demos and question."""
    shots = "".join(f"Question: {d['question']}\nAnswer: {d['answer']}\n\n" for d in demos)
    reply = lm.chat(
        [
            {"role": "system", "content": instruction},
            {"role": "user", "content": shots + f"Question: {example['question']}"},
        ],
        max_tokens=96,
        temperature=0.0,
    )
    tail = reply.text.rsplit("Answer:", 1)[-1]
    digits = "".join(ch for ch in tail.split()[-1] if ch.isdigit() or ch == "-") if tail.split() else ""
    return digits


def exact_match(example: dict, prediction: str) -> float:
    """1.0 when the prediction is the gold answer."""
    return float(prediction == example["answer"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=int(os.environ.get("EXAMPLE_TRIALS", 20)))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--val", type=int, default=60, help="validation examples")
    ap.add_argument("--minibatch", type=int, default=35)
    ap.add_argument("--prune", action="store_true", help="stop clearly worse trials early (Wilcoxon)")
    ap.add_argument("--study", default="miprov2-example")
    ap.add_argument("--storage", default=os.environ.get("STUDYHALL_STORAGE", "sqlite:///examples.db"))
    ap.add_argument("--base-url", help="an OpenAI-compatible API instead of the simulated one")
    ap.add_argument("--model", default="sim-small")
    ap.add_argument("--auto", choices=["light", "medium", "heavy"], help="make the candidates and pick the budget")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    task = arith_task(n_val=args.val)
    provider = (
        None
        if args.base_url
        else FakeProvider(rpm=3000, tpm=1_000_000, latency_s=(0.02, 0.08), responder=task.responder()).start()
    )
    base_url = args.base_url or provider.base_url
    try:
        # One limiter in the database: every worker process (and host) shares its buckets.
        limiter = RateLimiter(f"example:{args.model}", rpm=3000, tpm=1_000_000, storage=args.storage)
        lm = LLMClient(
            args.model, base_url=base_url, api_key=None if args.base_url else "sk-studyhall-simulated", limiter=limiter
        )
        common = dict(
            valset=task.valset, lm=lm, study=args.study, storage=args.storage, workers=args.workers, progress=True
        )
        if args.auto:  # proposals (the simulated model answers them too) and bootstrapped demos
            loop = MiproLoop.auto(
                args.auto,
                solve,
                exact_match,
                trainset=task.trainset,
                instruction=task.instructions[0],
                program_description="solve(question) -> a number",
                **common,
            )
        else:
            loop = MiproLoop(
                solve,
                exact_match,
                instructions=task.instructions,  # candidate 0 is the default
                demos=task.demos,  # demo set 0 is zero-shot
                minibatch_size=args.minibatch,
                full_eval_every=5,
                prune=args.prune,
                **common,
            )
        result = loop.run(n_trials=None if args.auto else args.trials)  # run again with a larger --trials to extend it
    finally:
        if provider is not None:
            provider.stop()

    print(f"best instruction: {result.best_instruction}")
    print(f"best demos: {len(result.best_demos[0])} examples; full-valset score {result.best_full_score}")
    for f in result.full_evals:
        print(
            f"  full eval ({f.reason}{'' if f.complete else ', dropped'}) after trial {f.after_trials}: {f.params} -> "
            f"{f.score:.3f} (minibatch mean {f.minibatch_mean:.3f}, {f.llm_calls} calls)"
        )
    print(
        f"{result.trials} trials ({result.completed} complete, {result.pruned} pruned, {result.failed} failed), "
        f"{result.llm_calls} LLM calls, {result.tokens} tokens, {result.calls_saved} calls saved by pruning"
    )


if __name__ == "__main__":
    main()
