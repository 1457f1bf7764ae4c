#!/usr/bin/env bash
# Optional CI step before `python -m pytest -m slurm`: the test fixture (tests/slurm_cluster.py) installs
# these packages itself when they are missing, but where they can't be installed it SKIPS. Running this
# first makes a broken CI image fail loudly instead, and keeps the ~20 s apt install out of pytest.
# Nothing is started or configured here: the fixture writes a private slurm.conf and starts the daemons.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo -n"; fi
$SUDO apt-get update -q
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    munge slurmctld slurmd slurm-client
python -m pip install -q -e '.[slurm,test]'
