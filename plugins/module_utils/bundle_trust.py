"""Bundle trust: checks manifest.json's OpenPGP signature with gpgv (or sqv) against the pinned release keys only,
in an unpacked bundle or straight from its tarball."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

from ansible_collections.airgap.kubernetes.plugins.module_utils.bundle import (FIX, MANIFEST, RELEASE_KEY, SIGNATURE,
                                                                             BundleError)

PathLike = Union[str, os.PathLike]
_BEGIN, _END = "-----BEGIN PGP PUBLIC KEY BLOCK-----", "-----END PGP PUBLIC KEY BLOCK-----"
_PUBLIC_KEY, _PUBLIC_SUBKEY = 6, 14
# What the signature check reads, in this order at the head of every tarball build-bundle packs (docs/bundle-format.md):
# a bundle host checks the signature from these alone, before it unpacks anything.
TRUST_MEMBERS = (MANIFEST, SIGNATURE, RELEASE_KEY)
# A real manifest is a few MB; a larger member is refused before it fills the disk of the host that checks it.
TRUST_MEMBER_LIMIT = 64 << 20
PIN_FIX = ("pin the site's release key in bundle_trusted_keys (its fingerprint: gpg --fingerprint <key>), "
           "see docs/build-bundle.md")


class TrustError(BundleError):
    """The bundle's signature does not come from a pinned key; the message names the signer, the pins and the fix."""


@dataclass
class Anchors:
    """The pinned keys: every fingerprint that may sign (primary keys and their subkeys), and the key material
    given with the pins (armored text or files), as one binary keyring for gpgv."""

    fingerprints: set = field(default_factory=set)
    keyring: bytes = b""
    shown: list = field(default_factory=list)  # one primary fingerprint per pin, for messages


def _packets(data: bytes, source: str) -> Iterator[tuple[int, bytes, bytes]]:
    """(tag, body, whole packet) for each OpenPGP packet of binary key data (RFC 4880 section 4.2)."""
    i = 0
    while i < len(data):
        start, head = i, data[i]
        if not head & 0x80:
            raise TrustError(f"{source} is not OpenPGP key data (byte {i}): give an exported public key "
                             "(gpg --armor --export <fingerprint>) or its fingerprint")
        if head & 0x40:
            tag, first = head & 0x3F, data[i + 1]
            if first < 192:
                length, i = first, i + 2
            elif first < 224:
                length, i = ((first - 192) << 8) + data[i + 2] + 192, i + 3
            elif first == 255:
                length, i = int.from_bytes(data[i + 2:i + 6], "big"), i + 6
            else:
                raise TrustError(f"{source} has a partial-length packet, which key data never has: re-export the key")
        else:
            tag, size = (head >> 2) & 0x0F, {0: 1, 1: 2, 2: 4}.get(head & 3)
            if size is None:
                raise TrustError(f"{source} has a packet of indeterminate length: re-export the key")
            length, i = int.from_bytes(data[i + 1:i + 1 + size], "big"), i + 1 + size
        if i + length > len(data):
            raise TrustError(f"{source} is truncated: re-export the key")
        yield tag, data[i:i + length], data[start:i + length]
        i += length


def _fingerprint(body: bytes, source: str) -> str:
    if not body or body[0] != 4:
        raise TrustError(f"{source} holds an OpenPGP v{body[0] if body else '?'} key; gpgv on Debian checks v4 keys: "
                         "make the release key with Debian's gpg (docs/build-bundle.md)")
    return hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body).hexdigest().upper()  # noqa: S324 (v4 fpr)


def keys(data: bytes, source: str) -> list[tuple[str, set, bytes]]:
    """Each transferable public key in binary key data: (primary fingerprint, all its fingerprints, its bytes)."""
    found: list[tuple[str, set, bytes]] = []
    for tag, body, raw in _packets(data, source):
        if tag == _PUBLIC_KEY:
            fpr = _fingerprint(body, source)
            found.append((fpr, {fpr}, raw))
        elif not found:
            raise TrustError(f"{source} does not start with a public key: give the public key, not a secret key "
                             "or a signature (gpg --armor --export <fingerprint>)")
        else:
            primary, fprs, blob = found[-1]
            if tag == _PUBLIC_SUBKEY:
                fprs.add(_fingerprint(body, source))
            found[-1] = (primary, fprs, blob + raw)
    if not found:
        raise TrustError(f"{source} holds no public key: export one with gpg --armor --export <fingerprint>")
    return found


def dearmor(text: str, source: str) -> bytes:
    """The binary key data of every ASCII-armored public key block in text (gpgv reads only binary keyrings)."""
    blocks = re.findall(re.escape(_BEGIN) + r"(.*?)" + re.escape(_END), text, re.S)
    if not blocks:
        raise TrustError(f"{source} has no '{_BEGIN}' line: give the armored public key (gpg --armor --export)")
    data = b""
    for block in blocks:
        lines = [line.strip() for line in block.strip("\r\n").splitlines()]
        if "" in lines:  # armor headers (Comment: ...) end at the first blank line
            lines = lines[lines.index("") + 1:]
        b64 = "".join(line for line in lines if line and not line.startswith("=") and ": " not in line)
        try:
            data += base64.b64decode(b64, validate=True)
        except ValueError as e:
            raise TrustError(f"{source} is not valid armor ({e}): paste the key block as gpg printed it, "
                             "in a YAML block scalar (|)") from e
    return data


def _normal_fingerprint(entry: str) -> Optional[str]:
    hexed = re.sub(r"\s+", "", entry).upper()
    hexed = hexed[2:] if hexed.startswith("0X") else hexed
    return hexed if re.fullmatch(r"[0-9A-F]+", hexed) else None


def anchors(trusted_keys: Iterable[str]) -> Anchors:
    """Parse bundle_trusted_keys: each entry a 40-hex fingerprint, an armored public key, or the absolute path of a
    public key file (armored or binary) on the host that verifies. Raises TrustError naming a bad entry."""
    result = Anchors()
    for n, entry in enumerate(trusted_keys, 1):
        entry = str(entry).strip()
        source = f"bundle_trusted_keys entry {n}"
        hexed = _normal_fingerprint(entry)
        if hexed is not None:
            if len(hexed) != 40:
                raise TrustError(f"{source} ({entry}) is {len(hexed)} hex digits: a key id is no pin (anyone can make a "
                                 "key with the same id); give the full 40-hex fingerprint (gpg --fingerprint)")
            result.fingerprints.add(hexed)
            result.shown.append(hexed)
            continue
        if _BEGIN in entry:
            data = dearmor(entry, source)
        elif entry.startswith("/"):
            source = f"{source} ({entry})"
            try:
                raw = Path(entry).read_bytes()
            except OSError as e:
                raise TrustError(f"{source} cannot be read ({e.strerror}): put the public key file there, "
                                 "or pin its fingerprint instead") from e
            data = dearmor(raw.decode("ascii", "replace"), source) if _BEGIN.encode() in raw else raw
        else:
            raise TrustError(f"{source} ({entry[:40]!r}) is neither a 40-hex fingerprint, nor an armored public key, "
                             "nor an absolute path of a key file: fix the entry")
        for primary, fprs, blob in keys(data, source):
            result.fingerprints |= fprs
            result.shown.append(primary)
            result.keyring += blob
    return result


def _shipped_keyring(root: Path, pinned: set) -> bytes:
    """The keys of the bundle's keys/release.asc whose fingerprint is pinned; the rest is never shown to gpgv."""
    path = root / RELEASE_KEY
    try:
        if not stat.S_ISREG(path.lstat().st_mode):
            return b""
        found = keys(dearmor(path.read_text(errors="replace"), RELEASE_KEY), RELEASE_KEY)
    except (OSError, TrustError):
        return b""  # an unusable shipped key counts as no key: the signature check then names the signer
    return b"".join(blob for _, fprs, blob in found if fprs & pinned)


def _status(out: str) -> dict:
    lines: dict = {}
    for line in out.splitlines():
        if line.startswith("[GNUPG:] "):
            word, *args = line[9:].split()
            lines.setdefault(word, []).append(args)
    return lines


def _not_pinned(manifest: Union[Path, str], signer: str, pinned: str) -> TrustError:
    return TrustError(f"{manifest} is signed by key {signer}, which is not pinned (bundle_trusted_keys pins {pinned}): "
                      f"this bundle was not signed by your site's release key. If {signer} is your new release key, "
                      "add its fingerprint to bundle_trusted_keys; otherwise do not use this bundle")


def _changed(manifest: Union[Path, str], key: str = "") -> TrustError:
    return TrustError(f"{manifest} does not match its signature{' by key ' + key if key else ''}: it was changed after "
                      "signing. Re-copy the bundle from the medium; if that does not help, the medium was tampered "
                      "with: do not use it")


def _unreadable(tool: str, signature: Union[Path, str], proc: subprocess.CompletedProcess) -> TrustError:
    return TrustError(f"{tool} could not check {signature} ({proc.returncode}): {proc.stderr.strip()[-500:]}: "
                      "re-copy the bundle from the medium")


def _verify_with_sqv(sqv: str, ring: Path, signature: Path, manifest: Path, fingerprints: set, pinned: str,
                     shown: dict) -> str:
    """verify_signature's check where the host has sqv and no gpgv: sqv prints the key of each good signature."""
    proc = subprocess.run([sqv, "--keyring", str(ring), str(signature), str(manifest)], capture_output=True,
                          text=True, timeout=120)
    signers = [line.strip().upper() for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode == 0 and len(signers) == 1 and signers[0] in fingerprints:
        return signers[0]
    missing = re.search(r"Missing key ([0-9A-Fa-f]{40})", proc.stderr)
    if missing:
        raise _not_pinned(shown[MANIFEST], missing[1].upper(), pinned)
    if "manipulated" in proc.stderr or "BAD signature" in proc.stderr:
        raise _changed(shown[MANIFEST])
    raise _unreadable("sqv", shown[SIGNATURE], proc)


def verify_signature(bundle_dir: PathLike, trusted_keys: Iterable[str], gpgv: str = "gpgv", sqv: str = "sqv",
                     shown_as: Optional[str] = None) -> str:
    """Check manifest.json.asc with gpgv (else sqv) against the pinned keys only (a keyring made for this check;
    never the host's). Returns the signer's primary fingerprint; raises TrustError naming the signer, the pins and
    the fix. shown_as: what the messages call the bundle (its tarball) when bundle_dir is a scratch copy of its
    trust members."""
    root = Path(bundle_dir)
    # The messages name what the operator has: the files of the unpacked bundle, or the members of its tarball.
    shown = {name: f"{name} in {shown_as}" if shown_as else str(root / name) for name in TRUST_MEMBERS}
    pins = anchors(trusted_keys)
    if not pins.shown:
        raise TrustError(f"no key is pinned, so no signature can be checked: {PIN_FIX}")
    pinned = ", ".join(pins.shown)
    manifest, signature = root / MANIFEST, root / SIGNATURE
    if not manifest.is_file():
        raise BundleError(f"{manifest} does not exist: this is not an unpacked bundle")
    if not os.path.lexists(signature):
        raise TrustError(f"{shown_as or root} is unsigned (no {SIGNATURE}), and bundle_trusted_keys pins {pinned}: "
                         "build the "
                         f"bundle with `run.sh build-bundle --sign-key <release key>`, or copy {SIGNATURE} too if "
                         "the copy left it out")
    if not stat.S_ISREG(signature.lstat().st_mode):
        raise TrustError(f"{shown[SIGNATURE]} is not a regular file: re-copy the bundle from the medium")
    home = tempfile.mkdtemp(prefix="agv-")
    try:
        ring = Path(home) / "pinned.gpg"
        ring.write_bytes(pins.keyring + _shipped_keyring(root, pins.fingerprints))
        # Debian 12's apt verifies with gpgv, Debian 13's with sqv (Sequoia; a minimal trixie has no gpgv).
        if not shutil.which(gpgv) and shutil.which(sqv):
            return _verify_with_sqv(sqv, ring, signature, manifest, pins.fingerprints, pinned, shown)
        try:
            proc = subprocess.run([gpgv, "--homedir", home, "--status-fd", "1", "--keyring", str(ring),
                                   str(signature), str(manifest)], capture_output=True, text=True, timeout=120)
        except FileNotFoundError:
            raise TrustError(f"neither {gpgv} nor {sqv} is installed here (apt brings one of them): "
                             "apt-get install gpgv") from None
    finally:
        shutil.rmtree(home, ignore_errors=True)
    status = _status(proc.stdout)
    if len(status.get("NEWSIG", [])) != 1:
        raise TrustError(f"{shown[SIGNATURE]} holds {len(status.get('NEWSIG', []))} signatures, build-bundle writes "
                         "one: "
                         "re-copy the bundle from the medium")
    for word, why in (("EXPKEYSIG", "an expired key"), ("REVKEYSIG", "a revoked key"), ("EXPSIG", "an expired signature")):
        if word in status:
            raise TrustError(f"{shown[MANIFEST]} is signed with {why} ({status[word][0][0]}): sign the bundle again "
                             "with a "
                             f"valid release key and pin it (pinned: {pinned})")
    if "BADSIG" in status:
        raise _changed(shown[MANIFEST], status["BADSIG"][0][0])
    if "ERRSIG" in status:
        args = status["ERRSIG"][0]
        signer = args[6] if len(args) > 6 and args[6] != "-" else f"with id {args[0]}"
        raise _not_pinned(shown[MANIFEST], signer, pinned)
    valid = status.get("VALIDSIG", [])
    if proc.returncode != 0 or len(valid) != 1:
        raise _unreadable("gpgv", shown[SIGNATURE], proc)
    signing, primary = valid[0][0], valid[0][-1]
    if signing not in pins.fingerprints and primary not in pins.fingerprints:
        raise _not_pinned(shown[MANIFEST], primary, pinned)
    return primary


def establish_trust(bundle_dir: PathLike, trusted_keys: Iterable[str], checksum_verified: bool) -> Optional[str]:
    """What vouches for the bundle from outside it: the pinned keys' signature (returns the signer), else the
    tarball's sha256 as the operator gave it (checksum_verified; returns None). Raises TrustError when neither."""
    trusted_keys = list(trusted_keys or [])
    if trusted_keys:
        return verify_signature(bundle_dir, trusted_keys)
    if checksum_verified:
        return None
    raise TrustError(f"bundle {bundle_dir}: nothing outside the bundle vouches for it (no key in bundle_trusted_keys, "
                     "no bundle_sha256 checked against its tarball), and a bundle never vouches for itself: the "
                     f".sha256 beside the tarball travels with it. Fix: {PIN_FIX}; or give the tarball and set "
                     "bundle_sha256 to its sha256 as you got it out of band")


def _in_bundle(member_name: str) -> str:
    """A tarball member's path inside the bundle: without its one top-level directory, as tar --strip-components=1."""
    parts = [p for p in member_name.split("/") if p not in ("", ".")]
    return "/".join(parts[1:])


def _signed_by(manifest: Path) -> Optional[str]:
    """The signer the manifest records, or "?" when it cannot be read: only a hint of whether a signature follows."""
    try:
        return json.loads(manifest.read_text()).get("signed_by")
    except (OSError, ValueError, AttributeError):
        return "?"


def extract_trust_members(archive: PathLike, dest: PathLike) -> bool:
    """Copy manifest.json, manifest.json.asc and keys/release.asc (those it holds) out of a bundle tarball into dest,
    and nothing else. build-bundle packs them first, so reading stops at the first other member; in a tarball packed
    otherwise (before build-bundle did so, or by hand) they are looked for through the whole archive, which is read
    but never unpacked. Returns whether they came first; raises BundleError for a tarball that cannot be read, holds
    no manifest, or whose trust member is not a regular file or is too large."""
    dest, found, leading = Path(dest), set(), True
    try:
        with tarfile.open(archive, "r|*") as tar:
            for member in tar:
                name = _in_bundle(member.name)
                if name not in TRUST_MEMBERS:
                    # Early stop needs the signature in the head too, unless the manifest says it was never signed:
                    # a hand-packed tarball may hold it further on, and it must not be refused as unsigned.
                    if leading and MANIFEST in found and (
                            SIGNATURE in found or _signed_by(dest / MANIFEST) is None):
                        return True
                    leading = False
                    continue
                if not member.isreg():
                    raise BundleError(f"{name} in {archive} is not a regular file (a link or device): this is not "
                                      f"a tarball build-bundle made; {FIX}")
                if member.size > TRUST_MEMBER_LIMIT:
                    raise BundleError(f"{name} in {archive} is {member.size} bytes, more than any bundle's "
                                      f"({TRUST_MEMBER_LIMIT >> 20} MiB): this is not a tarball build-bundle made; "
                                      f"{FIX}")
                target = dest / name
                target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                source = tar.extractfile(member)
                with source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out)
                found.add(name)  # a later copy of the same name replaces it, as it would when tar unpacks
    except FileNotFoundError:
        raise BundleError(f"{archive} does not exist: copy the bundle tarball there, or set the path") from None
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise BundleError(f"{archive} cannot be read as a tarball ({e}): {FIX}") from None
    if MANIFEST not in found:
        raise BundleError(f"{archive} holds no {MANIFEST} under its top-level directory: this is not a bundle "
                          "tarball (docs/bundle-format.md); copy the bundle.tar.gz build-bundle wrote")
    return leading


def verify_archive_signature(archive: PathLike, trusted_keys: Iterable[str], gpgv: str = "gpgv",
                             sqv: str = "sqv") -> tuple[str, bool]:
    """verify_signature for a bundle tarball, before anything of it is unpacked: its trust members are copied into
    a private scratch directory (mode 0700, removed after) and checked there; the messages name the tarball.
    Returns (the signer's primary fingerprint, whether the trust members came first in the tarball)."""
    scratch = tempfile.mkdtemp(prefix="agv-archive-")
    try:
        first = extract_trust_members(archive, scratch)
        return verify_signature(scratch, trusted_keys, gpgv, sqv, shown_as=str(archive)), first
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
