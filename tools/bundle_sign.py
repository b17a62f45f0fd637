"""build-bundle's release signature: the site's long-lived OpenPGP key (gpg) signs manifest.json and the apt repo."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ansible_collections.airgap.kubernetes.tools.bundle_common import BuildError, run


@dataclass(frozen=True)
class SigningKey:
    """A gpg secret key that can sign: what --sign-key named, resolved to its primary fingerprint."""

    fingerprint: str                      # the primary key's: what sites pin
    homedir: Optional[Path] = None        # GNUPGHOME holding it; None for gpg's default ($GNUPGHOME, ~/.gnupg)
    passphrase_file: Optional[Path] = None

    def gpg(self, *args: str) -> list:
        cmd = ["gpg", "--batch", "--yes", "--no-tty"]
        if self.homedir:
            cmd += ["--homedir", str(self.homedir)]
        if self.passphrase_file:
            cmd += ["--pinentry-mode", "loopback", "--passphrase-file", str(self.passphrase_file)]
        return cmd + list(args)


def signing_key(key: str, homedir: Optional[Path] = None, passphrase_file: Optional[Path] = None) -> SigningKey:
    """Resolve --sign-key (a fingerprint, or any name gpg takes) to one secret key that can sign; BuildError if not."""
    probe = SigningKey("", homedir, None)
    where = f"gpg's keyring in {homedir}" if homedir else "gpg's default keyring ($GNUPGHOME or ~/.gnupg)"
    try:
        listing = run(probe.gpg("--with-colons", "--fingerprint", "--list-secret-keys", "--", key)).stdout
    except BuildError as exc:
        if "is not installed" in str(exc):
            raise
        raise BuildError(f"--sign-key {key}: no secret key of that name in {where}: list them with "
                         f"gpg --list-secret-keys, or give --sign-homedir") from None
    primaries, fingerprint, usable = [], None, False
    for line in listing.splitlines():
        fields = line.split(":")
        if fields[0] == "sec":
            usable = "S" in fields[11] and fields[1] not in ("r", "e", "i")
            fingerprint = "pending"
        elif fields[0] == "fpr" and fingerprint == "pending":
            fingerprint = fields[9]
            primaries.append((fingerprint, usable))
    if len(primaries) != 1:
        names = ", ".join(f for f, _ in primaries)
        raise BuildError(f"--sign-key {key} names {len(primaries)} secret keys in {where} ({names}): "
                         "give the full fingerprint of the release key")
    fingerprint, usable = primaries[0]
    if not usable:
        raise BuildError(f"--sign-key {key} ({fingerprint}) cannot sign (expired, revoked or without a signing "
                         "(sub)key): extend it (gpg --quick-set-expire) or make a new release key and pin it")
    return SigningKey(fingerprint, homedir, passphrase_file)


def public_key(key: SigningKey) -> str:
    """The armored public half of the release key (with its subkeys)."""
    return run(key.gpg("--armor", "--export", key.fingerprint)).stdout


def detach_sign(key: SigningKey, path: Path, out: Path) -> None:
    """out: an armored detached signature of path, made atomically."""
    tmp = out.with_name(out.name + ".tmp")
    run(key.gpg("--local-user", key.fingerprint, "--armor", "--detach-sign", "-o", str(tmp), str(path)))
    os.replace(tmp, out)


def clear_sign(key: SigningKey, path: Path, out: Path) -> None:
    """out: path clear-signed (apt's InRelease)."""
    run(key.gpg("--local-user", key.fingerprint, "--clearsign", "-o", str(out), str(path)))
