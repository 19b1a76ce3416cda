"""Driving a study by hand: ask for trials, evaluate them however you like, tell the results.

No worker pool and no MiproLoop: your own loop asks for two trials at a time (TPE's
constant liar keeps a batch apart), scores each on a minibatch with concurrent LLM
calls, and tells per-example scores, so the study keeps their distribution. A trial
whose calls mostly failed is told FAIL with the reason instead of a made-up score.

    python examples/ask_tell_manual.py
    python examples/ask_tell_manual.py --rounds 2 --storage sqlite:///manual.db
"""

from __future__ import annotations

import argparse
import os
import random

import optuna

from studyhall.bridge import FakeProvider, LLMClient, RateLimiter
from studyhall.optimizer import Categorical, Orchestrator, arith_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("EXAMPLE_ROUNDS", 6)))
    ap.add_argument("--storage", default=os.environ.get("STUDYHALL_STORAGE", "sqlite:///examples.db"))
    ap.add_argument("--study", default="ask-tell-example")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    task = arith_task(n_val=40)
    orch = Orchestrator(args.storage)
    study = orch.create_study(args.study, direction="maximize", seed=0, load_if_exists=True)
    space = {"instruction": Categorical(range(len(task.instructions))), "demos": Categorical(range(len(task.demos)))}

    # 2% of the simulated provider's answers are 500/503; the client retries them.
    with FakeProvider(rpm=1200, tpm=400_000, latency_s=(0.02, 0.06), error_rate=0.02, responder=task.responder()) as fp:
        lm = LLMClient(
            "sim-small",
            base_url=fp.base_url,
            api_key="sk-studyhall-simulated",
            limiter=RateLimiter("manual", rpm=1200, tpm=400_000),
            max_retries=2,
        )
        for _ in range(args.rounds):
            for trial in study.ask_batch(space, k=2):
                instruction = task.instructions[trial.params["instruction"]]
                demos = task.demos[trial.params["demos"]]
                batch = random.Random(trial.number).sample(task.valset, 15)
                replies = lm.chat_many(
                    [_messages(ex, instruction, demos) for ex in batch], concurrency=5, max_tokens=96, temperature=0.0
                )
                ok = [(ex, r) for ex, r in zip(batch, replies) if not isinstance(r, Exception)]
                if len(ok) < len(batch) - 2:
                    study.tell(trial, state="fail", error=f"{len(batch) - len(ok)} of {len(batch)} LLM calls failed")
                    continue
                scores = [task.metric(ex, _answer(r.text)) for ex, r in ok]
                latencies = [r.latency_s for _, r in ok]
                study.tell(
                    trial, scores=scores, metrics={"llm.latency_s": latencies}, user_attrs={"llm.calls": len(ok)}
                )

    best = study.best_trial
    dist = study.trial_metrics(best.number)
    print(f"{len(study.trials())} trials; best #{best.number} {best.params} value {best.value:.3f}")
    print(f"  its scores:      n={dist['score'].n} mean={dist['score'].mean:.3f} std={dist['score'].std:.3f}")
    print(f"  its LLM latency: p50={dist['llm.latency_s'].p50:.3f}s p90={dist['llm.latency_s'].p90:.3f}s")
    print(f"  instruction: {task.instructions[best.params['instruction']]}")


def _messages(example: dict, instruction: str, demos: list[dict]) -> list[dict]:
    shots = "".join(f"Question: {d['question']}\nAnswer: {d['answer']}\n\n" for d in demos)
    return [
        {"role": "system", "content": instruction},
        {"role": "user", "content": shots + f"Question: {example['question']}"},
    ]


def _answer(text: str) -> str:
    words = text.rsplit("Answer:", 1)[-1].replace(".", " ").split()
    numbers = [w for w in words if w.lstrip("-").isdigit()]
    return numbers[-1] if numbers else ""


if __name__ == "__main__":
    main()
