#!/bin/bash
# airgap.kubernetes node_reset, on the bundle server only (remove-cluster --with-bundle-server): takes away what the
# bundle_server role serves, before node-reset.sh purges the packages the deploy installed and puts back the apt
# sources and the files layer 01 saved. roles/node_reset/tasks/main.yml runs it after node-reset.sh loaded as a
# library (NODE_RESET_LIB=1: its remove, remove_if_empty, changed, note and problem), with the BS_* settings below. Output as
# node-reset.sh's; exit 1 after the other steps when something could not be done. A second run changes nothing.

BS_SETTINGS="BS_BUNDLE_DIR BS_ARCHIVE BS_ARCHIVE_UPLOADED BS_PKI_DIR BS_NGINX_SITE BS_HEALTH_DIR NR_RECORD_DIR"

unit_active() { systemctl is-active --quiet "$1" 2>/dev/null; }

bundle_server_reset() {
    local v missing= site_removed=
    [ "$(id -u)" = 0 ] || { echo "RESET-PROBLEM: bundle-server-reset.sh must run as root" >&2; exit 1; }
    for v in $BS_SETTINGS; do [ -n "${!v+set}" ] || missing="$missing $v"; done
    [ -z "$missing" ] || { echo "RESET-PROBLEM: settings missing from the environment:$missing" >&2; exit 2; }

    # The registry first: it serves from the bundle's registry/ tree.
    if unit_active docker-registry.service; then
        if systemctl stop docker-registry.service; then changed "stopped docker-registry"
        else problem "could not stop docker-registry"; fi
    fi
    # nginx may be the host's own: only the bundle's site goes, and a running nginx reloads without it.
    if [ -e "$BS_NGINX_SITE" ]; then
        remove "$BS_NGINX_SITE"
        site_removed=1
    fi
    if [ -n "$site_removed" ] && unit_active nginx.service; then
        systemctl reload nginx.service || problem "nginx did not reload without the bundle's site"
    fi
    # The served tree, a half-done swap's .new and .old, and the record of the tarball it came from.
    remove "$BS_BUNDLE_DIR" "$BS_BUNDLE_DIR.new" "$BS_BUNDLE_DIR.old" "$BS_BUNDLE_DIR.archive-sha256"
    # The tarball goes only when layer 01 copied it here; one the operator carried in stays.
    if [ "$BS_ARCHIVE_UPLOADED" = true ]; then
        remove "$BS_ARCHIVE" "$BS_ARCHIVE.sha256"
        remove_if_empty "$(dirname -- "$BS_ARCHIVE")"
    elif [ -n "$BS_ARCHIVE" ] && [ -e "$BS_ARCHIVE" ]; then
        note "kept $BS_ARCHIVE: the operator put it there (layer 01 did not copy it)"
    fi
    remove_if_empty "$(dirname -- "$BS_BUNDLE_DIR")"
    # The bundle CA's key and the server certificate: nothing else signs with them.
    remove "$BS_PKI_DIR"
    remove_if_empty "$(dirname -- "$BS_PKI_DIR")"
    # The health checks' sample file.
    remove "$BS_HEALTH_DIR"
    # nginx's postinst writes a welcome page into /var/www/html, which its purge leaves: it goes when layer 01 installed
    # nginx (the host had no nginx-common before the deploy), with /var/www if nothing else is there.
    if [ -f "$NR_RECORD_DIR/packages-before" ] && ! grep -qx nginx-common "$NR_RECORD_DIR/packages-before"; then
        remove /var/www/html/index.nginx-debian.html
        remove_if_empty /var/www/html /var/www
    fi
    # The registry's configuration is the package's conffile: node-reset.sh's purge takes it with docker-registry, or
    # puts back the host's own copy that layer 01 saved.
    [ "$problems" = 0 ] || exit 1
    exit 0
}

bundle_server_reset
