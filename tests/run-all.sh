#!/usr/bin/env bash
# The whole test suite, as `./run.sh test` and CI run it: lint, unit, lab, molecule, end to end.
# Every phase runs even after a failure; the exit code is non-zero when any phase failed.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
VENV="${AIRGAP_VENV:-$HOME/.cache/airgap-kubernetes/venv}"
export PATH="$VENV/bin:$PATH"
export PYTHONPATH="$REPO/.collections${PYTHONPATH:+:$PYTHONPATH}"
export ANSIBLE_CONFIG="$REPO/ansible.cfg"
export ANSIBLE_FORCE_COLOR=0 PY_COLORS=0
mkdir -p "$REPO/.collections/ansible_collections/airgap"
ln -sfn ../../.. "$REPO/.collections/ansible_collections/airgap/kubernetes"

# Each phase's result goes into RESULTS, also from the streams below, which run in subshells.
RESULTS="$(mktemp)"; trap 'rm -f "$RESULTS"' EXIT
phase() {
  local name="$1"; shift
  local t0; t0=$(date +%s)
  printf '\n===== %s =====\n' "$name"
  if "$@"; then
    echo "ok $name" >> "$RESULTS"; printf '===== %s: ok (%ss)\n' "$name" "$(( $(date +%s) - t0 ))"
  else
    echo "FAILED $name" >> "$RESULTS"; printf '===== %s: FAILED (%ss)\n' "$name" "$(( $(date +%s) - t0 ))"
  fi
}

# The docker-bound phases wait mostly on their lab nodes, so they run as streams side by side, each into its own
# log under .ci-logs/: one line per stream every minute while they run (its latest line), then each log whole.
STREAM_DIR="$REPO/.ci-logs"
stream_names=(); stream_pids=(); stream_logs=()
stream() {
  local name="$1"; shift
  mkdir -p "$STREAM_DIR"
  local log="$STREAM_DIR/${name//[^a-z0-9]/-}.log"
  ( "$@" ) > "$log" 2>&1 &
  stream_names+=("$name"); stream_pids+=("$!"); stream_logs+=("$log")
  printf '\n===== stream "%s" started: its output goes to %s and is printed when it ends\n' "$name" "$log"
}
wait_streams() {
  local t0 i alive last; t0=$(date +%s)
  while :; do
    alive=0
    for i in "${!stream_pids[@]}"; do kill -0 "${stream_pids[$i]}" 2>/dev/null && alive=$((alive + 1)); done
    [ "$alive" -gt 0 ] || break
    sleep 60
    for i in "${!stream_pids[@]}"; do
      kill -0 "${stream_pids[$i]}" 2>/dev/null || continue
      last=$(grep -v '^[[:space:]]*$' "${stream_logs[$i]}" | tail -n 1 | cut -c1-150)
      printf '[%s, %d min] %s\n' "${stream_names[$i]}" "$(( ($(date +%s) - t0) / 60 ))" "$last"
    done
  done
  for i in "${!stream_pids[@]}"; do
    wait "${stream_pids[$i]}"
    printf '\n######## output of stream "%s" (%s)\n' "${stream_names[$i]}" "${stream_logs[$i]}"
    cat "${stream_logs[$i]}"
  done
}

molecule_all() {
  local scenarios=() rc=0
  for d in molecule/*/molecule.yml; do [ -f "$d" ] && scenarios+=("$(basename "$(dirname "$d")")"); done
  if [ "${#scenarios[@]}" -eq 0 ]; then echo "no molecule scenarios exist yet"; return 1; fi
  # Scenarios use the stable tags airgap-lab-node:<release>; build or find them first.
  python3 tools/lab/lab.py image --release bookworm && python3 tools/lab/lab.py image --release trixie || return 1
  for s in "${scenarios[@]}"; do
    echo "--- molecule test -s $s"
    molecule test -s "$s" || { echo "--- molecule scenario $s FAILED"; rc=1; }
  done
  return "$rc"
}

build_collection() {
  local out; out="$(mktemp -d)"
  ansible-galaxy collection build --force --output-path "$out" . &&
    ansible-galaxy collection install --force -p "$out/installed" "$out"/airgap-kubernetes-*.tar.gz &&
    test -f "$out/installed/ansible_collections/airgap/kubernetes/tools/steps.py"
  local rc=$?; rm -rf "$out"; return "$rc"
}

# pytest exits 5 when it collected nothing; that is a failure here, never a pass.
phase "lint: yamllint" yamllint --strict .
phase "lint: ansible-lint" ansible-lint
phase "collection build and install" build_collection
unit_tests() {
  pytest tests/unit --cov=plugins/module_utils --cov=plugins/lookup --cov=plugins/filter --cov-branch \
      --cov-report=term || return 1
  echo "--- resolver branch coverage (must be >= 95%)"
  coverage report --include='*/module_utils/resolver.py' --fail-under=95
}
molecule_phase() {
  if ls molecule/*/molecule.yml >/dev/null 2>&1; then phase "molecule scenarios" molecule_all
  else phase "molecule scenarios" false; fi
}
lab_and_other_e2e() {
  # The unit tests here, not before the streams: this stream is the shortest, the molecule one the longest.
  phase "unit tests" unit_tests
  # Every test under tests/lab: the lab nodes and the Kubernetes build, and the lab planner's own unit tests.
  phase "lab tests" pytest tests/lab
  phase "end to end: broken inputs, the bootstrap host" pytest $(ls tests/e2e/test_*.py | grep -v test_deploy_layers.py)
}
# Three streams of about the same length (measured on this machine, each beside the others: molecule 48 min, the
# layers and day-2 tests 43, the lab tests and the other end-to-end tests 37, the unit tests 5 more); the lab
# images, the Kubernetes build and the fixtures they share are built once (each behind a lock) whichever stream
# asks first.
stream "molecule" molecule_phase
stream "e2e layers and day 2" phase "end to end: layers and day 2" pytest tests/e2e/test_deploy_layers.py
stream "lab and other e2e" lab_and_other_e2e
wait_streams

failures=$(awk '$1 == "FAILED" {sub(/^FAILED /, ""); printf "%s%s", sep, $0; sep = ", "}' "$RESULTS")
printf '\nfailed phases: %s\n' "${failures:-none}"
printf 'phases: %d passed, %d failed\n' "$(grep -c '^ok ' "$RESULTS")" "$(grep -c '^FAILED ' "$RESULTS")"
! grep -q '^FAILED ' "$RESULTS"
