"""studyhall's RateLimiter + LLMClient against a naive retry-on-429 client and pyrate-limiter, one workload.

A strict FakeProvider (OpenAI-style RPM and TPM token buckets, TPM charged as
prompt + max_tokens, 2 s windows) and N requests of varied sizes in alternating
phases: short questions, for which the request limit binds, and long few-shot
prompts, for which the token limit binds (the split is printed). Each contender gets a fresh provider with the same limits
and sends the same requests from 16 threads:

  (a) studyhall: LLMClient waiting on a RateLimiter with the provider's RPM and
      TPM (10% of the burst held back for jitter), FIFO backpressure;
  (b) naive: no limiter, tenacity exponential backoff with jitter on 429/5xx
      (what DSPy/LiteLLM users get);
  (c) pyrate-limiter with the RPM limit only, plus (b)'s retries for the 429s
      that the token limit still causes.

Printed per contender: completion time, utilisation of the binding limit (the
time an ideal FIFO schedule on the provider's own buckets would take, divided by
the time taken; 100% = as fast as the provider allows), 429s and failures; then
the (b)/(a) and (c)/(a) time ratios. Targets for (a): utilisation >= 95%, zero
429s, >= 1.3x faster than (b).

    python benchmarks/rate_limit.py            # 300 requests, ~20-35 s per contender
    python benchmarks/rate_limit.py --quick    # 60 requests, a few seconds each
"""

from __future__ import annotations

import argparse
import math
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import tenacity
from pyrate_limiter import Duration, Limiter, Rate

from studyhall.bridge import FakeProvider, Limit, LLMClient, RateLimiter
from studyhall.bridge.llm._fake import prompt_tokens

CONCURRENCY = 16


@dataclass
class Request:
    messages: list[dict[str, str]]
    max_tokens: int

    @property
    def cost(self) -> int:
        return prompt_tokens(self.messages) + self.max_tokens


@dataclass
class Result:
    name: str
    elapsed_s: float
    rate_limited: int
    failures: int
    requests: int


def workload(n: int, seed: int) -> list[Request]:
    """Phases, as in a MIPROv2 run: minibatches of short questions (the request limit binds),
    then evaluations with long few-shot prompts and answers (the token limit binds)."""
    rng = random.Random(seed)
    out: list[Request] = []
    phase_long = False
    while len(out) < n:
        for _ in range(24 if phase_long else 60):  # alternating blocks: 60 short, then 24 long
            if phase_long:
                chars, max_tokens = rng.randint(1600, 4000), rng.randint(200, 500)
            else:
                chars, max_tokens = rng.randint(100, 400), rng.randint(16, 64)
            text = f"question {len(out)}: " + "lorem ipsum " * (chars // 12)
            out.append(Request([{"role": "user", "content": text}], max_tokens))
        phase_long = not phase_long
    return out[:n]


def ideal_schedule(reqs: list[Request], rpm: float, tpm: float, per: float) -> tuple[float, float]:
    """(seconds, share of waiting caused by the token limit) of the ideal FIFO schedule on the provider's buckets."""
    r_int, t_int = per / rpm, per / tpm
    r_tat = t_tat = t = 0.0
    waits = {"requests": 0.0, "tokens": 0.0}
    for q in reqs:
        r_ok = max(r_tat, t) + r_int - per
        t_ok = max(t_tat, t) + q.cost * t_int - per
        nxt = max(t, r_ok, t_ok)
        if nxt > t:
            waits["tokens" if t_ok >= r_ok else "requests"] += nxt - t
        t = nxt
        r_tat = max(r_tat, t) + r_int
        t_tat = max(t_tat, t) + q.cost * t_int
    total = sum(waits.values()) or 1.0
    return t, waits["tokens"] / total


def provider(args: argparse.Namespace) -> FakeProvider:
    return FakeProvider(rpm=args.rpm, tpm=args.tpm, per=args.per, latency_s=(0.05, 0.25), seed=1)


def run_studyhall(reqs: list[Request], args: argparse.Namespace) -> Result:
    with provider(args) as fp:
        lim = RateLimiter(
            f"bench-{uuid.uuid4().hex[:8]}",
            limits=[
                Limit(requests=args.rpm, per=args.per, burst=0.9 * args.rpm),
                Limit(tokens=args.tpm, per=args.per, burst=0.9 * args.tpm),
            ],
        )
        lm = LLMClient("fake-model", base_url=fp.base_url, api_key="x", limiter=lim, timeout=600, max_retries=12)
        start = time.monotonic()
        with ThreadPoolExecutor(CONCURRENCY) as ex:
            out = list(ex.map(lambda q: _try(lambda: lm.chat(q.messages, max_tokens=q.max_tokens)), reqs))
        elapsed = time.monotonic() - start
        lm.close()
        s = fp.stats()
    return Result("(a) studyhall limiter + client", elapsed, s["rate_limited"], out.count(False), s["requests"])


class _Retry(Exception):
    pass


def _naive_call(http: httpx.Client, url: str, q: Request, before: object = None) -> None:
    # The usual recipe: exponential backoff with jitter on 429 and 5xx, headers ignored.
    for attempt in tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(_Retry),
        wait=tenacity.wait_random_exponential(multiplier=1, max=30),
        stop=tenacity.stop_after_attempt(12),
        reraise=True,
    ):
        with attempt:
            if before is not None:
                before()  # type: ignore[operator]
            r = http.post(url, json={"model": "fake-model", "messages": q.messages, "max_tokens": q.max_tokens})
            if r.status_code == 429 or r.status_code >= 500:
                raise _Retry(r.status_code)
            r.raise_for_status()


def _try(fn: object) -> bool:
    try:
        fn()  # type: ignore[operator]
        return True
    except Exception:  # noqa: BLE001 - a benchmark counts failures
        return False


def run_naive(reqs: list[Request], args: argparse.Namespace, pyrate: bool = False) -> Result:
    with provider(args) as fp, httpx.Client(limits=httpx.Limits(max_connections=CONCURRENCY), timeout=60) as http:
        url = f"{fp.base_url}/chat/completions"
        before = None
        if pyrate:
            limiter = Limiter(Rate(int(args.rpm), Duration.SECOND * args.per))

            def before() -> None:
                limiter.try_acquire("rpm", blocking=True)

        start = time.monotonic()
        with ThreadPoolExecutor(CONCURRENCY) as ex:
            out = list(ex.map(lambda q: _try(lambda: _naive_call(http, url, q, before)), reqs))
        elapsed = time.monotonic() - start
        s = fp.stats()
    name = "(c) pyrate-limiter (RPM only) + retries" if pyrate else "(b) naive tenacity retries on 429"
    return Result(name, elapsed, s["rate_limited"], out.count(False), s["requests"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a tiny run (60 requests)")
    ap.add_argument("-n", type=int, default=None, help="number of requests (default 240; 60 with --quick)")
    args = ap.parse_args()
    n = args.n or (60 if args.quick else 300)
    # Short windows (OpenAI's are 60 s) so that each phase outlasts a bucket's burst.
    args.per = 2.0
    args.rpm = 15 * args.per  # 15 requests/s
    args.tpm = 5000 * args.per  # 5000 tokens/s
    reqs = workload(n, seed=0)
    ideal, token_share = ideal_schedule(reqs, args.rpm, args.tpm, args.per)
    print(
        f"{n} requests, {sum(q.cost for q in reqs)} tokens; provider: {args.rpm:g} requests and "
        f"{args.tpm:g} tokens per {args.per:g} s; concurrency {CONCURRENCY}"
    )
    print(
        f"ideal FIFO schedule: {ideal:.1f} s; the binding limit is the token limit "
        f"{token_share:.0%} and the request limit {1 - token_share:.0%} of the time\n"
    )
    results = [run_studyhall(reqs, args), run_naive(reqs, args), run_naive(reqs, args, pyrate=True)]
    print(f"{'contender':42} {'time':>8} {'utilisation':>12} {'429s':>6} {'failed':>7} {'HTTP requests':>14}")
    for r in results:
        util = ideal / r.elapsed_s if r.elapsed_s > 0 else math.nan
        print(f"{r.name:42} {r.elapsed_s:7.1f}s {util:11.0%} {r.rate_limited:6d} {r.failures:7d} {r.requests:14d}")
    a, b, c = (r.elapsed_s for r in results)
    print(f"\n(b)/(a) time ratio: {b / a:.2f}x   (c)/(a) time ratio: {c / a:.2f}x")


if __name__ == "__main__":
    main()
