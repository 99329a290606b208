#!/usr/bin/env bash
# Runs pyserve in the side-by-side peers harness (shared/peers, see its README) beside its baseline.
# Usage: bash bench/peers/run_peers.sh PEERS_DIR [run.py args...]
#   PEERS_DIR: a writable copy of the harness (cp -r ../shared/peers /tmp/peers), after its setup.sh
#   (or at least: wrk installed and `python make_models.py` run). pyserve runs from the active venv.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
peers=$(cd "$1" && pwd); shift
mkdir -p "$peers/envs"
venv=$(python -c 'import sys; print(sys.prefix)')
[ -e "$peers/envs/pyserve" ] || ln -s "$venv" "$peers/envs/pyserve"
cp -r "$here/targets/." "$peers/targets/"
python "$here/make_bodies.py" "$peers"
cd "$peers" && python run.py "$@"
