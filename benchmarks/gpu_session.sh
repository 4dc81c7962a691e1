#!/usr/bin/env bash
# Check the whole book on a GPU machine without internet that has its own PyTorch (a cluster node, a lent GPU):
#   here:   make device-wheels [DEVICE_PYTHON=3.12]      (the packages it lacks, as wheels, into .whl/)
#   there:  bash benchmarks/gpu_session.sh [MINUTES]     (in the repository, .whl/ copied beside it)
# installs the wheels into $FER_NB_SITE (default /tmp/site), then runs `fer_nb.gpu_check --scales smoke gpu`
# with the machine's own torch: every chapter at smoke on CUDA, make bench, every chapter at the gpu scale;
# nothing new starts after MINUTES (default 8); the records go to $OUT (default benchmarks/results).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-8}
site=${FER_NB_SITE:-/tmp/site}
python=${PYTHON:-python3}
shopt -s nullglob
wheels=(.whl/*.whl)
if [ ${#wheels[@]} -eq 0 ]; then
  echo "gpu_session: no wheels in .whl/: run 'make device-wheels' on a machine with internet and copy .whl/ here" >&2
  exit 2
fi
"$python" -m pip install --disable-pip-version-check -q --no-index --no-deps --target "$site" "${wheels[@]}"
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$python" -m fer_nb.gpu_check --scales smoke gpu --budget-minutes "$minutes" --results-dir "${OUT:-benchmarks/results}"
