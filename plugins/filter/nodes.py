"""Filter plugins node_label_taint_commands, nodes_not_ready and node_pod_cidrs: thin shells over
plugins/module_utils/node_state.py. Their documentation lives beside this file, one YAML file per filter."""
from __future__ import annotations

from ansible_collections.airgap.kubernetes.plugins.module_utils import node_state


class FilterModule:
    def filters(self):
        return {"node_label_taint_commands": node_state.label_taint_commands,
                "nodes_not_ready": node_state.nodes_not_ready,
                "node_pod_cidrs": node_state.pod_cidrs}
