#!/usr/bin/env bash
# One GPU loan, spent well : check the machine, time the bench, then carry the
# paper-scale runs forward from their last checkpoint until the time is up.
#
#   1. environment: python, torch, GPU; carried wheels (.whl/, e.g. pydantic) installed to /tmp/site
#   2. bench: `ddbackdoor bench --sections $BENCH --ipc 10` with a profile of one DC iteration
#   3. paper-scale runs: the stack in docs/evidence/$RUN_ID (4 runs: clean, NAIVEATTACK, DOORPING
#      valid-pixel and unclipped, seed $SEED) resumes from its checkpoints, runs until BUDGET - GRACE
#      seconds after the start, is stopped with SIGTERM (every run finishes its iteration and writes
#      a checkpoint), and is packed into $OUT/evidence-$RUN_ID.tar.gz with this loan's line appended
#      to $RUN_ID/segments.jsonl (the ledger). Replace docs/evidence/$RUN_ID by it
#      (rm -rf docs/evidence/$RUN_ID && tar -xzf ... -C docs/evidence) and commit, and the next loan
#      resumes where this one stopped.
# On the GPU machine, carry .fmnist/ (Fashion-MNIST's four .gz files) and .whl/ (pydantic and its
# needs as cp312 wheels; docs/paper-scale.md and the device tool's README say how).
#
# Usage: OUT=dir [DEVICE=cuda] [BUDGET=500] [GRACE=60] [BENCH=d,g] [BENCH_ARGS=...] [SCALE=paper] [SEED=0]
#        [EXTRA="k=v ..."] [GIT_REV=sha] [PYTHON=python3] tools/gpu_evidence.sh
# A CPU try at smoke scale (stopped by the deadline, then resumed by a second call):
#   OUT=/tmp/ev DEVICE=cpu SCALE=smoke EXTRA=iterations=400 BUDGET=60 GRACE=20 BENCH= tools/gpu_evidence.sh
set -u
start=$(date +%s)
OUT=${OUT:?set OUT to the folder for results}
DEVICE=${DEVICE:-cuda}
BUDGET=${BUDGET:-500}
GRACE=${GRACE:-60}
BENCH=${BENCH-d,g}
SCALE=${SCALE:-paper}
SEED=${SEED:-0}
DATA_ROOT=${DATA_ROOT:-.fmnist}
RUN_ID=${RUN_ID:-$SCALE-fashion-mnist-dc-seed$SEED}
# the seed-0 stack in docs/evidence began before attacks had a random stream of their own, and a
# run resumes only as it began: paired=false keeps every stack of this series on the shared stream
PAIRED=${PAIRED:-false}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
log() { echo "[gpu_evidence $(($(date +%s) - start))s] $*" | tee -a "$OUT/summary.txt"; }
left() { echo $((start + BUDGET - GRACE - $(date +%s))); }

# 1. environment ---------------------------------------------------------------------------------
if ! $PYTHON -c "import pydantic" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
    $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || { log "installing the carried wheels failed"; exit 2; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
log "device=$DEVICE scale=$SCALE budget=${BUDGET}s run=$RUN_ID revision=${GIT_REV:-unknown}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$OUT/summary.txt"
$PYTHON - <<'EOF' 2>&1 | tee -a "$OUT/summary.txt" || { log "the package does not import"; exit 2; }
from ddbackdoor import reproducible
reproducible.pin_environment()
import torch, pydantic
import ddbackdoor.cli  # noqa: F401  (imports every command's module lazily; this checks the package)
print(f"python torch {torch.__version__}, cuda {torch.cuda.is_available()}, pydantic {pydantic.__version__}")
reproducible.check_pinned()
print("reproducible mode: pins take effect")
EOF
[ -d "$DATA_ROOT" ] || [ "$SCALE" = smoke ] || { log "no Fashion-MNIST under $DATA_ROOT (carry it)"; exit 2; }

# 2. bench -----------------------------------------------------------------------------------------
if [ -n "$BENCH" ]; then
    bench_limit=$(( $(left) / 2 ))
    log "bench sections $BENCH (at most ${bench_limit}s)"
    read -r -a bench_args <<<"${BENCH_ARGS:-}"  # e.g. BENCH_ARGS=--quick for a CPU try
    timeout -s INT "$bench_limit" $PYTHON -m ddbackdoor bench --device "$DEVICE" --sections "$BENCH" --ipc 10 \
        --out "$OUT/bench.json" --profile "$OUT/profile.txt" "${bench_args[@]}" >"$OUT/bench.log" 2>&1
    log "bench exit status $? (results so far: $OUT/bench.json)"
    grep -v "^W1\|warn" "$OUT/bench.log" | tail -20 | tee -a "$OUT/summary.txt"
fi

# 3. paper-scale runs ------------------------------------------------------------------------------
work=/tmp/evidence
rm -rf "$work" && mkdir -p "$work"
[ -d "docs/evidence/$RUN_ID" ] && cp -r "docs/evidence/$RUN_ID" "$work/"
data=(dataset=fashion-mnist "data.root=$DATA_ROOT")
[ "$SCALE" = smoke ] && data=(dataset=fashion-mnist-mini)
read -r -a extra <<<"${EXTRA:-}"  # more shared overrides, e.g. EXTRA="iterations=200"
cmd=($PYTHON -m ddbackdoor stack "profile=$SCALE" "${data[@]}" "device=$DEVICE" "seed=$SEED" "paired=$PAIRED" "${extra[@]}"
    --cell attack=none --cell attack=naive --cell attack=doorping --cell "attack=doorping poison.clip=false"
    --out "$work/$RUN_ID")
echo "${cmd[*]}" >"$OUT/command.txt"
if [ "$(left)" -gt 5 ]; then
    log "paper-scale stack for $(left)s: ${cmd[*]}"
    t0=$(date +%s)
    "${cmd[@]}" >"$OUT/stack.log" 2>&1 &
    pid=$!
    while kill -0 "$pid" 2>/dev/null && [ "$(left)" -gt 0 ]; do sleep 2; done
    if kill -0 "$pid" 2>/dev/null; then
        log "time is up: SIGTERM (finish the iteration, checkpoint)"
        kill -TERM "$pid"
        for _ in $(seq $((GRACE * 2 / 3))); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
        kill -0 "$pid" 2>/dev/null && { log "still running: second SIGTERM"; kill -TERM "$pid"; sleep 5; }
    fi
    wait "$pid"
    status=$?
    seconds=$(($(date +%s) - t0))
    log "stack exit status $status after ${seconds}s"
    tail -c 3000 "$OUT/stack.log" | tr '\r' '\n' | grep -v "^\s*$" | tail -8 | tee -a "$OUT/summary.txt"
    $PYTHON - "$work/$RUN_ID" "$seconds" "$status" "${GIT_REV:-unknown}" "$DEVICE" "$OUT/command.txt" \
        >"$OUT/segment.json" <<'EOF'
# this loan's segment of the runs, appended to RUN_ID/segments.jsonl (the evidence ledger)
import json, sys, pathlib
root, seconds, status, revision, device, command = sys.argv[1:]
root = pathlib.Path(root)
ledger = root / "segments.jsonl"
before = [json.loads(line) for line in ledger.read_text().splitlines()] if ledger.exists() else []
runs = {}
for run in sorted(p for p in root.iterdir() if p.is_dir()):
    kept = sorted((run / "checkpoints").glob("iter-*.safetensors"))
    metrics = run / "metrics.json"
    done = json.loads(metrics.read_text()) if metrics.exists() else None
    runs[run.name] = {
        "iteration": int(kept[-1].stem.split("-")[1]) if kept else 0,
        "finished": done is not None,
        "metrics": {k: done[k] for k in ("cta", "asr", "asr_all")} if done else None,
    }
name = device
if device.startswith("cuda"):
    import torch
    name = torch.cuda.get_device_name(0)
segment = {
    "segment": len(before) + 1,
    "from_iteration": before[-1]["to_iteration"] if before else 0,
    "to_iteration": min(r["iteration"] for r in runs.values()) if runs else 0,
    "seconds": int(seconds),
    "exit_status": int(status),
    "revision": revision,
    "device": name,
    "command": pathlib.Path(command).read_text().strip(),
    "runs": runs,
}
with ledger.open("a") as f:
    f.write(json.dumps(segment) + "\n")
print(json.dumps(segment, indent=1))
EOF
    cat "$OUT/segment.json" | tee -a "$OUT/summary.txt"
    tar -czf "$OUT/evidence-$RUN_ID.tar.gz" -C "$work" "$RUN_ID"
    log "packed $OUT/evidence-$RUN_ID.tar.gz ($(du -h "$OUT/evidence-$RUN_ID.tar.gz" | cut -f1))"
else
    log "no time left for the paper-scale stack"
fi
log "done"
