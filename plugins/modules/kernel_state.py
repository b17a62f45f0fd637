#!/usr/bin/python
"""Ansible module: the kernel state Kubernetes needs on a node, read and set in one run."""
from __future__ import annotations

DOCUMENTATION = r"""
---
module: kernel_state
short_description: Load kernel modules, set kernel parameters and turn swap off, in one module run
description:
  - Loads each of O(modules) whose marker path is missing (a module built into the kernel has no C(modprobe) to
    run, so its presence is judged by the marker, not by C(lsmod)).
  - Sets each of O(sysctl) whose running value differs (whitespace runs compared as one space, so a port range
    matches). With O(skip_readonly), a parameter that C(/proc/sys) refuses because it is read-only (a container)
    is returned in RV(readonly) instead of failing the task.
  - With O(swap_off), turns swap off now (C(swapoff -a)), comments out the swap entries of C(/etc/fstab), and masks
    C(swap.target) so no swap unit starts at boot.
  - The boot-time files (C(/etc/modules-load.d), C(/etc/sysctl.d)) are written by the caller; this module sets the
    running state. Before it, the role ran six tasks for this, two of them a module run per item.
  - Supports check mode.
version_added: 0.1.0
author: airgap.kubernetes maintainers
options:
  modules:
    description: Kernel modules, each with C(name) and C(marker), the path that exists once it is loaded.
    type: list
    elements: dict
    default: []
  sysctl: {description: Kernel parameters and their values., type: dict, default: {}}
  skip_readonly: {description: Report a parameter on a read-only /proc/sys instead of failing., type: bool, default: false}
  swap_off: {description: Turn swap off now and at boot., type: bool, default: true}
"""

EXAMPLES = r"""
- name: Load the kernel modules, set the kernel parameters and turn swap off
  airgap.kubernetes.kernel_state:
    modules: [{name: br_netfilter, marker: /proc/sys/net/bridge}]
    sysctl: {net.ipv4.ip_forward: 1}
"""

RETURN = r"""
loaded: {description: The modules loaded., returned: always, type: list, elements: str}
set: {description: The parameters set, with C(key), C(value) and C(was)., returned: always, type: list, elements: dict}
readonly:
  description: The parameters left unset on a read-only /proc/sys, with C(key), C(value) and C(now).
  returned: always
  type: list
  elements: dict
swap: {description: What was done about swap, one line per action., returned: always, type: list, elements: str}
"""

import os
import re

FSTAB = "/etc/fstab"
# A swap line of fstab that is not a comment: "<device> <mountpoint> swap <options>...".
SWAP_ENTRY = re.compile(r"^(\s*[^#\s]\S*\s+\S+\s+swap\s.*)$")
SWAP_MARK = "  # swap off for Kubernetes (airgap.kubernetes)"
READONLY = re.compile(r"read-only file system|permission denied", re.IGNORECASE)


def normal(value) -> str:
    """A parameter's value as sysctl -n prints it, whitespace runs made one space."""
    return " ".join(str(value).split())


def sysctl_path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


def fstab_without_swap(text: str) -> tuple[str, int]:
    """fstab's text with each active swap entry commented out, and how many there were."""
    lines, count = [], 0
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\n")
        if SWAP_ENTRY.match(body):
            count += 1
            line = f"# {body}{SWAP_MARK}" + ("\n" if line.endswith("\n") else "")
        lines.append(line)
    return "".join(lines), count


def load_modules(module, wanted: list) -> list:
    loaded = []
    for item in wanted:
        name = item["name"]
        if os.path.exists(item.get("marker") or f"/sys/module/{name}"):
            continue
        loaded.append(name)
        if not module.check_mode:
            rc, _, err = module.run_command(["modprobe", name])
            if rc != 0:
                raise ValueError(f"modprobe {name} failed: {err.strip()}: install the kernel's modules package, "
                                 f"or remove {name} from bootstrap_os_kernel_modules if this kernel has it built in")
    return loaded


def set_parameters(module, wanted: dict, skip_readonly: bool) -> tuple[list, list]:
    changed, readonly = [], []
    for key, value in wanted.items():
        path = sysctl_path(key)
        try:
            with open(path, encoding="utf-8") as fh:
                now = normal(fh.read())
        except FileNotFoundError:
            raise ValueError(f"kernel parameter {key} does not exist ({path}): load the module that provides it "
                             "(bootstrap_os_kernel_modules) or remove it from bootstrap_os_sysctl") from None
        if now == normal(value):
            continue
        if module.check_mode:
            changed.append({"key": key, "value": normal(value), "was": now})
            continue
        rc, _, err = module.run_command(["sysctl", "-w", f"{key}={value}"])
        if rc == 0:
            changed.append({"key": key, "value": normal(value), "was": now})
        elif skip_readonly and READONLY.search(err):
            readonly.append({"key": key, "value": normal(value), "now": now})
        else:
            raise ValueError(f"sysctl -w {key}={value} failed: {err.strip()}")
    return changed, readonly


def swap_off(module) -> list:
    done = []
    rc, out, err = module.run_command(["swapon", "--show=NAME", "--noheadings"])
    if rc != 0:
        raise ValueError(f"swapon --show failed: {err.strip()}")
    if out.strip():
        done.append("swap turned off")
        if not module.check_mode:
            module.run_command(["swapoff", "-a"], check_rc=True)
    if os.path.isfile(FSTAB):
        with open(FSTAB, encoding="utf-8") as fh:
            text = fh.read()
        new, count = fstab_without_swap(text)
        if count:
            done.append(f"{count} fstab swap entries commented out")
            if not module.check_mode:
                tmp = FSTAB + ".airgap-tmp"
                with open(tmp, "w", encoding="utf-8") as fh:
                    fh.write(new)
                st = os.stat(FSTAB)
                os.chmod(tmp, st.st_mode & 0o7777)
                os.chown(tmp, st.st_uid, st.st_gid)
                os.replace(tmp, FSTAB)
    _, state, _ = module.run_command(["systemctl", "is-enabled", "swap.target"])
    if state.strip() != "masked":
        done.append("swap.target masked")
        if not module.check_mode:
            module.run_command(["systemctl", "mask", "swap.target"], check_rc=True)
    return done


def main() -> None:
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(
        argument_spec={
            "modules": {"type": "list", "elements": "dict", "default": []},
            "sysctl": {"type": "dict", "default": {}},
            "skip_readonly": {"type": "bool", "default": False},
            "swap_off": {"type": "bool", "default": True},
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        loaded = load_modules(module, p["modules"])
        changed, readonly = set_parameters(module, p["sysctl"], p["skip_readonly"])
        swap = swap_off(module) if p["swap_off"] else []
    except (OSError, ValueError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=bool(loaded or changed or swap), loaded=loaded, set=changed, readonly=readonly,
                     swap=swap)


if __name__ == "__main__":
    main()
