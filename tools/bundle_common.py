"""What the parts of build-bundle share: where it caches, its errors, and how it runs a tool."""
from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

CACHE = Path(os.environ.get("AIRGAP_CACHE", Path.home() / ".cache" / "airgap-kubernetes"))


class BuildError(Exception):
    """build-bundle cannot go on; the message names the artifact or step and the fix."""


class ChecksumError(BuildError):
    """A download does not hash to the catalog's sha256."""


def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([str(c) for c in cmd], check=True, text=True, capture_output=True, **kw)
    except FileNotFoundError:
        raise BuildError(f"{cmd[0]} is not installed: apt-get install {_PROVIDERS.get(str(cmd[0]), cmd[0])}") from None
    except subprocess.CalledProcessError as exc:
        raise BuildError(f"{' '.join(str(c) for c in cmd)} failed ({exc.returncode}): "
                         f"{(exc.stderr or exc.stdout or '').strip()[-2000:]}") from None


_PROVIDERS = {"skopeo": "skopeo", "docker-registry": "docker-registry", "apt-ftparchive": "apt-utils",
              "gpg": "gnupg", "apt-get": "apt"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
