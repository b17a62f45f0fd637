#!/usr/bin/env bash
# Operator entry point: ./run.sh COMMAND [options]. Parsing and logic live in Python (tools/cli.py).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${AIRGAP_VENV:-$HOME/.cache/airgap-kubernetes/venv}"

# demo and test start from a bare machine: install Debian packages, dockerd and the pinned toolchain first.
case "${1:-}" in
  demo|test) bash "$REPO/.ci/setup-host.sh" ;;
esac

PY=python3
[ -x "$VENV/bin/python" ] && PY="$VENV/bin/python"

# The checkout is the collection airgap.kubernetes; expose it where Python and Ansible look for collections.
link="$REPO/.collections/ansible_collections/airgap/kubernetes"
if [ ! -e "$link" ]; then
  mkdir -p "$(dirname "$link")"
  ln -sfn ../../.. "$link"
fi

export PYTHONPATH="$REPO/.collections${PYTHONPATH:+:$PYTHONPATH}"
export ANSIBLE_CONFIG="${ANSIBLE_CONFIG:-$REPO/ansible.cfg}"
export PATH="$(dirname "$PY"):$PATH"
exec "$PY" -m ansible_collections.airgap.kubernetes.tools.cli "$@"
