#!/usr/bin/env bash
# Builds the lab's Kubernetes v1.20.2 (server binaries, kubectl, pause) offline from Debian's
# source package, cached outside the work tree and keyed by the source tarball's sha256.
# Prints the cache directory on its last line. docs/lab.md says why each step exists.
set -euo pipefail

CACHE_ROOT="${AIRGAP_CACHE:-$HOME/.cache/airgap-kubernetes}/k8s-build"
WHAT="cmd/kube-apiserver cmd/kubelet cmd/kubeadm cmd/kube-controller-manager cmd/kube-scheduler cmd/kube-proxy cmd/kubectl"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubeadm kube-proxy kubectl)

HEARTBEAT="${AIRGAP_HEARTBEAT:-30}"

log() { printf '[build-kubernetes] %s\n' "$*" >&2; }

# Every HEARTBEAT seconds while PID runs: the time since the build started and the package go compiled last
# (the last line of LOG that is not one of make's own +++ lines), so a cold build is never a silent terminal.
heartbeat() {
  local pid="$1" log_file="$2" last
  # sleep holds no pipe of ours: killed with its loop, it must not keep a reader waiting for EOF.
  while sleep "$HEARTBEAT" </dev/null >/dev/null 2>&1 && kill -0 "$pid" 2>/dev/null; do
    last=$(grep -v '^+++' "$log_file" | tail -n1 | tr -d '[:space:]' || true)
    log "make: $(($(date +%s) - start)) s, last package: ${last:-none yet}"
  done
}

mkdir -p "$CACHE_ROOT/src"
# One build at a time (the test suite runs lab tests, molecule and end-to-end side by side): the others wait, then
# find it cached.
exec 9>"$CACHE_ROOT/.lock"
flock -n 9 || { log "another build of the lab's Kubernetes runs: waiting for it"; flock 9; }
cd "$CACHE_ROOT/src"
if ! ls kubernetes_*.orig.tar.* >/dev/null 2>&1; then
  log "downloading Debian source package 'kubernetes' (bookworm)"
  apt-get source --download-only kubernetes >&2
fi
orig=$(ls kubernetes_*.orig.tar.* | head -n1)
key=$(sha256sum "$orig" | cut -c1-16)
out="$CACHE_ROOT/$key"
if [ -f "$out/REPORT" ]; then
  log "cached build $out"
  cat "$out/REPORT" >&2
  echo "$out"
  exit 0
fi

start=$(date +%s)
work="$CACHE_ROOT/work-$key"
rm -rf "$work"; mkdir -p "$work"
tar -C "$work" -xf "$orig"
tree=$(find "$work" -mindepth 1 -maxdepth 1 -type d | head -n1)

# The vendored reflect2 v1.0.1 panics under Go >= 1.18; Debian's v1.0.2 is the upstream fix.
rm -rf "$tree/vendor/github.com/modern-go/reflect2"
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$tree/vendor/github.com/modern-go/reflect2"
sed -i 's#^\(github.com/modern-go/reflect2\) v1\.0\.1#\1 v1.0.2#' "$tree/vendor/modules.txt" || true

cd "$tree"
git init -q . && git add -A >/dev/null 2>&1 && git -c user.email=lab@local -c user.name=lab commit -qm src >/dev/null
log "make WHAT=... (about 12 min cold on 2 cores; a line every ${HEARTBEAT}s)"
# "-v" reaches go install (build.sh hands arguments that start with a dash to go): it names each package as it
# is compiled, which the heartbeat reads from make.log. In GOFLAGS it would also land in -tags and fail the build.
GOFLAGS=-mod=vendor KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_TREE_STATE=clean \
  make WHAT="-v $WHAT" >"$work/make.log" 2>&1 &
make_pid=$!
heartbeat "$make_pid" "$work/make.log" &
heartbeat_pid=$!
make_status=0
wait "$make_pid" || make_status=$?
kill "$heartbeat_pid" 2>/dev/null || true
wait "$heartbeat_pid" 2>/dev/null || true
if [ "$make_status" -ne 0 ]; then
  tail -40 "$work/make.log" >&2
  exit 1
fi
log "make done in $(($(date +%s) - start)) s"
gcc -static -O2 -o "$work/pause" build/pause/linux/pause.c

mkdir -p "$out.tmp/bin"
for b in "${BINARIES[@]}"; do cp "_output/local/bin/linux/amd64/$b" "$out.tmp/bin/"; done
cp "$work/pause" "$out.tmp/bin/pause"
end=$(date +%s)
{
  echo "source $orig sha256-prefix $key"
  echo "build_seconds $((end - start))"
  for b in "${BINARIES[@]}"; do
    case "$b" in
      kubectl) v=$("$out.tmp/bin/$b" version --client --short 2>/dev/null || true) ;;
      kubeadm) v=$("$out.tmp/bin/$b" version -o short 2>/dev/null || true) ;;
      *) v=$("$out.tmp/bin/$b" --version 2>/dev/null || true) ;;
    esac
    echo "$b $v"
  done
  (cd "$out.tmp/bin" && sha256sum -- *)
} >"$out.tmp/REPORT"
rm -rf "$out"; mv "$out.tmp" "$out"
rm -rf "$work"
cat "$out/REPORT" >&2
echo "$out"
