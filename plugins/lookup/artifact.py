"""Lookup plugin airgap.kubernetes.artifact: resolves catalog artifacts for the current host, a thin shell over the resolver."""
from __future__ import annotations

DOCUMENTATION = r"""
name: artifact
author: airgap.kubernetes maintainers
version_added: "0.1.0"
short_description: Resolve artifacts of the airgap.kubernetes catalog for the current host
description:
  - Resolves catalog entries (C(airgap_catalog) plus C(catalog_overlay_files) and C(catalog_overlay)) against the
    host's variables (C(kube_version), C(kube_network_plugin), the addon switches, C(files_repo), C(registry_host),
    C(upstream_bases), ...) and the host's arch.
  - With terms, returns one resolved artifact per name, whether the config enables it or not (see its C(enabled)).
  - Without terms, returns every artifact the config enables, optionally narrowed by O(kind) and O(group).
  - A file has C(url) (what to fetch in this mode), C(upstream_url), C(canonical_url), C(mirror_url),
    C(mirror_path), C(dest), C(sha256), C(mode), C(unpack), C(groups).
    An image has C(ref) (what to pull), C(upstream), C(canonical), C(mirror), C(digest), C(multiarch).
    A package has C(package) (the name for the host's OS family) and C(packages) (every family's name).
  - Fails with one message naming the component, version and arch, and the valid choices, when the catalog
    cannot serve the config (unknown version, missing sha256, unknown CNI, unsupported arch).
options:
  _terms:
    description: Catalog component names, e.g. C(etcd), C(kubelet), C(pause).
    required: false
  kind:
    description: Without terms, only artifacts of this kind.
    type: str
    choices: [file, image, package]
  group:
    description:
      - Without terms, only artifacts that hosts of these inventory groups need (any of them).
      - Pass C(group_names) for what the current host needs.
    type: list
    elements: str
  arch:
    description:
      - Arch to resolve for. Defaults to the host's C(ansible_architecture) fact (x86_64 or aarch64 accepted).
    type: str
  mode:
    description:
      - C(offline) fetches from the bundle server, C(upstream) from the upstream hosts or their C(upstream_bases).
      - Defaults to the C(airgap_mode) variable (the collection's default is C(offline)).
    type: str
    choices: [offline, upstream]
  os_family:
    description: OS family for package names. Defaults to the host's C(ansible_os_family), else C(debian).
    type: str
    choices: [debian, redhat]
"""

EXAMPLES = r"""
- name: Download etcd from the bundle server and check its sha256
  ansible.builtin.get_url:
    url: "{{ etcd_artifact.url }}"
    dest: "/tmp/{{ etcd_artifact.url | basename }}"
    checksum: "sha256:{{ etcd_artifact.sha256 }}"
    mode: "0644"
  vars:
    etcd_artifact: "{{ lookup('airgap.kubernetes.artifact', 'etcd') }}"

- name: Show the pause image the runtime pulls
  ansible.builtin.debug:
    msg: "{{ lookup('airgap.kubernetes.artifact', 'pause').ref }}"

- name: Install every OS package this host's groups need
  ansible.builtin.package:
    name: "{{ query('airgap.kubernetes.artifact', kind='package', group=group_names) | map(attribute='package') }}"
    state: present
"""

RETURN = r"""
_raw:
  description: One resolved artifact (a dict) per term, or every enabled artifact when no term is given.
  type: list
  elements: dict
"""

from pathlib import Path

from ansible.errors import AnsibleLookupError, AnsibleOptionsError
from ansible.plugins.lookup import LookupBase

from ansible_collections.airgap.kubernetes.plugins.module_utils import config as cfg
from ansible_collections.airgap.kubernetes.plugins.module_utils import resolver

COLLECTION = Path(__file__).resolve().parents[2]


class LookupModule(LookupBase):
    def _config(self, variables: dict) -> dict:
        # The host's variables hold these defaults when cluster_defaults is in the play; this covers plays without it.
        defaults = cfg.cached_defaults(COLLECTION)
        catalog = variables.get("airgap_catalog") or defaults["airgap_catalog"]
        config = dict(defaults)
        keys = resolver.config_keys(catalog) | {"catalog_overlay_files", "catalog_overlay", "airgap_mode"}
        # A default such as files_repo refers to other knobs (bundle_server_host): the host's values of those count.
        keys |= {name for key in keys for name in cfg.template_names(defaults.get(key))}
        for key in keys:
            if key in variables:
                config[key] = self._templar.template(variables[key])
        config["airgap_catalog"] = catalog
        return cfg.expand_simple_templates(config)

    def run(self, terms, variables=None, **kwargs):
        variables = variables or {}
        options = [name for name in self.option_definitions if name != "_terms"]
        unknown = sorted(set(kwargs) - set(options))
        if unknown:  # set_options ignores unknown names, which would hide a typo such as kinds='image'
            raise AnsibleLookupError(f"airgap.kubernetes.artifact has no option {unknown[0]!r}: use {', '.join(options)}")
        try:  # checks each option's type and choices against DOCUMENTATION
            self.set_options(var_options=variables, direct=kwargs)
        except AnsibleOptionsError as exc:
            # Ansible keeps the valid values in the help text, which a task's failure message leaves out.
            raise AnsibleLookupError(f"{exc.message} {getattr(exc, '_help_text', None) or ''}".strip()) from None
        try:
            config = self._config(variables)
            catalog = resolver.apply_overlays(config["airgap_catalog"],
                                              cfg.load_overlays(config, variables.get("inventory_dir")))
            arch = self.get_option("arch") or variables.get("ansible_architecture") or \
                (variables.get("ansible_facts") or {}).get("architecture")
            if not arch and self.get_option("kind") == "package":
                arch = catalog["arches"][0]  # a package's name does not depend on the arch
            if not arch:
                raise resolver.CatalogError("the host's arch is unknown: gather facts first, or pass arch=amd64")
            mode = self.get_option("mode") or config.get("airgap_mode")
            family = self.get_option("os_family") or str(variables.get("ansible_os_family") or "debian").lower()
            if terms:
                return [resolver.resolve_one(catalog, config, str(t), arch, mode, family).to_dict() for t in terms]
            groups = self.get_option("group")  # an empty list (a host in no group) needs nothing
            return [a.to_dict() for a in resolver.resolve(catalog, config, arch, mode, self.get_option("kind"), family)
                    if groups is None or set(groups) & set(a.groups)]
        except resolver.CatalogError as exc:
            raise AnsibleLookupError(str(exc)) from None
