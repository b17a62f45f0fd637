"""Filter plugins kubeadm_init_config, kubeadm_join_config, kubeadm_flags and kubeadm_cluster_config: thin shells
over plugins/module_utils/kubeadm_config.py, where everything that depends on the Kubernetes minor lives.

Their documentation lives beside this file, one YAML file per filter, where ansible-doc finds it.
"""
from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.airgap.kubernetes.plugins.module_utils import kubeadm_config as kc


def _shell(name, function):
    def run(settings, *args, **kwargs):
        try:
            return function(dict(settings), *args, **kwargs)
        except (kc.KubeadmConfigError, KeyError) as exc:
            what = f"setting {exc} is missing" if isinstance(exc, KeyError) else str(exc)
            raise AnsibleFilterError(f"{name}: {what}") from None
    run.__name__ = name
    return run


def _cluster_config(settings):
    return kc.dump([kc.cluster_configuration(settings)])


def _taint_key(settings):
    return kc.line_of(settings["kube_version"])[1].control_plane_taint_key


class FilterModule:
    def filters(self):
        table = {"kubeadm_init_config": kc.init_config_file, "kubeadm_join_config": kc.join_config_file,
                 "kubeadm_flags": kc.command_flags, "kubeadm_cluster_config": _cluster_config, "kubeadm_control_plane_taint_key": _taint_key, "kubeadm_problems": kc.problems}
        return {name: _shell(name, f) for name, f in table.items()}
