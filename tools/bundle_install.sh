#!/usr/bin/env bash
# The bundle's installer (install.sh at the top of an unpacked bundle): puts the tool on a bare Debian host, offline.
#
# build-bundle copies this file into the bundle (tools/bundle_wheelhouse.py). In order, changing nothing until the
# checks pass: the tarball against its .sha256 (and --sha256), the unpacked manifest against the tarball's, the
# manifest's signature by a pinned key, every file against the manifest's sha256; then python3-venv and the other
# controller packages from the bundle's own apt repo (apt checks its signature with the bundle's key), a venv from
# the wheelhouse with pip --no-index, the collection; last, the command to run next. A rerun changes nothing.
set -euo pipefail

BUNDLE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PREFIX=/opt/airgap-kubernetes
TARBALL=""
TRUSTED_KEY=""
KEYRING=""
SHA256=""
CHECK_ONLY=0

usage() {
  cat <<EOF
usage: install.sh (--trusted-key FPR | --keyring FILE | --sha256 HEX) [--tarball PATH] [--prefix DIR] [--check-only]

Installs airgap.kubernetes from this unpacked bundle, with no network: Debian packages from the bundle's apt repo,
a venv from its wheelhouse, the collection; then prints the command to run next.

  --trusted-key FPR  the site's release key (its fingerprint): manifest.json.asc must be its signature
                     (the key itself comes from keys/release.asc, trusted only through this fingerprint)
  --keyring FILE     an OpenPGP keyring (binary or armored) of the keys allowed to sign the manifest
  --sha256 HEX       no key: the tarball's sha256, as the builder sent it to you by another channel
  --tarball PATH     the tarball this directory was unpacked from (default: bundle.tar.gz beside it)
  --prefix DIR       where the venv, the collection and run.sh go (default: $PREFIX)
  --check-only       verify the bundle, change nothing
EOF
}

say() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --trusted-key) TRUSTED_KEY="${2:?--trusted-key needs a fingerprint}"; shift 2 ;;
    --keyring) KEYRING="${2:?--keyring needs a file}"; shift 2 ;;
    --sha256) SHA256="${2:?--sha256 needs a sha256}"; shift 2 ;;
    --tarball) TARBALL="${2:?--tarball needs a path}"; shift 2 ;;
    --prefix) PREFIX="${2:?--prefix needs a directory}"; shift 2 ;;
    --check-only) CHECK_ONLY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument $1" ;;
  esac
done

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# ----------------------------------------------------------------------------- checks (nothing changes before these)

command -v python3 >/dev/null || die "python3 is missing: it is part of every Debian install (apt-get install python3)"
[ -f "$BUNDLE/manifest.json" ] || die "$BUNDLE has no manifest.json: run the install.sh of an unpacked bundle"
if [ -z "$TRUSTED_KEY$KEYRING$SHA256" ]; then
  die "nothing to trust the bundle by: give --trusted-key FPR (the site's release key), --keyring FILE, or --sha256 HEX \
(the tarball's sha256, from the builder by another channel). The bundle never vouches for itself"
fi

if [ -z "$TARBALL" ]; then
  TARBALL="$(dirname "$BUNDLE")/bundle.tar.gz"
  [ -f "$TARBALL" ] || die "no bundle.tar.gz beside $BUNDLE: give --tarball PATH (the tarball this directory came from)"
fi
[ -f "$TARBALL" ] || die "--tarball $TARBALL does not exist"
TARBALL="$(cd "$(dirname "$TARBALL")" && pwd)/$(basename "$TARBALL")"
[ -f "$TARBALL.sha256" ] || die "$TARBALL.sha256 is missing: copy it with the tarball"
expected="$(awk '{print $1; exit}' "$TARBALL.sha256")"
actual="$(sha256sum "$TARBALL" | awk '{print $1}')"
[ "$actual" = "$expected" ] || die "$(basename "$TARBALL") is modified: its sha256 is $actual, \
$(basename "$TARBALL").sha256 says $expected: copy the tarball again"
if [ -n "$SHA256" ] && [ "$actual" != "$(printf '%s' "$SHA256" | tr 'A-F' 'a-f')" ]; then
  die "$(basename "$TARBALL") has sha256 $actual, not the --sha256 you gave ($SHA256): this is not the bundle that was built"
fi
say "$(basename "$TARBALL") matches its .sha256 ($actual)"

# This directory must be what the tarball holds: its manifest is the tarball's, byte for byte.
top="$(tar -tzf "$TARBALL" 2>/dev/null | head -n 1 || true)"
top="${top%%/*}"
tar -xzOf "$TARBALL" "$top/manifest.json" >"$TMP/manifest.json" 2>/dev/null \
  || die "$(basename "$TARBALL") has no $top/manifest.json: not a bundle tarball"
cmp -s "$TMP/manifest.json" "$BUNDLE/manifest.json" \
  || die "manifest.json is modified: it differs from the one in $(basename "$TARBALL"); unpack the tarball again"

# An armored key or keyring, as the binary keyring gpgv reads (gpg may be absent on a minimal Debian).
dearmor() {
  python3 - "$1" "$2" <<'PY'
import base64, sys
text = open(sys.argv[1], "rb").read()
if not text.lstrip().startswith(b"-----BEGIN PGP"):
    open(sys.argv[2], "wb").write(text)
    sys.exit(0)
out, body, state = b"", [], "outside"
for line in text.decode("ascii", "replace").splitlines():
    line = line.strip()
    if line.startswith("-----BEGIN PGP"):
        state, body = "headers", []
    elif line.startswith("-----END PGP"):
        out += base64.b64decode("".join(body))
        state = "outside"
    elif state == "headers":
        state = "body" if not line else "headers"
    elif state == "body" and line and not line.startswith("="):
        body.append(line)
open(sys.argv[2], "wb").write(out)
PY
}

if [ -n "$TRUSTED_KEY$KEYRING" ]; then
  [ -f "$BUNDLE/manifest.json.asc" ] || die "manifest.json.asc is missing: the bundle is not signed, so a key cannot \
vouch for it; build it with --sign-key, or give --sha256 instead"
  if [ -n "$KEYRING" ]; then
    [ -f "$KEYRING" ] || die "--keyring $KEYRING does not exist"
    keys="$KEYRING"
  else
    [ -f "$BUNDLE/keys/release.asc" ] || die "keys/release.asc is missing: give the release key with --keyring FILE"
    keys="$BUNDLE/keys/release.asc"
  fi
  what="$( [ -n "$KEYRING" ] && echo "a key of $KEYRING" || echo "the key in keys/release.asc")"
  # Debian 12's apt verifies with gpgv, Debian 13's with sqv (Sequoia): whichever this host has.
  if command -v gpgv >/dev/null; then
    dearmor "$keys" "$TMP/keyring.gpg"
    status="$(gpgv --status-fd 1 --keyring "$TMP/keyring.gpg" "$BUNDLE/manifest.json.asc" "$BUNDLE/manifest.json" \
      2>"$TMP/verify.err" || true)"
    # VALIDSIG <signing key fpr> <date> ... <primary key fpr>: the last field is the key a pin names.
    signer="$(printf '%s\n' "$status" | awk '$2 == "VALIDSIG" {print $NF; exit}')"
    subkey="$(printf '%s\n' "$status" | awk '$2 == "VALIDSIG" {print $3; exit}')"
  elif command -v sqv >/dev/null; then
    # sqv prints the fingerprint of each key that made a good signature.
    signer="$(sqv --keyring "$keys" "$BUNDLE/manifest.json.asc" "$BUNDLE/manifest.json" 2>"$TMP/verify.err" \
      | head -n 1 || true)"
    subkey="$signer"
  else
    die "neither gpgv nor sqv is installed (apt brings one of them on Debian): apt-get install gpgv"
  fi
  [ -n "$signer" ] || die "manifest.json.asc is not a valid signature of manifest.json by $what: \
$(tail -n 2 "$TMP/verify.err" | tr '\n' ' ')"
  if [ -n "$TRUSTED_KEY" ]; then
    pin="$(printf '%s' "$TRUSTED_KEY" | tr -d ' ' | tr 'a-f' 'A-F')"
    [ "$signer" = "$pin" ] || [ "$subkey" = "$pin" ] || die "manifest.json is signed by $signer, not by the pinned \
key $pin: refuse this bundle, or pin the right key"
  fi
  say "manifest.json is signed by $signer"
fi

# Every file the manifest lists, by its sha256; nothing unlisted outside registry/ (the bundle server checks the
# registry's blobs image by image when layer 01 serves the bundle).
python3 - "$BUNDLE" <<'PY' || exit 2
import hashlib, json, os, sys
root = sys.argv[1]
manifest = json.load(open(os.path.join(root, "manifest.json")))
if manifest.get("format") != "airgap.kubernetes/bundle" or manifest.get("format_version") != 1:
    sys.exit(f"install.sh: error: manifest.json is not a format 1 airgap.kubernetes bundle manifest")
problems, listed = [], manifest.get("files", {})
for rel, entry in sorted(listed.items()):
    path = os.path.join(root, rel)
    if os.path.islink(path) or not os.path.isfile(path):
        problems.append(f"{rel}: missing")
        continue
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != entry["sha256"]:
        problems.append(f"{rel}: modified (sha256 {digest.hexdigest()}, the manifest lists {entry['sha256']})")
for dirpath, dirnames, filenames in os.walk(root):
    rel_dir = os.path.relpath(dirpath, root)
    if rel_dir == ".":
        dirnames[:] = [d for d in dirnames if d != "registry"]
    for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
        rel = os.path.normpath(os.path.join(rel_dir, name))
        if rel not in listed and rel not in ("manifest.json", "manifest.json.asc"):
            problems.append(f"{rel}: unexpected (not in manifest.json)")
if problems:
    print("install.sh: error: the bundle does not match its manifest, refused:", file=sys.stderr)
    for line in problems:
        print(f"  {line}", file=sys.stderr)
    print("  fix: copy the bundle again and compare it with bundle.tar.gz.sha256", file=sys.stderr)
    sys.exit(2)
print(f"install.sh: {len(listed)} files match manifest.json")
PY

if [ "$CHECK_ONLY" = 1 ]; then
  say "the bundle checks; --check-only: nothing installed"
  exit 0
fi

# ----------------------------------------------------------------------------- what this host needs

[ "$(id -u)" = 0 ] || die "run as root: it installs Debian packages (sudo $0 ...)"
[ -f "$BUNDLE/install.json" ] || die "install.json is missing: the bundle was built with --no-wheelhouse; build it again with its wheelhouse"
# shellcheck disable=SC1091
. /etc/os-release
suite="${VERSION_CODENAME:-}"
arch="$(dpkg --print-architecture)"
packages_line="$(python3 - "$BUNDLE" "$suite" "$arch" <<'PY'
import json, os, sys
root, suite, arch = sys.argv[1:]
manifest = json.load(open(os.path.join(root, "manifest.json")))
config = json.load(open(os.path.join(root, "install.json")))
problems = []
if suite not in manifest["apt"]["suites"]:
    problems.append(f"this host runs Debian {suite or '(unknown)'}; the bundle's apt repo has {manifest['apt']['suites']}: "
                    f"build the bundle with --os for this release")
if arch not in manifest["arches"]:
    problems.append(f"this host is {arch}; the bundle carries {manifest['arches']}: build it with --arch {arch}")
want = config["python"].get(suite)
have = "%d.%d" % sys.version_info[:2]
if want and want != have:
    problems.append(f"this host's python3 is {have}; the wheelhouse is for {want} on {suite}")
if problems:
    sys.exit("install.sh: error: " + "; ".join(problems))
print(" ".join(config["apt_packages"]))
PY
)" || exit 2
read -r -a packages <<<"$packages_line"

missing=()
for pkg in "${packages[@]}"; do
  [ "$(dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null)" = "install ok installed" ] || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing ${missing[*]} from the bundle's apt repo ($suite)"
  mkdir -p "$TMP/lists/partial" "$TMP/parts"
  echo "deb [signed-by=$BUNDLE/keys/bundle-apt.asc] file:$BUNDLE/apt $suite main" >"$TMP/sources.list"
  # Only the bundle's repo, with its own lists: the host's sources (unreachable here) are neither read nor changed.
  apt_opts=(-o "Dir::Etc::SourceList=$TMP/sources.list" -o "Dir::Etc::SourceParts=$TMP/parts"
            -o "Dir::State::Lists=$TMP/lists" -o "APT::Sandbox::User=root" -q)
  apt-get "${apt_opts[@]}" update >"$TMP/apt.log" 2>&1 || { cat "$TMP/apt.log" >&2; die "apt-get update from the bundle's repo failed (above)"; }
  DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y --no-install-recommends "${missing[@]}" \
    >>"$TMP/apt.log" 2>&1 || { cat "$TMP/apt.log" >&2; die "apt-get install ${missing[*]} from the bundle failed (above)"; }
else
  say "${packages[*]}: installed already"
fi

# ----------------------------------------------------------------------------- the venv, the collection, run.sh

VENV="$PREFIX/venv"
wheels_print="$(python3 - "$BUNDLE" <<'PY'
import hashlib, json, os, sys
files = json.load(open(os.path.join(sys.argv[1], "manifest.json")))["files"]
entries = sorted((k, v["sha256"]) for k, v in files.items() if k.startswith("wheelhouse/"))
print(hashlib.sha256(json.dumps(entries).encode()).hexdigest())
PY
)"
if [ -x "$VENV/bin/ansible-playbook" ] && [ "$(cat "$VENV/.airgap-wheelhouse" 2>/dev/null)" = "$wheels_print" ]; then
  say "venv $VENV is from this wheelhouse already"
else
  say "making venv $VENV from the wheelhouse (pip --no-index)"
  rm -rf "$VENV"
  mkdir -p "$PREFIX"
  python3 -m venv "$VENV"
  # The host's pip configuration (an index it cannot reach) is left out: the wheelhouse is the only source.
  PIP_CONFIG_FILE=/dev/null "$VENV/bin/pip" install -q --disable-pip-version-check --no-index --only-binary=:all: \
    --find-links "$BUNDLE/wheelhouse" -r "$BUNDLE/wheelhouse/requirements.txt" \
    || die "pip could not install the wheelhouse into $VENV (above)"
  echo "$wheels_print" >"$VENV/.airgap-wheelhouse"
fi

collection="$(find "$BUNDLE/collection" -maxdepth 1 -name '*.tar.gz' | head -n 1)"
[ -n "$collection" ] || die "collection/ has no tarball: the bundle was built with --no-collection"
collection_print="$(sha256sum "$collection" | awk '{print $1}')"
COLLECTIONS="$PREFIX/collections"
INSTALLED="$COLLECTIONS/ansible_collections/airgap/kubernetes"
if [ -f "$INSTALLED/run.sh" ] && [ "$(cat "$COLLECTIONS/.airgap-collection" 2>/dev/null)" = "$collection_print" ]; then
  say "collection $(basename "$collection") is installed already"
else
  say "installing collection $(basename "$collection") into $COLLECTIONS"
  # No dependencies from Galaxy (unreachable): the ansible package in the venv carries them.
  ANSIBLE_COLLECTIONS_PATH="$COLLECTIONS" "$VENV/bin/ansible-galaxy" collection install --no-deps --force \
    -p "$COLLECTIONS" "$collection" >"$TMP/galaxy.log" 2>&1 || { cat "$TMP/galaxy.log" >&2; die "ansible-galaxy could not install the collection (above)"; }
  echo "$collection_print" >"$COLLECTIONS/.airgap-collection"
fi

launcher="#!/bin/sh
# Written by the bundle's install.sh: the installed collection's run.sh, with the venv made from the wheelhouse.
AIRGAP_VENV=\"$VENV\" exec bash \"$INSTALLED/run.sh\" \"\$@\""
if [ "$(cat "$PREFIX/run.sh" 2>/dev/null)" != "$launcher" ]; then
  printf '%s\n' "$launcher" >"$PREFIX/run.sh"
  chmod 0755 "$PREFIX/run.sh"
fi

say "installed: $("$VENV/bin/ansible" --version | head -n 1), airgap.kubernetes in $INSTALLED"
cat <<EOF

Next: write an inventory (start from $INSTALLED/inventory/sample), with
  bundle_server_bundle_upload: $TARBALL
  bundle_trusted_keys: [<the release key's fingerprint>]   (or bundle_sha256: $actual)
then deploy:
  $PREFIX/run.sh deploy-cluster -i <inventory> --bundle $BUNDLE
EOF
