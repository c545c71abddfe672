#!/bin/bash
# An interrupted-then-resumed build against a clean one, timed, compared byte for byte.
#   bash benchmarks/build_resume.sh CORPUS_DIR_OR_GLOB VOCAB_TXT [OUT_DIR] [NUM_SHARDS]
# Builds OUT/clean, then OUT/killed killed with SIGKILL once half of its shards are complete,
# reruns the same command, and diffs the two trees (all files but build_stats.json).
set -eu
IN=$1; V=$2; O=${3:-/tmp/build_resume}; N=${4:-16}
rm -rf "$O/clean" "$O/killed"; mkdir -p "$O"
ARGS=(--input="$IN" --vocab="$V" --seq_len=128 --num_shards="$N" --num_workers=2 --eval_fraction=0.01)
t0=$(date +%s.%N)
python -m electra_jax.data.corpus "${ARGS[@]}" --output="$O/clean" > "$O/clean.log" 2>&1
t1=$(date +%s.%N); echo "clean build: $(echo "$t1 - $t0" | bc) s"
python -m electra_jax.data.corpus "${ARGS[@]}" --output="$O/killed" > "$O/killed1.log" 2>&1 &
pid=$!
while [ "$(ls "$O"/killed/.build/part-*.json 2>/dev/null | wc -l)" -lt $((N / 2)) ]; do sleep 0.2; done
kill -9 $pid; wait $pid 2>/dev/null || true
t2=$(date +%s.%N)
echo "killed after $(echo "$t2 - $t1" | bc) s with $(ls "$O"/killed/.build/part-*.json | wc -l) of $N shards complete; temporary files left: $(ls -a "$O/killed" "$O/killed/eval" | grep -c '^\.tmp-' || true)"
python -m electra_jax.data.corpus "${ARGS[@]}" --output="$O/killed" > "$O/killed2.log" 2>&1
t3=$(date +%s.%N); echo "rerun (resume): $(echo "$t3 - $t2" | bc) s"; grep complete "$O/killed2.log" || true
diff -r -x build_stats.json "$O/clean" "$O/killed" && echo "byte-identical: yes"
tail -1 "$O/clean.log"
