"""Filter plugins registry_mirrors and mirror_repository: thin shells over the resolver's registry mirror rules.

Their documentation lives beside this file, one YAML file per filter, where ansible-doc finds it.
"""
from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.airgap.kubernetes.plugins.module_utils import resolver


def registry_mirrors(catalog, config, extra=None, mode=None):
    try:
        return [m.to_dict() for m in resolver.registry_mirrors(catalog, config, mode, extra or ())]
    except resolver.CatalogError as exc:
        raise AnsibleFilterError(str(exc)) from None


def mirror_repository(repository, config, mode=None):
    try:
        return resolver.mirror_repository(str(repository), config, mode)
    except resolver.CatalogError as exc:
        raise AnsibleFilterError(str(exc)) from None


class FilterModule:
    def filters(self):
        return {"registry_mirrors": registry_mirrors, "mirror_repository": mirror_repository}
