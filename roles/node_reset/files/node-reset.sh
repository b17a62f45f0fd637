#!/bin/bash
# airgap.kubernetes node_reset: puts a node back the way it was before the deploy. roles/node_reset/tasks/main.yml
# runs it (ansible.builtin.script, so it needs no Python on the node) with the NR_* settings below in its
# environment, every path the deploy's own. Each step is a no-op when its thing is absent: on a node that a deploy
# left half done, and on a second run.
# Output, one line each: "RESET-CHANGED: ..." for every change (the task is changed when there is one),
# "RESET-NOTE: ..." for what stays and why, "RESET-PROBLEM: ..." for what could not be done. After a problem the
# script still does every step that does not depend on it, then exits 1.
set -u -o pipefail
export LC_ALL=C
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

NR_SETTINGS="NR_KEEP_PACKAGES NR_REMOVE_ETCD_BACKUPS NR_RECORD_DIR
  NR_KUBE_DIR NR_KUBELET_DIR NR_KUBE_BINARIES NR_KUBEADM NR_CRI_SOCKET NR_JOIN_CONFIG NR_AUDIT_LOG_DIR
  NR_CONTAINERD_BIN_DIR NR_CONTAINERD_MEMBERS NR_CONTAINERD_STRIP NR_CONTAINERD_TARBALL NR_RUNC
  NR_CNI_ENABLED NR_CNI_BIN_DIR NR_CNI_STRIP NR_CNI_TARBALL NR_DOWNLOAD_DIR
  NR_CONTAINERD_CONFIG_DIR NR_CONTAINERD_HOSTS_DIR NR_CONTAINERD_ROOT_DIR NR_CONTAINERD_STATE_DIR NR_CONTAINERD_SOCKET
  NR_CNI_CONF_DIR NR_CNI_CONF NR_CNI_NETWORK NR_BRIDGE NR_ROUTE_PROTO NR_MASQ_CHAIN NR_POD_NETWORK_SCRIPT
  NR_POD_NETWORK_UNIT
  NR_ETCD_DATA_DIR NR_ETCD_CONFIG_DIR NR_ETCD_PKI_DIR NR_ETCD_INSTALL_DIR NR_ETCD_BIN_DIR NR_ETCD_BINARIES
  NR_ETCD_SBIN_DIR NR_ETCD_USER NR_ETCD_BACKUP_DIR
  NR_LB_CONFIG NR_LB_PACKAGE
  NR_CA_FILE NR_APT_CA_CONF NR_LEGACY_CA_FILE NR_APT_SOURCE NR_APT_KEY NR_APT_REPO_URL NR_MODULES_LOAD_FILE
  NR_SYSCTL_FILE"

# The iptables chains of the deploy: kube-proxy's and the kubelet's (KUBE-), the bridge network's (AIRGAP-, and
# network_bridge_masq_chain by its name), the CNI plugins' (CNI-: portmap's hostport chains), calico's (cali-),
# cilium's (CILIUM_, OLD_CILIUM_ while it replaces its rules) and flannel's (FLANNEL-).
OURS_CHAINS=

problems=0
changed() { echo "RESET-CHANGED: $*"; }
note() { echo "RESET-NOTE: $*"; }
problem() { echo "RESET-PROBLEM: $*"; problems=$((problems + 1)); }
have() { command -v "$1" >/dev/null 2>&1; }
# The last lines of a command's output, on one line, for a message.
tail_of() { printf '%s' "$1" | tail -n "${2:-3}" | tr '\n' ' '; }
dpkg_installed() { dpkg-query -W -f '${Status}' "$1" 2>/dev/null | grep -q ' installed$'; }

# --- Paths ---------------------------------------------------------------------------------------------------------

# A path this script may delete: absolute, normalised, at least two components, and not a directory the system
# owns (a setting pointing one there would otherwise take the system's files with it).
safe_path() {
    case "$1" in
        /*/*) ;;
        *) return 1 ;;
    esac
    case "$1" in
        /usr/*/*/*) ;;
        /usr/* | /usr/local/* | /var/lib | /var/log | /var/cache | /var/backups | /var/tmp | /var/run | /var/spool | \
            /etc/apt | /etc/default | /etc/ssl | /etc/systemd | /etc/systemd/* | /etc/sysctl.d | /etc/modules-load.d | \
            /run/systemd | /run/user | /home/*) return 1 ;;
    esac
    return 0
}

# The mount points strictly below $1, deepest first (mountinfo writes a space as \040).
mounts_below() {
    awk -v p="$1/" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo | sort -ru | while IFS= read -r m; do
        printf '%b\n' "$m"
    done
}
is_mountpoint() { awk -v p="$1" '$5 == p {f = 1} END {exit !f}' /proc/self/mountinfo; }
# A mount the host's /etc/fstab makes (a disk of its own under a data directory) is the host's: never unmounted.
in_fstab() { [ -f /etc/fstab ] && awk -v p="$1" '$1 !~ /^#/ && $2 == p {f = 1} END {exit !f}' /etc/fstab; }

unmount_below() {
    local dir=$1 pass m count=0 tried
    for pass in 1 2 3; do
        tried=0
        while IFS= read -r m; do
            [ -n "$m" ] && ! in_fstab "$m" || continue
            tried=1
            if umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; then count=$((count + 1)); fi
        done < <(mounts_below "$dir")
        [ "$tried" = 1 ] || break
    done
    [ "$count" = 0 ] || changed "unmounted $count mount(s) under $dir"
}

# "package: directory" for each directory this script removes that an OS package owns (dpkg-query -S, once): such
# a directory is the host's (a containerd or etcd-server package it had), and stays.
PACKAGE_DIRS=
find_package_dirs() {
    have dpkg-query || return 0
    # shellcheck disable=SC2086 # the paths are words
    PACKAGE_DIRS=$(dpkg-query -S $(realpath -ms -- "$@" | sort -u) 2>/dev/null)
}
package_owning() {
    printf '%s\n' "$PACKAGE_DIRS" | awk -v p="$1" '{i = index($0, ": ")} i && substr($0, i + 2) == p {
        print substr($0, 1, i - 1); exit}'
}

# Removes each path that exists. A directory loses its mounts first and is left alone while one stays (rm would go
# into it); a directory that is itself a mount point is emptied and kept.
remove() {
    local p owner
    for p in "$@"; do
        [ -n "$p" ] || continue
        [ -e "$p" ] || [ -L "$p" ] || continue
        p=$(realpath -ms -- "$p")
        if ! safe_path "$p"; then
            problem "refused to remove $p: a system directory (check the setting that points there)"
            continue
        fi
        if [ -d "$p" ] && [ ! -L "$p" ]; then
            owner=$(package_owning "$p")
            if [ -n "$owner" ]; then
                note "kept $p: the package $owner owns it (files the deploy wrote there stay too)"
                continue
            fi
            unmount_below "$p"
            if [ -n "$(mounts_below "$p")" ]; then
                problem "left $p: $(mounts_below "$p" | head -n 1) is still mounted below it"
                continue
            fi
            if is_mountpoint "$p"; then
                if [ -n "$(ls -A "$p" 2>/dev/null)" ]; then
                    find "$p" -mindepth 1 -maxdepth 1 -exec rm -rf --one-file-system -- {} + &&
                        changed "emptied $p (a mount point of its own: kept)"
                fi
                continue
            fi
        fi
        if rm -rf --one-file-system -- "$p"; then changed "removed $p"; else problem "could not remove $p"; fi
    done
}

# Removes each directory that is empty (and no system directory).
remove_if_empty() {
    local d
    for d in "$@"; do
        [ -d "$d" ] && [ ! -L "$d" ] && [ -z "$(ls -A "$d" 2>/dev/null)" ] || continue
        d=$(realpath -ms -- "$d")
        safe_path "$d" || continue
        rmdir -- "$d" 2>/dev/null && changed "removed $d (empty)"
    done
    return 0
}

# Removes the directory holding $2 when it is empty and named $1 (/opt/cni of /opt/cni/bin): made by the deploy
# with its subdirectory, while a parent of another name may be the host's.
remove_parent_if_empty() {
    local parent=${2%/*}
    [ "${parent##*/}" != "$1" ] || remove_if_empty "$parent"
}

# --- Services ------------------------------------------------------------------------------------------------------

# Stops (also while it restarts after a crash) and disables a unit.
stop_unit() {
    local u=$1
    have systemctl || return 0
    case "$(systemctl show -p ActiveState --value "$u" 2>/dev/null)" in
        '' | inactive | failed) ;;
        *) if systemctl stop "$u" 2>/dev/null; then changed "stopped $u"; else problem "could not stop $u"; fi ;;
    esac
    case "$(systemctl is-enabled "$u" 2>/dev/null)" in
        enabled | enabled-runtime | linked | linked-runtime)
            systemctl disable "$u" >/dev/null 2>&1 && changed "disabled $u" ;;
    esac
    return 0
}

# Our units, in the order they stop (a timer before its service): the deploy's and any airgap-* unit in
# /etc/systemd/system.
our_units() {
    local f n
    {
        printf '%s\n' kubelet.service "$NR_POD_NETWORK_UNIT" etcd-backup.timer etcd-backup.service etcd.service \
            containerd.service
        for f in /etc/systemd/system/airgap-*; do
            [ -e "$f" ] || [ -L "$f" ] || continue
            n=${f##*/}
            printf '%s\n' "${n%.d}"
        done
    } | awk 'NF && !seen[$0]++'
}

# The unit files, their drop-in directories and the links that enabled them; daemon-reload after.
remove_units() {
    local u f removed=0
    for u in $(our_units); do
        # A Persistent= timer's stamp is systemd's record of its last run.
        for f in "/etc/systemd/system/$u" "/etc/systemd/system/$u.d" /etc/systemd/system/*.wants/"$u" \
            /etc/systemd/system/*.requires/"$u" "/var/lib/systemd/timers/stamp-$u"; do
            [ -e "$f" ] || [ -L "$f" ] || continue
            rm -rf -- "$f" && changed "removed $f" && removed=1
        done
    done
    if [ "$removed" = 1 ] && have systemctl; then
        systemctl daemon-reload || problem "systemctl daemon-reload failed"
        systemctl reset-failed $(our_units) >/dev/null 2>&1
    fi
    return 0
}

# haproxy is the deploy's when its package was installed by the deploy (not in the record) or, without a record,
# when it serves the deploy's configuration. A haproxy the host had before keeps running.
lb_is_ours() {
    local record=$NR_RECORD_DIR/packages-before
    have dpkg-query && dpkg_installed "$NR_LB_PACKAGE" || return 1
    if [ -f "$record" ]; then
        ! grep -qx -- "$NR_LB_PACKAGE" "$record"
    else
        grep -q '^frontend kube_apiserver' "$NR_LB_CONFIG" 2>/dev/null
    fi
}

# --- Containers ----------------------------------------------------------------------------------------------------

# Every pod's processes, so that their mounts and network namespaces can go: through the CRI when crictl is there
# (it also runs the CNI plugins' teardown), through containerd's own client, then by the pods' cgroups.
stop_pods() {
    local sock=$NR_CONTAINERD_SOCKET ctr ids id n pids d
    if have crictl && [ -S "$sock" ]; then
        ids=$(timeout 30 crictl --runtime-endpoint "unix://$sock" pods -q 2>/dev/null)
        if [ -n "$ids" ]; then
            timeout 120 crictl --runtime-endpoint "unix://$sock" stopp $ids >/dev/null 2>&1
            timeout 120 crictl --runtime-endpoint "unix://$sock" rmp -f $ids >/dev/null 2>&1
            changed "stopped and removed $(printf '%s\n' $ids | wc -l) pod(s) through the CRI"
        fi
    fi
    ctr=$NR_CONTAINERD_BIN_DIR/ctr
    [ -x "$ctr" ] || ctr=$(command -v ctr) || ctr=
    if [ -n "$ctr" ] && [ -S "$sock" ]; then
        ids=$(timeout 30 "$ctr" --address "$sock" -n k8s.io tasks ls -q 2>/dev/null)
        if [ -n "$ids" ]; then
            n=0
            for id in $ids; do
                timeout 30 "$ctr" --address "$sock" -n k8s.io tasks kill -a -s SIGKILL "$id" >/dev/null 2>&1
                timeout 60 "$ctr" --address "$sock" -n k8s.io tasks rm -f "$id" >/dev/null 2>&1
                timeout 30 "$ctr" --address "$sock" -n k8s.io containers rm "$id" >/dev/null 2>&1
                n=$((n + 1))
            done
            changed "killed and removed $n container(s) with ctr"
        fi
    fi
    # systemd cgroup driver: the pods live in kubepods.slice; cgroupfs driver: in kubepods directories.
    if have systemctl; then
        case "$(systemctl show -p ActiveState --value kubepods.slice 2>/dev/null)" in
            '' | inactive | failed) ;;
            *)
                systemctl kill --signal=SIGKILL kubepods.slice >/dev/null 2>&1
                systemctl stop kubepods.slice >/dev/null 2>&1
                changed "stopped kubepods.slice"
                ;;
        esac
    fi
    for d in /sys/fs/cgroup/kubepods /sys/fs/cgroup/*/kubepods; do
        [ -d "$d" ] || continue
        pids=$(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
        [ -n "$pids" ] || continue
        kill -9 $pids 2>/dev/null
        changed "killed $(printf '%s\n' $pids | wc -l) process(es) left in $d"
    done
    return 0
}

# containerd runs with KillMode=process: its shims outlive it. Only ours, by their binary.
kill_shims() {
    local p exe n=0
    for p in /proc/[0-9]*; do
        exe=$(readlink "$p/exe" 2>/dev/null) || continue
        exe=${exe% (deleted)}
        case "$exe" in
            "$NR_CONTAINERD_BIN_DIR"/containerd-shim*) kill -9 "${p#/proc/}" 2>/dev/null && n=$((n + 1)) ;;
        esac
    done
    [ "$n" = 0 ] || changed "killed $n containerd shim(s)"
}

# kubeadm reset while the node has a configuration: it also takes a control plane out of the cluster's records
# (kubeadm 1.20's ClusterStatus). It leaves the CNI configuration and iptables, done below.
kubeadm_reset() {
    local kubeadm=$NR_KUBEADM out
    [ -x "$kubeadm" ] || kubeadm=$(command -v kubeadm) || return 0
    [ -d "$NR_KUBE_DIR" ] && [ -n "$(ls -A "$NR_KUBE_DIR" 2>/dev/null)" ] || return 0
    if out=$(timeout 300 "$kubeadm" reset -f --cri-socket "$NR_CRI_SOCKET" 2>&1); then
        changed "kubeadm reset"
    else
        changed "kubeadm reset (failed; the steps below do its work)"
        note "kubeadm reset failed: $(tail_of "$out")"
    fi
}

unmount_runtime() {
    local d ns n=0
    for d in "$NR_KUBELET_DIR" "$NR_CONTAINERD_STATE_DIR" "$NR_CONTAINERD_ROOT_DIR"; do
        [ -d "$d" ] && unmount_below "$d"
    done
    # Where the root mount is not shared (a container), the kubelet bind-mounts its directory onto itself to make it
    # shared: that mount is the kubelet's (its mountinfo root is the directory itself), not the host's.
    while awk -v p="$NR_KUBELET_DIR" '$5 == p && $4 == p {f = 1} END {exit !f}' /proc/self/mountinfo &&
        ! in_fstab "$NR_KUBELET_DIR"; do
        umount "$NR_KUBELET_DIR" 2>/dev/null || umount -l "$NR_KUBELET_DIR" 2>/dev/null || break
        changed "unmounted the kubelet's bind mount of $NR_KUBELET_DIR onto itself"
    done
    # The pods' network namespaces (containerd's CNI names them cni-<id>).
    for ns in /run/netns/cni-*; do
        [ -e "$ns" ] || continue
        umount "$ns" 2>/dev/null || umount -l "$ns" 2>/dev/null
        rm -f -- "$ns" && n=$((n + 1))
    done
    [ "$n" = 0 ] || changed "removed $n pod network namespace(s) from /run/netns"
}

# --- Network -------------------------------------------------------------------------------------------------------

# Reads an iptables-save -c dump; prints only the filter, nat and mangle tables that hold one of our chains or a
# rule that jumps (-j/-g) to one, without those chains, their rules and those jumps. Every other rule and chain
# of such a table is printed as it was, counters included; other tables are not printed (iptables-restore then
# leaves them alone).
iptables_without_ours() {
    awk -v ours="$OURS_CHAINS" '
        function flush(   i) { if (dropped) for (i = 1; i <= n; i++) print buf[i] }
        /^\*/ {
            table = substr($0, 2); n = 0; dropped = 0
            keep = (table == "filter" || table == "nat" || table == "mangle" || table == "raw")
            if (keep) buf[++n] = $0
            next
        }
        !keep { next }
        /^COMMIT/ { buf[++n] = $0; flush(); keep = 0; next }
        /^:/ { if (substr($1, 2) ~ ours) dropped++; else buf[++n] = $0; next }
        {
            # Quoted arguments (comments, log prefixes) cannot name a chain: blanked before the words are read.
            line = $0
            gsub(/"([^"\\]|\\.)*"/, "\"\"", line)
            k = split(line, w, " ")
            for (i = 1; i < k; i++)
                if ((w[i] == "-A" || w[i] == "-j" || w[i] == "-g") && w[i + 1] ~ ours) { dropped++; next }
            buf[++n] = $0
        }
    '
}

# "table chain" of our chains left in a dump.
ours_left() {
    awk -v ours="$OURS_CHAINS" '/^\*/ {t = substr($0, 2)}
        /^:/ && (t == "filter" || t == "nat" || t == "mangle" || t == "raw") && substr($1, 2) ~ ours {print t, substr($1, 2)}'
}

reset_iptables() {
    local fam be backends dump filtered out left t c
    for fam in iptables ip6tables; do
        backends=
        for be in "$fam-nft" "$fam-legacy"; do have "$be-save" && have "$be-restore" && backends="$backends $be"; done
        [ -n "$backends" ] || { have "$fam-save" && have "$fam-restore" && backends=$fam; }
        for be in $backends; do
            # Without -t: only the tables that exist are read (asking for one would create it).
            dump=$("$be-save" -c 2>/dev/null) || continue
            filtered=$(printf '%s\n' "$dump" | iptables_without_ours)
            if [ -n "$filtered" ]; then
                if out=$(printf '%s\n' "$filtered" | "$be-restore" -c -w 2>&1); then
                    changed "$be: removed the deploy's and the network plugins' chains and the rules jumping to them," \
                        "table(s) $(printf '%s\n' "$filtered" | sed -n 's/^\*//p' | tr '\n' ' ')"
                else
                    problem "$be-restore refused the tables without our chains: $(tail_of "$out")"
                    continue
                fi
            fi
            # A restore that keeps chains it was not given leaves them empty and unreferenced: deleted one by one.
            left=$("$be-save" 2>/dev/null | ours_left)
            [ -n "$left" ] || continue
            printf '%s\n' "$left" | while read -r t c; do "$be" -w -t "$t" -F "$c" 2>/dev/null; done
            printf '%s\n' "$left" | while read -r t c; do "$be" -w -t "$t" -X "$c" 2>/dev/null; done
            left=$("$be-save" 2>/dev/null | ours_left)
            if [ -n "$left" ]; then
                problem "$be: could not delete $(printf '%s' "$left" | tr '\n' ',')"
            else
                changed "$be: deleted the chains that the restore kept"
            fi
        done
    done
}

reset_network() {
    local link n=0
    if have ip && ip link show dev "$NR_BRIDGE" >/dev/null 2>&1; then
        for link in $(ip -o link show master "$NR_BRIDGE" 2>/dev/null | awk -F': ' '{sub(/@.*/, "", $2); print $2}'); do
            case "$link" in veth*) ip link delete "$link" 2>/dev/null && n=$((n + 1)) ;; esac
        done
        [ "$n" = 0 ] || changed "deleted $n veth link(s) of $NR_BRIDGE"
        if ip link delete "$NR_BRIDGE" 2>/dev/null; then changed "deleted the bridge $NR_BRIDGE"; else
            problem "could not delete the bridge $NR_BRIDGE"; fi
    fi
    if have ip && [ -n "$(ip -4 route show proto "$NR_ROUTE_PROTO" 2>/dev/null)" ]; then
        if ip -4 route flush proto "$NR_ROUTE_PROTO"; then changed "removed the routes of protocol $NR_ROUTE_PROTO"
        else problem "could not remove the routes of protocol $NR_ROUTE_PROTO"; fi
    fi
    reset_plugin_network
    reset_iptables
    reset_plugin_ipsets
    remove_plugin_state
}

# What calico, cilium and flannel (roles/network_<plugin>) leave in the node's network: their pods' veths (cali*,
# lxc*), their devices, calico's BIRD routes, cilium's cgroup2 mount, BPF pins and tc programs. Each is skipped
# when absent. flannel's bridge is cni0, the bridge step above (network_bridge_name's default).
reset_plugin_network() {
    local link n=0 dev dir
    have ip || return 0
    for link in $(ip -o link show type veth 2>/dev/null | awk -F': ' '{sub(/@.*/, "", $2); print $2}'); do
        case "$link" in cali* | lxc* | cilium_net | cilium_host) ip link delete "$link" 2>/dev/null && n=$((n + 1)) ;; esac
    done
    for link in vxlan.calico vxlan-v6.calico wireguard.cali cilium_vxlan cilium_geneve cilium_host cilium_net \
        flannel.1 flannel-v6.1 flannel-wg; do
        ip link show dev "$link" >/dev/null 2>&1 && ip link delete "$link" 2>/dev/null && n=$((n + 1))
    done
    [ "$n" = 0 ] || changed "deleted $n link(s) of the calico, cilium or flannel network"
    # tunl0 is the ipip module's own device: it cannot be deleted, only emptied and set down.
    if ip -o -4 addr show dev tunl0 2>/dev/null | grep -q inet; then
        if ip addr flush dev tunl0 && ip link set dev tunl0 down; then changed "flushed calico's address off tunl0"
        else problem "could not flush tunl0"; fi
    fi
    if [ -n "$(ip -4 route show proto bird 2>/dev/null)" ]; then
        if ip -4 route flush proto bird; then changed "removed calico's BIRD routes"
        else problem "could not remove calico's BIRD routes"; fi
    fi
    if is_mountpoint /run/cilium/cgroupv2; then
        if umount /run/cilium/cgroupv2 2>/dev/null || umount -l /run/cilium/cgroupv2 2>/dev/null; then
            changed "unmounted cilium's cgroup2 at /run/cilium/cgroupv2"
        else problem "could not unmount /run/cilium/cgroupv2"; fi
    fi
    # cilium's pinned maps and programs; the bpf filesystem itself is the system's (systemd mounts it).
    for dir in /sys/fs/bpf/cilium /sys/fs/bpf/tc/globals/cilium_*; do
        [ -e "$dir" ] || continue
        rm -rf -- "$dir" && changed "removed cilium's BPF pins $dir"
    done
    if have tc; then
        for dev in $(ip -o link show 2>/dev/null | awk -F': ' '{sub(/@.*/, "", $2); print $2}'); do
            tc qdisc show dev "$dev" 2>/dev/null | grep -q clsact || continue
            tc filter show dev "$dev" ingress 2>/dev/null | grep -q -e 'cil_' -e 'bpf_host' -e 'bpf_netdev' || continue
            tc qdisc del dev "$dev" clsact 2>/dev/null && changed "removed cilium's tc programs from $dev"
        done
    fi
}

# calico's and cilium's ipsets, once no iptables rule refers to them.
reset_plugin_ipsets() {
    local set n=0
    have ipset || return 0
    for set in $(ipset list -n 2>/dev/null); do
        case "$set" in cali4* | cali6* | cilium_*) ipset destroy "$set" 2>/dev/null && n=$((n + 1)) ;; esac
    done
    [ "$n" = 0 ] || changed "destroyed $n ipset(s) of calico or cilium"
}

# The network plugins' state, CNI configuration and the CNI binaries their pods installed.
remove_plugin_state() {
    remove /var/lib/calico /var/run/calico /var/log/calico /var/run/nodeagent \
        "$NR_CNI_CONF_DIR/10-calico.conflist" "$NR_CNI_CONF_DIR/calico-kubeconfig" \
        "$NR_CNI_BIN_DIR/calico" "$NR_CNI_BIN_DIR/calico-ipam" \
        /var/run/cilium "$NR_CNI_CONF_DIR/05-cilium.conflist" "$NR_CNI_CONF_DIR/05-cilium.conflist.cilium_bak" \
        "$NR_CNI_BIN_DIR/cilium-cni" \
        /run/flannel "$NR_CNI_CONF_DIR/10-flannel.conflist" "$NR_CNI_BIN_DIR/flannel" \
        /var/lib/cni/networks/cbr0 /var/lib/cni/flannel /var/lib/cni/results/cbr0-* /var/lib/cni/cache/results/cbr0-*
}

# --- Files ---------------------------------------------------------------------------------------------------------

# The files a release tarball put into its directory, relative to it: from the record container_runtime wrote
# beside the tarball (<tarball>.unpacked.sha256), else from the tarball, else from the catalog's member list.
# $1 tarball name prefix, $2 strip components, then the catalog's members.
unpacked_files() {
    local prefix=$1 strip=$2 rec tarball found=0 m
    shift 2
    for rec in "$NR_DOWNLOAD_DIR/$prefix"*.unpacked.sha256; do
        [ -f "$rec" ] || continue
        found=1
        sed -E 's/^[0-9a-f]+ [ *]?//' "$rec"
    done
    for tarball in "$NR_DOWNLOAD_DIR/$prefix"*; do
        case "$tarball" in *.unpacked.sha256 | *.tmp) continue ;; esac
        [ -f "$tarball" ] && [ ! -f "$tarball.unpacked.sha256" ] || continue
        found=1
        tar -tzf "$tarball" "$@" 2>/dev/null | cut -d/ -f$((strip + 1))- | grep -v -e '/$' -e '^$'
    done
    if [ "$found" = 0 ]; then
        for m in "$@"; do printf '%s\n' "$m" | cut -d/ -f$((strip + 1))-; done
    fi
}

remove_release_files() {
    local f name link
    remove $NR_KUBE_BINARIES "$NR_RUNC"
    # shellcheck disable=SC2086 # the members are words
    for f in $(unpacked_files "$NR_CONTAINERD_TARBALL" "$NR_CONTAINERD_STRIP" $NR_CONTAINERD_MEMBERS | sort -u); do
        [ -f "$NR_CONTAINERD_BIN_DIR/$f" ] && remove "$NR_CONTAINERD_BIN_DIR/$f"
    done
    if [ "$NR_CNI_ENABLED" = true ]; then
        for f in $(unpacked_files "$NR_CNI_TARBALL" "$NR_CNI_STRIP" | sort -u); do
            [ -f "$NR_CNI_BIN_DIR/$f" ] && remove "$NR_CNI_BIN_DIR/$f"
        done
        remove_if_empty "$NR_CNI_BIN_DIR"
        remove_parent_if_empty cni "$NR_CNI_BIN_DIR"
    fi
    # etcd_bin_dir holds links to the active release under etcd_install_dir.
    for name in etcd etcdctl etcdutl $NR_ETCD_BINARIES; do
        link=$NR_ETCD_BIN_DIR/$name
        [ -L "$link" ] || continue
        case "$(readlink -- "$link")" in "$NR_ETCD_INSTALL_DIR"/*) remove "$link" ;; esac
    done
    remove "$NR_ETCD_INSTALL_DIR"/v[0-9]* "$NR_ETCD_INSTALL_DIR"/etcd-v*.tar.gz "$NR_ETCD_INSTALL_DIR"/etcd-v*.tar.gz.unpacked.sha256
    remove_if_empty "$NR_ETCD_INSTALL_DIR"
    remove "$NR_DOWNLOAD_DIR"
    remove_parent_if_empty airgap-kubernetes "$NR_DOWNLOAD_DIR"
}

remove_state() {
    local home host_containerd
    # Kubernetes: kubeadm's and the control plane's files, the kubelet's state and pod logs, kubectl's caches.
    remove "$NR_KUBE_DIR" "$NR_KUBELET_DIR" /run/kubernetes /var/log/pods /var/log/containers "$NR_JOIN_CONFIG" \
        "$NR_AUDIT_LOG_DIR"
    remove_parent_if_empty kubernetes "$NR_AUDIT_LOG_DIR"
    # The volume plugin directory the kubelet and kube-controller-manager create: only its empty directories.
    if [ -d /usr/libexec/kubernetes ]; then
        find /usr/libexec/kubernetes -depth -type d -empty -delete 2>/dev/null
        [ -d /usr/libexec/kubernetes ] && note "kept /usr/libexec/kubernetes: it holds files" ||
            changed "removed /usr/libexec/kubernetes (empty directories)"
    fi
    # kubectl run as root (the deploy's kubectl calls) leaves its caches in ~/.kube; the directory goes only when
    # they were all it held.
    for home in /root ''; do
        [ -d "$home/.kube/cache" ] || [ -d "$home/.kube/http-cache" ] || continue
        remove "$home/.kube/cache" "$home/.kube/http-cache"
        remove_if_empty "$home/.kube"
    done
    # containerd and the pod network. A containerd package of the host's shares containerd's directories: they stay.
    host_containerd=$(have dpkg-query && dpkg-query -S /usr/bin/containerd 2>/dev/null | cut -d: -f1)
    if [ -n "$host_containerd" ]; then
        note "the host's own containerd (package $host_containerd) shares $NR_CONTAINERD_ROOT_DIR," \
            "$NR_CONTAINERD_STATE_DIR and /opt/containerd: kept; its service is stopped and disabled (systemctl" \
            "enable --now containerd where the host used it)"
    else
        remove "$NR_CONTAINERD_ROOT_DIR" "$NR_CONTAINERD_STATE_DIR" /opt/containerd
    fi
    remove "$NR_CONTAINERD_HOSTS_DIR" "$NR_CONTAINERD_CONFIG_DIR" "$NR_CNI_CONF" "$NR_POD_NETWORK_SCRIPT" \
        /var/lib/cni/networks/"$NR_CNI_NETWORK" /var/lib/cni/results/"$NR_CNI_NETWORK"-* \
        /var/lib/cni/cache/results/"$NR_CNI_NETWORK"-*
    [ ! -d /var/lib/cni ] || find /var/lib/cni -mindepth 1 -depth -type d -empty -delete 2>/dev/null
    remove_if_empty /var/lib/cni "$NR_CNI_CONF_DIR"
    remove_parent_if_empty cni "$NR_CNI_CONF_DIR"
    # etcd.
    remove "$NR_ETCD_DATA_DIR" "$NR_ETCD_PKI_DIR" "$NR_ETCD_CONFIG_DIR" "$NR_ETCD_SBIN_DIR/etcd-backup" \
        "$NR_ETCD_SBIN_DIR/etcd-restore"
    if [ -d "$NR_ETCD_BACKUP_DIR" ]; then
        if [ "$NR_REMOVE_ETCD_BACKUPS" = true ]; then remove "$NR_ETCD_BACKUP_DIR"; else
            note "kept the etcd snapshots in $NR_ETCD_BACKUP_DIR (node_reset_remove_etcd_backups: true removes them)"; fi
    fi
    remove_etcd_user
    # bootstrap_os: kernel settings for boot, swap, the bundle CA where earlier deploys put it (the system trust
    # store; its own file goes with the apt source, in reset_apt).
    if [ -e "$NR_MODULES_LOAD_FILE" ] || [ -e "$NR_SYSCTL_FILE" ]; then
        remove "$NR_MODULES_LOAD_FILE" "$NR_SYSCTL_FILE"
        note "loaded kernel modules and kernel parameters keep their current values until the next boot"
    fi
    restore_swap
    remove_legacy_ca
}

# The bundle CA in the system trust store, where earlier deploys put it; the store is rebuilt only when it was there.
remove_legacy_ca() {
    if [ -e "$NR_LEGACY_CA_FILE" ]; then
        remove "$NR_LEGACY_CA_FILE"
        # --fresh: a plain rebuild leaves the links it made for the CA dangling.
        if have update-ca-certificates; then
            update-ca-certificates --fresh >/dev/null 2>&1 && changed "rebuilt the system trust store" ||
                problem "update-ca-certificates failed"
        fi
    fi
    remove_ca_links
}

# A plain update-ca-certificates keeps the links of a local certificate that is gone: the CA's .pem and its hash link.
remove_ca_links() {
    local pem link
    pem=/etc/ssl/certs/$(basename -- "${NR_LEGACY_CA_FILE%.crt}").pem
    for link in "$pem" $(find /etc/ssl/certs -maxdepth 1 -type l -lname "*${pem##*/}" 2>/dev/null); do
        [ -L "$link" ] || continue
        case "$(readlink -- "$link")" in
            "$NR_LEGACY_CA_FILE" | "${pem##*/}" | "$pem") rm -f -- "$link" && changed "removed the trust store link $link" ;;
        esac
    done
}

# The user etcd runs as, made by the etcd role with etcd_data_dir as its home; not the etcd-server package's.
remove_etcd_user() {
    local entry
    entry=$(getent passwd "$NR_ETCD_USER" 2>/dev/null) || return 0
    [ "$(printf '%s' "$entry" | cut -d: -f6)" = "$NR_ETCD_DATA_DIR" ] || return 0
    if have dpkg-query && dpkg_installed etcd-server; then return 0; fi
    if userdel "$NR_ETCD_USER" 2>/dev/null; then changed "removed the user $NR_ETCD_USER"; else
        problem "could not remove the user $NR_ETCD_USER"; fi
    if getent group "$NR_ETCD_USER" >/dev/null 2>&1 && groupdel "$NR_ETCD_USER" 2>/dev/null; then
        changed "removed the group $NR_ETCD_USER"
    fi
}

# bootstrap_os commented out the swap entries of /etc/fstab with its marker and masked swap.target.
restore_swap() {
    local mark='  # swap off for Kubernetes (airgap.kubernetes)' tmp
    if [ -f /etc/fstab ] && grep -qF -- "$mark" /etc/fstab; then
        tmp=$(mktemp)
        # Written in place: /etc/fstab may be a bind mount.
        if sed -E 's/^# (.*)  # swap off for Kubernetes \(airgap\.kubernetes\)$/\1/' /etc/fstab >"$tmp" &&
            cat "$tmp" >/etc/fstab; then
            changed "restored the swap entries of /etc/fstab"
            swapon -a 2>/dev/null || note "swapon -a failed: swap comes back at the next boot"
        else
            problem "could not restore the swap entries of /etc/fstab"
        fi
        rm -f -- "$tmp"
    fi
    if [ "$(readlink /etc/systemd/system/swap.target 2>/dev/null)" = /dev/null ] && have systemctl; then
        systemctl unmask swap.target >/dev/null 2>&1 && changed "unmasked swap.target"
    fi
    return 0
}

# --- Packages and apt ----------------------------------------------------------------------------------------------

# Purges the packages the deploy installed: those installed now that are not in the record bootstrap_os wrote
# before its first install. Refuses (and purges nothing) when apt would take a package of the record with them.
purge_packages() {
    local record=$NR_RECORD_DIR/packages-before before now installed new gone sim extra out p
    [ "$NR_KEEP_PACKAGES" != true ] || return 0
    have dpkg-query || return 0
    if [ ! -f "$record" ]; then
        [ ! -e "$NR_APT_SOURCE" ] || note "no record of the packages this host had before the deploy ($record:" \
            "bootstrapped by a version that wrote none): every package stays"
        return 0
    fi
    if [ -n "$(ls -A /var/lib/dpkg/updates 2>/dev/null)" ]; then
        dpkg --configure -a >/dev/null 2>&1 || { problem "dpkg --configure -a failed"; return 1; }
    fi
    before=$(sort -u "$record")
    now=$(dpkg-query -W -f '${Package} ${Status}\n' 2>/dev/null | awk '$NF != "not-installed" {print $1}' | sort -u)
    installed=$(dpkg-query -W -f '${Package} ${Status}\n' 2>/dev/null | awk '$NF == "installed" {print $1}' | sort -u)
    new=$(comm -13 <(printf '%s\n' "$before") <(printf '%s\n' "$now") | grep -v '^$')
    gone=$(comm -23 <(printf '%s\n' "$before") <(printf '%s\n' "$installed") | grep -v '^$')
    [ -z "$gone" ] || note "in the record of the packages before the deploy but not installed now (removed by the" \
        "deploy, as chrony replaces systemd-timesyncd, or only their configuration files were left before; reinstall" \
        "them from a repository of your own): $(echo $gone)"
    [ -n "$new" ] || return 0
    # shellcheck disable=SC2086 # package names are words
    if ! sim=$(apt-get -s -q purge $new 2>&1); then
        problem "apt-get cannot purge the packages the deploy installed: $(tail_of "$sim")"
        return 1
    fi
    extra=$(printf '%s\n' "$sim" | awk '$1 == "Purg" || $1 == "Remv" {sub(/:.*/, "", $2); print $2}' | sort -u |
        comm -23 - <(printf '%s\n' "$new"))
    if printf '%s\n' "$sim" | grep -q '^Inst '; then
        problem "purging the packages the deploy installed would make apt install others: nothing purged" \
            "($(printf '%s\n' "$sim" | awk '$1 == "Inst" {printf "%s ", $2}'))"
        return 1
    fi
    if [ -n "$extra" ]; then
        problem "purging the packages the deploy installed would also remove $(echo $extra), which the host had" \
            "before: nothing purged (purge by hand, or set node_reset_keep_packages: true)"
        return 1
    fi
    # shellcheck disable=SC2086
    # haproxy's chroot holds the log file its service made: dpkg would leave a directory that is not empty.
    case " $(echo $new) " in *" haproxy "*) rm -f /var/lib/haproxy/dev/log ;; esac
    if out=$(DEBIAN_FRONTEND=noninteractive apt-get purge -y -q -o DPkg::Lock::Timeout=120 $new 2>&1); then
        changed "purged $(printf '%s\n' $new | wc -l) package(s) the deploy installed: $(echo $new)"
        for p in $new; do rm -f -- /var/cache/apt/archives/"$p"_*.deb; done
    else
        problem "apt-get purge failed: $(tail_of "$out" 5)"
        return 1
    fi
}

# Files the deploy rewrites in place (chrony's, haproxy's), as bootstrap_os saved them before the deploy; the
# services that read them restart when they run.
restore_saved() {
    local saved=$NR_RECORD_DIR/saved f dest restored=' '
    [ -d "$saved" ] || return 0
    while IFS= read -r f; do
        dest=${f#"$saved"}
        cmp -s -- "$f" "$dest" && continue
        if mkdir -p -- "${dest%/*}" && cp -a -- "$f" "$dest"; then
            changed "restored $dest as it was before the deploy"
            restored="$restored$dest "
        else
            problem "could not restore $dest"
        fi
    done < <(find "$saved" ! -type d)
    have systemctl || return 0
    case "$restored" in *' /etc/chrony/'* | *' /etc/default/chrony '*) systemctl try-restart chrony.service ;; esac
    case "$restored" in *" $NR_LB_CONFIG "*) systemctl try-restart haproxy.service ;; esac
    return 0
}

# The apt sources bootstrap_os moved aside come back; the bundle's source, key, CA (with apt's setting naming it) and
# package lists go.
reset_apt() {
    local f orig prefix n=0
    for f in /etc/apt/*.airgap-disabled /etc/apt/sources.list.d/*.airgap-disabled; do
        [ -e "$f" ] || continue
        orig=${f%.airgap-disabled}
        if [ -e "$orig" ]; then
            note "kept $f: $orig exists"
        elif mv -- "$f" "$orig"; then
            changed "restored the apt source $orig"
        fi
    done
    # apt names a source's lists after its URI: scheme and credentials dropped, / as _.
    prefix=$(printf '%s' "$NR_APT_REPO_URL" | sed -E 's#^[a-z0-9+]+://##; s#^[^@/]*@##; s#/+$##' | tr '/' '_')_dists_
    if [ "$prefix" != _dists_ ]; then
        for f in /var/lib/apt/lists/"$prefix"* /var/lib/apt/lists/partial/"$prefix"*; do
            [ -f "$f" ] && rm -f -- "$f" && n=$((n + 1))
        done
        [ "$n" = 0 ] || changed "removed the bundle repo's package lists ($n file(s))"
    fi
    remove "$NR_APT_SOURCE" "$NR_APT_KEY" "$NR_APT_CA_CONF" "$NR_CA_FILE"
    remove_if_empty "${NR_CA_FILE%/*}"
}

# The package manager's own files as bootstrap_os recorded them: the caches, locks and backups that apt, dpkg and ucf
# made during the deploy go, and the other sources' package lists (hard links kept in the record) come back.
restore_apt_state() {
    local record=$NR_RECORD_DIR/apt-state-before lists=$NR_RECORD_DIR/apt-lists-before f n=0 m=0
    if [ -d "$lists" ]; then
        while IFS= read -r f; do
            [ -e "/var/lib/apt/lists/$f" ] && continue
            mkdir -p -- "$(dirname -- "/var/lib/apt/lists/$f")" && cp -al -- "$lists/$f" "/var/lib/apt/lists/$f" &&
                n=$((n + 1))
        done < <(cd "$lists" && find . -type f -printf '%P\n')
        [ "$n" = 0 ] || changed "put back $n package list(s) of the host's own apt sources"
    fi
    # Directories the purged packages' scripts made and left empty (/usr/lib/modules, /var/lib/haproxy): those that
    # are new since the record and empty go; one that holds anything stays.
    if [ -f "$NR_RECORD_DIR/dirs-before" ]; then
        while IFS= read -r f; do
            [ -d "$f" ] && [ ! -L "$f" ] || continue
            [ -z "$(find "$f" ! -type d -print -quit 2>/dev/null)" ] || continue
            rm -r --one-file-system -- "$f" && changed "removed the empty directory $f, new since the deploy"
        done < <(find /etc /opt /usr/lib /usr/local /var/lib /var/cache -mindepth 1 -maxdepth 1 -type d 2>/dev/null |
                   sort | comm -13 "$NR_RECORD_DIR/dirs-before" -)
    fi
    [ -f "$record" ] || return 0
    # Deepest first, so a directory is empty when its turn comes.
    while IFS= read -r f; do
        if [ -d "$f" ] && [ ! -L "$f" ]; then
            rmdir -- "$f" 2>/dev/null && m=$((m + 1))
        else
            rm -f -- "$f" && m=$((m + 1))
        fi
    done < <(find /var/cache/apt /var/lib/apt /var/lib/dpkg /var/lib/ucf -maxdepth 2 ! -path '/var/lib/dpkg/info/*' \
               2>/dev/null | sort | comm -13 "$record" - | sort -r)
    [ "$m" = 0 ] || changed "removed $m cache, lock or backup file(s) apt, dpkg and ucf made during the deploy"
}

# The block bootstrap_os added to /etc/hosts (blockinfile's markers), written back in place: /etc/hosts is a bind
# mount in containers, where a rename fails.
reset_etc_hosts() {
    local begin="# BEGIN airgap.kubernetes bootstrap_os" end="# END airgap.kubernetes bootstrap_os" kept
    [ -f /etc/hosts ] && grep -qxF -- "$begin" /etc/hosts || return 0
    kept=$(awk -v b="$begin" -v e="$end" '$0 == b {skip = 1; next} $0 == e {skip = 0; next} !skip' /etc/hosts)
    if printf '%s\n' "$kept" > /etc/hosts; then
        changed "removed the bundle server's names from /etc/hosts"
    else
        problem "could not rewrite /etc/hosts"
    fi
}

# --- Main ----------------------------------------------------------------------------------------------------------

main() {
    local v u missing=
    [ "$(id -u)" = 0 ] || { echo "RESET-PROBLEM: node-reset.sh must run as root" >&2; exit 1; }
    for v in $NR_SETTINGS; do [ -n "${!v+set}" ] || missing="$missing $v"; done
    [ -z "$missing" ] || { echo "RESET-PROBLEM: settings missing from the environment:$missing" >&2; exit 2; }
    OURS_CHAINS="^(KUBE-|AIRGAP-|CNI-|cali-|CILIUM_|OLD_CILIUM_|FLANNEL-)${NR_MASQ_CHAIN:+|^$NR_MASQ_CHAIN\$}"

    # 1-2. No kubelet to restart the pods, no pods, then kubeadm's own reset.
    stop_unit kubelet.service
    stop_pods
    kubeadm_reset
    # 1. Our services, the API balancer if it is ours, and the shims containerd leaves running.
    for u in $(our_units); do stop_unit "$u"; done
    if lb_is_ours; then stop_unit haproxy.service; fi
    kill_shims
    # 3-4. Mounts, network namespaces, links, routes, iptables.
    unmount_runtime
    reset_network
    # 1, 5. Units, binaries, configuration and state.
    find_package_dirs "$NR_KUBE_DIR" "$NR_KUBELET_DIR" /run/kubernetes /var/log/pods /var/log/containers \
        "$NR_AUDIT_LOG_DIR" "$NR_CONTAINERD_HOSTS_DIR" "$NR_CONTAINERD_CONFIG_DIR" "$NR_CONTAINERD_ROOT_DIR" \
        "$NR_CONTAINERD_STATE_DIR" /opt/containerd "$NR_ETCD_DATA_DIR" "$NR_ETCD_PKI_DIR" "$NR_ETCD_CONFIG_DIR" \
        "$NR_ETCD_BACKUP_DIR" "$NR_ETCD_INSTALL_DIR" "$NR_ETCD_INSTALL_DIR"/v[0-9]* "$NR_DOWNLOAD_DIR" "$NR_RECORD_DIR"
    remove_units
    remove_release_files
    remove_state
    reset_etc_hosts
    # 6. Packages last (apt needs no source to purge); the bundle's apt source and the record after them.
    if purge_packages; then
        restore_saved
        reset_apt
        restore_apt_state
        [ "$NR_KEEP_PACKAGES" = true ] || remove "$NR_RECORD_DIR"
    fi
    [ "$problems" = 0 ] || exit 1
    exit 0
}

# NODE_RESET_LIB=1 only defines the functions (for tests).
[ "${NODE_RESET_LIB:-}" = 1 ] || main "$@"
