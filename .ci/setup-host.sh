#!/usr/bin/env bash
# Installs what the lab and the tests need on a fresh Debian 12 host, and starts dockerd.
# Idempotent: a second run only checks.
set -euo pipefail

APT_PKGS=(docker.io debootstrap skopeo rsync golang-go golang-github-modern-go-reflect2-dev
          dpkg-dev git openssh-client jq curl gnupg sqv apt-utils busybox-static docker-registry haproxy)

log() { printf '[setup-host] %s\n' "$*"; }

ensure_deb_src() {
  # The lab builds Kubernetes v1.20.2 from Debian's source package, so apt needs deb-src.
  local f=/etc/apt/sources.list.d/airgap-bookworm-src.sources
  [ -f "$f" ] && return 0
  cat >"$f" <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  rm -f /var/lib/apt/.airgap-updated
}

ensure_apt() {
  local missing=()
  for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ! -f /var/lib/apt/.airgap-updated ] || [ "${#missing[@]}" -gt 0 ]; then
    log "apt-get update"
    # Third-party sources on the image may be unreachable; Debian's own must work.
    apt-get update -qq || log "apt-get update reported errors (unreachable third-party sources are ignored)"
    touch /var/lib/apt/.airgap-updated
  fi
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # The tests start docker-registry and haproxy themselves, on loopback ports they pick; the packaged
  # services would only hold ports on a systemd host.
  if [ -d /run/systemd/system ]; then systemctl disable --now docker-registry haproxy >/dev/null 2>&1 || true; fi
}

ensure_dockerd() {
  if docker info >/dev/null 2>&1; then return 0; fi
  log "starting dockerd"
  # PID 1 is not systemd here, so the daemon is started by hand.
  nohup /usr/sbin/dockerd >/var/log/dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  log "dockerd did not start; see /var/log/dockerd.log"; tail -20 /var/log/dockerd.log; exit 1
}

ensure_python() {
  local venv="${AIRGAP_VENV:-$HOME/.cache/airgap-kubernetes/venv}"
  local req="$1"
  local stamp="$venv/.req-$(sha256sum "$req" | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    log "python venv at $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q -r "$req"
    touch "$stamp"
  fi
}

main() {
  local here; here="$(cd "$(dirname "$0")/.." && pwd)"
  ensure_deb_src
  ensure_apt
  ensure_dockerd
  ensure_python "$here/requirements.txt"
  log "ready"
}
main "$@"
