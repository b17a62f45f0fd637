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

passed=0; failed=0; failures=()
phase() {
  local name="$1"; shift
  local t0; t0=$(date +%s)
  printf '\n===== %s =====\n' "$name"
  if "$@"; then
    passed=$((passed + 1)); printf '===== %s: ok (%ss)\n' "$name" "$(( $(date +%s) - t0 ))"
  else
    failed=$((failed + 1)); failures+=("$name"); printf '===== %s: FAILED (%ss)\n' "$name" "$(( $(date +%s) - t0 ))"
  fi
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
phase "unit tests" unit_tests
phase "lab tests" pytest -m "lab or k8s_build" tests/lab
[ -d molecule ] && ls molecule/*/molecule.yml >/dev/null 2>&1 && phase "molecule scenarios" molecule_all
[ -d tests/e2e ] && phase "end to end" pytest tests/e2e

printf '\nfailed phases: %s\n' "${failures[*]:-none}"
printf 'phases: %d passed, %d failed\n' "$passed" "$failed"
[ "$failed" -eq 0 ]
