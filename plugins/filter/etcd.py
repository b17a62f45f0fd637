"""Filter plugin etcd_removal: a thin shell over plugins/module_utils/etcd_members.py; its documentation is in
etcd_removal.yml beside this file."""
from __future__ import annotations

from ansible_collections.airgap.kubernetes.plugins.module_utils.etcd_members import etcd_removal


class FilterModule:
    def filters(self):
        return {"etcd_removal": etcd_removal}
