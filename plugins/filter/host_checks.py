"""Filter plugins host_problems, ca_warnings and probe_script: thin shells over plugins/module_utils/host_checks.py; their
documentation lives beside this file, one YAML file per filter."""
from __future__ import annotations

from ansible_collections.airgap.kubernetes.plugins.module_utils import host_checks


class FilterModule:
    def filters(self):
        return {"host_problems": host_checks.host_problems, "ca_warnings": host_checks.ca_warnings,
                "probe_script": host_checks.probe_script}
