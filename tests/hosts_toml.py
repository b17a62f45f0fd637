"""containerd's hosts.toml for every registry, as roles/container_runtime renders it (Ansible's trim_blocks)."""
from pathlib import Path

import jinja2

from ansible_collections.airgap.kubernetes.plugins.module_utils import resolver

TEMPLATE = Path(__file__).resolve().parents[1] / "roles/container_runtime/templates/hosts.toml.j2"


def render(catalog: dict, config: dict, ca_file: str = "/ca.crt") -> dict:
    """upstream registry -> its hosts.toml, from the registry_mirrors filter's data."""
    template = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True,
                                  keep_trailing_newline=True).from_string(TEMPLATE.read_text())
    return {m.upstream: template.render(item=m.to_dict(), ansible_managed="managed",
                                        container_runtime_registry_ca_file=ca_file)
            for m in resolver.registry_mirrors(catalog, config)}
