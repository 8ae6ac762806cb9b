#!/usr/bin/env bash
# The paper's setting on one GPU (issue 15): Table 2 and Table 1 as two commands of at most
# 5 minutes each on one H200, or the whole script on the CPU at 32 px on phantoms (--smoke).
#
#   benchmarks/paper_gpu.sh DATA_DIR OUT_DIR [table2|table1|all] [--smoke] [--budget-s S]
#
# The GPU machine receives only the project folder (at most 64 MiB; ../shared is not there), so
# copy the data into the git-ignored data-cache/ first (cxr3-full is 49 MiB of PNG):
#   mkdir -p data-cache && cp -r ../shared/data/cxr3-full data-cache/
#   benchmarks/paper_gpu.sh data-cache/cxr3-full runs/paper-gpu table2   # command 1, <= 5 min
#   benchmarks/paper_gpu.sh data-cache/cxr3-full runs/paper-gpu table1   # command 2, <= 5 min
# Each command measures the GPU, prints its plan and time estimate, sizes epochs / RayS queries
# to fit, stops at its budget (a rerun resumes) and merges OUT_DIR/summary.json; the reports are
# OUT_DIR/table2/report.md and OUT_DIR/table1/transfer.md (commit them under docs/results/paper-gpu/).
# Python: $PYTHON, else .venv/bin/python, else python3 with src/ on PYTHONPATH (a machine without
# the project's packages needs them as wheels; the first check below names a missing one).
#   benchmarks/paper_gpu.sh phantoms:10 /tmp/paper-smoke all --smoke                 # CPU, < 3 min
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PYTHON" -c "import mladv.cli, mladv.experiment, mladv.transfer, yaml" || {
  echo "paper_gpu.sh: the project's packages are missing for $PYTHON (see pyproject.toml)" >&2
  exit 2
}
exec "$PYTHON" benchmarks/paper_gpu.py "$@"
