#!/usr/bin/env bash
# Three `studyhall worker` processes on one study, sharing one rate limit.
#
# Each process could run on its own host against one PostgreSQL/MySQL database;
# here they share a SQLite file. The study's sampler (TPE with constant liar) keeps
# their trials apart, and the LLM client's RateLimiter keeps its buckets in the same
# database, so all of them together stay under the (simulated) provider's limit.
#
#   bash examples/parallel_workers.sh
#   TRIALS_EACH=2 STUDYHALL_STORAGE=postgresql+psycopg://user@127.0.0.1/db bash examples/parallel_workers.sh
set -euo pipefail
cd "$(dirname "$0")"

STUDYHALL=${STUDYHALL:-studyhall}
PYTHON=${PYTHON:-python}
TRIALS_EACH=${TRIALS_EACH:-8}
WORKERS=${WORKERS:-2}  # trials in flight per worker process
STUDY=${STUDY:-parallel-prompts}
export STUDYHALL_STORAGE=${STUDYHALL_STORAGE:-sqlite:///parallel_example.db}
WORK=$(mktemp -d)
trap 'kill "${PROVIDER:-}" 2>/dev/null || true; rm -rf "$WORK"' EXIT

# 1. The simulated OpenAI-compatible provider, in its own process.
"$PYTHON" prompt_objective.py serve "$WORK/url" > "$WORK/provider.log" 2>&1 &
PROVIDER=$!
for _ in $(seq 100); do [ -s "$WORK/url" ] && break; sleep 0.1; done
[ -s "$WORK/url" ] || { cat "$WORK/provider.log"; echo "the provider did not start"; exit 1; }
export EXAMPLE_BASE_URL=$(cat "$WORK/url")

# 2. The study and the database's tables, created once before the workers start.
"$STUDYHALL" worker "$STUDY" --objective prompt_objective:objective --create --direction maximize --trials 0 --json > /dev/null

# 3. Three workers, each running WORKERS trials at a time in its own pool, until the
#    study as a whole has 3 x TRIALS_EACH finished trials.
TOTAL=$((3 * TRIALS_EACH))
LIMITS=(--retries 1)
if [ "$WORKERS" -gt 0 ]; then LIMITS+=(--trial-timeout 120); fi  # 0 runs trials in the worker process itself
pids=()
for w in 1 2 3; do
  "$STUDYHALL" worker "$STUDY" --objective prompt_objective:objective \
    --trials "$TRIALS_EACH" --total "$TOTAL" --workers "$WORKERS" "${LIMITS[@]}" --json > "$WORK/worker$w.json" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
for w in 1 2 3; do echo "worker $w: $(tr -d '\n ' < "$WORK/worker$w.json" | head -c 200)"; done

# 4. What they did together, and what the provider saw.
"$STUDYHALL" trials "$STUDY" --limit 10
kill -TERM "$PROVIDER"; wait "$PROVIDER" || true; PROVIDER=
cat "$WORK/provider.log"
