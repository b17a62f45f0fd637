"""Filter plugins mirror_image, upstream_image, mirror_url and upstream_url: thin shells over the resolver's mirror layout.

Their documentation lives beside this file, one YAML file per filter, where ansible-doc finds it.
"""
from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.airgap.kubernetes.plugins.module_utils import resolver


def _shell(function):
    def run(value, *args, **kwargs):
        try:
            return function(str(value), *args, **kwargs)
        except resolver.CatalogError as exc:
            raise AnsibleFilterError(str(exc)) from None
    run.__name__ = function.__name__
    return run


class FilterModule:
    def filters(self):
        return {f.__name__: _shell(f) for f in (resolver.mirror_image, resolver.upstream_image,
                                                  resolver.mirror_url, resolver.upstream_url)}
