#!/usr/bin/env bash
# The CUDA half of the project, in one command, on a machine with an NVIDIA GPU:
# install, the whole test suite with every cuda case run (a skipped cuda case fails the check),
# compare.py and bench.py on cuda. Everything goes to one log (default gpu_check.log).
#   bash scripts/gpu_check.sh [LOG]
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(realpath -m "${1:-gpu_check.log}")
status=0
step() {  # step NAME CMD...: run, log, remember a failure, go on
    echo "=== $1: ${*:2}" | tee -a "$log"
    "${@:2}" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    echo "=== $1: exit $rc" | tee -a "$log"
    ((rc == 0)) || status=1
}
: >"$log"
date -u | tee -a "$log"
nvidia-smi 2>&1 | tee -a "$log"
step env python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
step install python3 -m pip install -q --no-deps -e .
step tests python3 -m pytest -n auto -q -rs -p no:cacheprovider
if grep -q "SKIPPED.*no CUDA" "$log"; then
    echo "=== tests: a cuda case was skipped on a machine with a GPU" | tee -a "$log"
    status=1
fi
step compare python3 scripts/compare.py --device cuda
step compare32 python3 scripts/compare.py --device cuda --dtype float32
step bench python3 scripts/bench.py --device cuda --json "${log%.log}_bench.json"
echo "=== gpu_check: $([ $status = 0 ] && echo OK || echo FAILED), log in $log" | tee -a "$log"
exit $status
