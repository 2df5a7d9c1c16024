#!/usr/bin/env bash
# Every peer benchmark in one command: installs what the peers need, runs benchmarks/*.py against them and writes
# the README's "Measured against peers" section (tables as printed, with the date and the machine).
#   scripts/bench.sh                 all of them (long: ~1 h on a shared 2-core CPU)
#   BENCHES="pt sft" scripts/bench.sh   a subset (the README section then lists only those; the rest keep nothing)
#   README=/tmp/x.md scripts/bench.sh   write the section into another file
# Peers: the `bench` extra (TRL, datasets) into .venv; TRL 1.12 (the last TRL with PPO) into its own virtualenv
# benchmarks/.env-trl112 for bench_ppo.py. Logs: benchmarks/results/<name>.txt (git-ignored).
set -uo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || scripts/install.sh
export PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/pip install -q -c constraints.txt -e ".[bench,deepspeed]" || { echo "bench: installing the bench extra failed"; exit 1; }
if [ ! -x benchmarks/.env-trl112/bin/python ]; then
  python3 -m venv benchmarks/.env-trl112 \
    && benchmarks/.env-trl112/bin/pip install -q torch==2.13.0 \
    && benchmarks/.env-trl112/bin/pip install -q -c constraints.txt 'trl==1.12.*' \
    || echo "bench: TRL 1.12 virtualenv could not be built; bench_ppo.py will fail"
fi
mkdir -p benchmarks/results
BENCHES=${BENCHES:-"pt sft rm_dpo ppo serve judge build_throughput deid_recall annotate_load"}
for b in $BENCHES; do
  script=benchmarks/bench_$b.py
  [ -f "$script" ] || script=benchmarks/$b.py
  echo "== $script ($(date -u +%H:%M:%S))"
  start=$(date +%s)
  .venv/bin/python "$script" > "benchmarks/results/$b.txt" 2>&1
  echo "exit $? after $(( $(date +%s) - start )) s" >> "benchmarks/results/$b.txt"
  tail -3 "benchmarks/results/$b.txt"
done
.venv/bin/python benchmarks/collect.py --readme "${README:-README.md}" $BENCHES
