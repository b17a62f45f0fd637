"""Filter plugins network_plugin_in_use and network_switch_problem: thin shells over
plugins/module_utils/network_plugins.py. Their documentation lives beside this file, one YAML file per filter."""
from __future__ import annotations

from ansible_collections.airgap.kubernetes.plugins.module_utils import network_plugins


class FilterModule:
    def filters(self):
        return {"network_plugin_in_use": network_plugins.plugin_in_use,
                "network_switch_problem": network_plugins.switch_problem}
