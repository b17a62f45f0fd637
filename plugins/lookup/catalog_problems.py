"""Lookup plugin airgap.kubernetes.catalog_problems: every reason the catalog cannot serve the inventory's config."""
from __future__ import annotations

DOCUMENTATION = r"""
name: catalog_problems
author: airgap.kubernetes maintainers
version_added: "0.3.0"
short_description: Every reason the catalog cannot serve the config, for every arch
description:
  - Resolves every artifact the config enables (files, images, packages of every group), for each arch in O(arches),
    with the same configuration the C(airgap.kubernetes.artifact) lookup reads from the host's variables.
  - Returns one line per problem (an unknown CNI or addon choice, a version the catalog lacks, a missing checksum, an
    unsupported arch); an empty list when the catalog serves it all. Layer 00 fails on them before any host changes.
options:
  arches:
    description: Catalog arch names (amd64, arm64) or machine names (x86_64, aarch64).
    type: list
    elements: str
    required: true
  os_family:
    description: OS family for package names.
    type: str
    default: debian
    choices: [debian, redhat]
"""

EXAMPLES = r"""
- name: Fail on what the catalog cannot serve
  ansible.builtin.fail:
    msg: "{{ problems | join('\n') }}"
  vars:
    problems: "{{ query('airgap.kubernetes.catalog_problems', arches=cluster_arches) }}"
  when: problems | length > 0
"""

RETURN = r"""
_raw:
  description: One line per problem.
  type: list
  elements: str
"""

from ansible.errors import AnsibleLookupError

from ansible_collections.airgap.kubernetes.plugins.lookup.artifact import LookupModule as _Artifact
from ansible_collections.airgap.kubernetes.plugins.module_utils import config as cfg
from ansible_collections.airgap.kubernetes.plugins.module_utils import resolver


class LookupModule(_Artifact):
    def run(self, terms, variables=None, **kwargs):
        variables = variables or {}
        self.set_options(var_options=variables, direct=kwargs)
        try:
            config = self._config(variables)
            catalog = resolver.apply_overlays(config["airgap_catalog"],
                                              cfg.load_overlays(config, variables.get("inventory_dir")))
        except resolver.CatalogError as exc:
            return [str(exc)]
        except ValueError as exc:
            raise AnsibleLookupError(str(exc)) from None
        return resolver.catalog_problems(catalog, config, self.get_option("arches"),
                                         config.get("airgap_mode") or "offline", self.get_option("os_family"))
