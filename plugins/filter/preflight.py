"""Filter plugins network_problems, bundle_lacks and certificate_lifetime_problems: thin shells over
plugins/module_utils/preflight.py. Their documentation lives beside this file, one YAML file per filter."""
from __future__ import annotations

from ansible_collections.airgap.kubernetes.plugins.module_utils import preflight


class FilterModule:
    def filters(self):
        return {"network_problems": preflight.network_problems, "bundle_lacks": preflight.bundle_lacks,
                "certificate_lifetime_problems": preflight.certificate_lifetime_problems}
