#!/usr/bin/env bash
# The prepared paper-scale run for one GPU window (issue 14): see gracheck/report/paper_run.py and the
# README section "Paper scale on a GPU". Usage, from the repository root or anywhere:
#   bash scripts/gpu_paper_run.sh [--budget SECONDS] [--size paper|tiny] [--claims ID ...] [--no-suite-plan]
# Results are packed into $OUT (default .gracheck-gpu/out): paper-results.tar.gz, state.tar.gz, summary.json,
# log.txt. The model/experiment cache is $GRACHECK_CACHE (default .gracheck-gpu/cache, kept while the
# machine stays warm, so a second command continues where the first stopped). Exit codes: paper_run's.
set -uo pipefail
export GRACHECK_RUN_STARTED="${GRACHECK_RUN_STARTED:-$(date +%s.%N)}"
cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export OUT="${OUT:-$PWD/.gracheck-gpu/out}"
export GRACHECK_CACHE="${GRACHECK_CACHE:-$PWD/.gracheck-gpu/cache}"
mkdir -p "$OUT" "$GRACHECK_CACHE" || exit 2
PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null 2>&1 || PY=python
"$PY" -c "import torch, numpy, scipy, matplotlib, tqdm, PIL" 2>/dev/null || {
  echo "gpu_paper_run: $PY lacks one of torch, numpy, scipy, matplotlib, tqdm, pillow" >&2; exit 2; }
"$PY" -m gracheck.report.paper_run "$@" 2>&1 | tee "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
