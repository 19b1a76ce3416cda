"""The objective that examples/parallel_workers.sh hands to ``studyhall worker``.

It is an ordinary Optuna-style objective: it picks an instruction and a demo set,
scores a seeded minibatch of the simulated task through an LLM client, and returns
the per-example scores (studyhall keeps their distribution). The client waits on a
RateLimiter whose buckets live in the study's database, so every ``studyhall
worker`` process, and every pool worker under them, shares one provider limit.

``python prompt_objective.py serve URL_FILE`` runs the simulated provider until
SIGTERM, writes its base URL to URL_FILE, and prints its counters (429s...) at the end.
"""

from __future__ import annotations

import functools
import os
import random
import re
import signal
import sys
import threading

from studyhall.bridge import FakeProvider, Limit, LLMClient, RateLimiter
from studyhall.optimizer import arith_task

# The provider's limits per 10 s window; the shared limiter is told the same.
WINDOW_S, REQUESTS, TOKENS = 10.0, 100, 40_000
MINIBATCH = int(os.environ.get("EXAMPLE_MINIBATCH", 12))


@functools.lru_cache(maxsize=1)
def _task():  # type: ignore[no-untyped-def]
    return arith_task(n_val=40)


@functools.lru_cache(maxsize=1)
def _client() -> LLMClient:
    limiter = RateLimiter(
        "example:parallel",
        limits=[Limit(requests=REQUESTS, per=WINDOW_S), Limit(tokens=TOKENS, per=WINDOW_S)],
        storage=os.environ["STUDYHALL_STORAGE"],
    )
    return LLMClient(
        "sim-small",
        base_url=os.environ["EXAMPLE_BASE_URL"],
        api_key="sk-studyhall-simulated",
        limiter=limiter,
        timeout=120.0,
    )


def objective(trial) -> list[float]:  # type: ignore[no-untyped-def]
    """Score one (instruction, demo set) choice on a minibatch; failed calls are left out."""
    task = _task()
    i = trial.suggest_categorical("0_instruction", list(range(len(task.instructions))))
    d = trial.suggest_categorical("0_demos", list(range(len(task.demos))))
    examples = random.Random(trial.number).sample(task.valset, MINIBATCH)
    prompts = []
    for ex in examples:
        shots = "".join(f"Question: {x['question']}\nAnswer: {x['answer']}\n\n" for x in task.demos[d])
        prompts.append(
            [
                {"role": "system", "content": task.instructions[i]},
                {"role": "user", "content": shots + f"Question: {ex['question']}"},
            ]
        )
    replies = _client().chat_many(prompts, concurrency=4, max_tokens=96, temperature=0.0)
    scores = [task.metric(ex, _number(r.text)) for ex, r in zip(examples, replies) if not isinstance(r, Exception)]
    if len(scores) < len(examples) // 2:
        raise RuntimeError(f"{len(examples) - len(scores)} of {len(examples)} LLM calls failed")
    return scores


def _number(text: str) -> str:
    """The reply's answer: the number after 'Answer:', else its last number."""
    found = re.findall(r"-?\d+", text.rsplit("Answer:", 1)[-1])
    return found[-1] if found else ""


def serve(url_file: str) -> None:
    """Run the simulated provider until SIGTERM; write its URL, then print its counters."""
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with FakeProvider(
        rpm=REQUESTS, tpm=TOKENS, per=WINDOW_S, latency_s=(0.05, 0.2), responder=_task().responder()
    ) as fp:
        with open(url_file + ".tmp", "w") as f:
            f.write(fp.base_url)
        os.replace(url_file + ".tmp", url_file)
        done.wait()
        stats = fp.stats()
    print(
        f"provider: {stats['completed']} answered, {stats['rate_limited']} answered 429, {stats['tokens']} tokens charged"
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        sys.exit("usage: python prompt_objective.py serve URL_FILE")
