"""The kernel_state module's decisions that need no kernel: which fstab lines are swap entries, and when a running
parameter already holds its wanted value. Its effect on real hosts (modules loaded, parameters set, swap off and
masked, a second run unchanged) is the molecule bootstrap_os scenario's."""
from __future__ import annotations

from ansible_collections.airgap.kubernetes.plugins.modules import kernel_state as ks

FSTAB = """# /etc/fstab
UUID=1234 / ext4 errors=remount-ro 0 1
/dev/sda2 none swap sw 0 0
  /swapfile none swap defaults 0 0
# /dev/sdb1 none swap sw 0 0
tmpfs /tmp tmpfs defaults 0 0
"""


def test_active_swap_entries_are_commented_out_once():
    text, count = ks.fstab_without_swap(FSTAB)
    assert count == 2
    assert "# /dev/sda2 none swap sw 0 0  # swap off for Kubernetes (airgap.kubernetes)\n" in text
    assert "#   /swapfile none swap defaults 0 0  # swap off for Kubernetes (airgap.kubernetes)\n" in text
    assert "UUID=1234 / ext4 errors=remount-ro 0 1\n" in text and "tmpfs /tmp tmpfs defaults 0 0\n" in text
    assert ks.fstab_without_swap(text) == (text, 0)


def test_values_compare_as_sysctl_prints_them():
    assert ks.normal("32768\t60999\n") == ks.normal("32768 60999") == "32768 60999"
    assert ks.normal(1) == "1"
    assert ks.sysctl_path("net.bridge.bridge-nf-call-iptables") == "/proc/sys/net/bridge/bridge-nf-call-iptables"
