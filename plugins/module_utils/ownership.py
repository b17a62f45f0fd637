"""Owner and group names to ids, for the modules that write files (config_files, unpack_release)."""
from __future__ import annotations

import grp
import pwd


def ids(owner: str, group: str) -> tuple[int, int]:
    """(uid, gid) of an owner and a group, each a name or a number; a ValueError names one the host lacks."""
    try:
        uid = int(owner) if owner.isdigit() else pwd.getpwnam(owner).pw_uid
        gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError as exc:
        raise ValueError(f"no such user or group on this host: {exc.args[0]}") from None
    return uid, gid
