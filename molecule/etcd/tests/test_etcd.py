"""The etcd scenario's specification: a 3-member TLS cluster that serves only clients with certificates,
replicates, survives a member outage, renews a certificate near its expiry, backs itself up and comes back from a
snapshot.

Runs after converge and idempotence; the tests go in file order and the last one restores the cluster."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import testinfra

MEMBERS = {"mol-etcd1": "172.29.2.11", "mol-etcd2": "172.29.2.12", "mol-etcd3": "172.29.2.13"}
PKI = "/etc/etcd/pki"
BACKUPS = "/var/backups/etcd"
RETENTION = 3  # etcd_backup_retention in molecule.yml


def node(name: str):
    return testinfra.get_host(f"docker://{name}")


def etcdctl(name: str, args: str, certs: bool = True):
    """Runs etcdctl on a member, with the admin client certificate from etcdctl.env unless certs is False."""
    env = "set -a; . /etc/etcd/etcdctl.env; set +a; " if certs else "export ETCDCTL_API=3; "
    if "--endpoints" in args:
        # etcdctl 3.4 refuses a flag that an ETCDCTL_* variable also sets.
        env += "unset ETCDCTL_ENDPOINTS; "
    return node(name).run("sh -c %s", env + "etcdctl " + args)


def wait_healthy(name: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = etcdctl(name, "endpoint health --cluster")
        if result.rc == 0:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"cluster not healthy from {name} after {timeout}s: {result.stdout}{result.stderr}")
        time.sleep(1)


@pytest.mark.parametrize("name", sorted(MEMBERS))
def test_etcd_service_is_enabled_and_running(name):
    service = node(name).service("etcd")
    assert service.is_enabled
    assert service.is_running


def test_cluster_has_three_members_with_tls_urls():
    members = json.loads(etcdctl("mol-etcd1", "member list -w json").stdout)["members"]
    assert sorted(m["name"] for m in members) == sorted(MEMBERS)
    for m in members:
        assert m["peerURLs"] == [f"https://{MEMBERS[m['name']]}:2380"]
        assert m["clientURLs"] == [f"https://{MEMBERS[m['name']]}:2379"]


@pytest.mark.parametrize("name", sorted(MEMBERS))
def test_endpoint_health_passes_with_client_certs(name):
    result = etcdctl(name, f"--endpoints https://{MEMBERS[name]}:2379 endpoint health")
    assert result.rc == 0, result.stderr
    assert "is healthy" in result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted(MEMBERS))
def test_endpoint_health_fails_without_client_certs(name):
    # The CA is trusted, so only the missing client certificate can make it fail.
    result = etcdctl(name, f"--endpoints https://{MEMBERS[name]}:2379 --cacert {PKI}/ca.crt "
                           "--dial-timeout 3s --command-timeout 5s endpoint health", certs=False)
    assert result.rc != 0
    plain = etcdctl(name, f"--endpoints http://{MEMBERS[name]}:2379 --dial-timeout 3s --command-timeout 5s "
                          "endpoint health", certs=False)
    assert plain.rc != 0


@pytest.mark.parametrize("name", sorted(MEMBERS))
def test_keys_are_private_and_certs_name_the_member(name):
    host = node(name)
    for key in ("server.key", "peer.key", "admin.key"):
        assert host.file(f"{PKI}/{key}").mode == 0o600
    assert host.file(f"{PKI}/server.key").user == "etcd"
    assert host.file(f"{PKI}/ca.key").exists == (name == "mol-etcd1")
    text = host.check_output(f"openssl x509 -in {PKI}/server.crt -noout -text")
    for san in (f"DNS:{name}", "DNS:localhost", f"IP Address:{MEMBERS[name]}", "IP Address:127.0.0.1"):
        assert san in text
    assert host.run(f"openssl verify -CAfile {PKI}/ca.crt {PKI}/server.crt {PKI}/peer.crt {PKI}/admin.crt").rc == 0


@pytest.mark.parametrize("name", sorted(MEMBERS))
def test_the_binaries_root_runs_belong_to_root_whatever_uid_built_the_tarball(name):
    # The release tarball carries its builder's uid; unpacked as is, that uid could rewrite what root runs.
    lines = node(name).check_output("stat -L -c '%U:%G %a %n' /opt/etcd/v*/* $(command -v etcd etcdctl)")
    for line in lines.splitlines():
        owner, mode, path = line.split(" ", 2)
        assert owner == "root:root" and int(mode, 8) & 0o022 == 0, line


def test_key_written_on_one_member_reads_on_another():
    assert etcdctl("mol-etcd1", "put /test/replication written-on-etcd1").rc == 0
    for name in ("mol-etcd2", "mol-etcd3"):
        assert etcdctl(name, "get --print-value-only /test/replication").stdout.strip() == "written-on-etcd1"


def test_cluster_stays_healthy_with_one_member_down_and_it_rejoins():
    stopped = node("mol-etcd3")
    stopped.run("systemctl stop etcd")
    try:
        up = ",".join(f"https://{MEMBERS[n]}:2379" for n in ("mol-etcd1", "mol-etcd2"))
        assert etcdctl("mol-etcd1", f"--endpoints {up} endpoint health").rc == 0
        assert etcdctl("mol-etcd1", "put /test/outage written-while-etcd3-down").rc == 0
    finally:
        assert stopped.run("systemctl start etcd").rc == 0
    wait_healthy("mol-etcd3")
    assert etcdctl("mol-etcd3", "get --print-value-only /test/outage").stdout.strip() == "written-while-etcd3-down"


def test_backup_timer_is_scheduled():
    for name in MEMBERS:
        timer = node(name).service("etcd-backup.timer")
        assert timer.is_enabled and timer.is_running


def _snapshots(name: str) -> list[str]:
    out = node(name).check_output(f"ls -1 {BACKUPS}")
    return sorted(f for f in out.split() if f.startswith("etcd-") and f.endswith(".db"))


def test_backup_service_saves_snapshots_and_keeps_the_newest():
    host = node("mol-etcd1")
    for _ in range(RETENTION + 1):
        result = host.run("systemctl start etcd-backup.service")
        assert result.rc == 0, host.run("journalctl -u etcd-backup.service --no-pager -n 20").stdout
    snaps = _snapshots("mol-etcd1")
    assert len(snaps) == RETENTION
    status = etcdctl("mol-etcd1", f"snapshot status {BACKUPS}/{snaps[-1]} -w json")
    assert status.rc == 0 and json.loads(status.stdout)["totalKey"] > 0


def run_layer_02(limit: str) -> subprocess.CompletedProcess:
    """Runs the scenario's converge playbook (layer 02) again, limited as add-node limits it, with molecule's own
    inventory and settings."""
    ephemeral = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
    project = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
    env = dict(os.environ, ANSIBLE_CONFIG=str(ephemeral / "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=str(project / ".collections"), ANSIBLE_ROLES_PATH=str(project / "roles"))
    return subprocess.run(["ansible-playbook", "-i", str(ephemeral / "inventory"), "--limit", limit,
                           str(Path(__file__).resolve().parents[1] / "converge.yml")],
                          env=env, capture_output=True, text=True, timeout=900)


def test_a_member_the_cluster_removed_comes_back_as_a_new_member_with_its_old_data_kept_aside():
    """What a remove-node that stopped after the member removal leaves: a host not reset, with the data of a member
    the cluster no longer lists, which etcd can never start with. Layer 02 for that host alone (add-node) moves the
    data into the backup directory and joins the host as a new member."""
    members = json.loads(etcdctl("mol-etcd1", "member list -w json").stdout)["members"]
    old_id = next(m["ID"] for m in members if m["name"] == "mol-etcd3")
    # etcd refuses a membership change until every member has been connected for a few seconds ("unhealthy
    # cluster"), as right after an earlier test restarted one: the removal is retried for a while.
    wait_healthy("mol-etcd1")
    deadline = time.monotonic() + 60
    while (removed := etcdctl("mol-etcd1", f"member remove {old_id:x}")).rc != 0:
        assert time.monotonic() < deadline, removed.stdout + removed.stderr
        time.sleep(2)
    result = run_layer_02("mol-etcd3")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "joins the cluster as a new member" in result.stdout
    wait_healthy("mol-etcd1")
    members = json.loads(etcdctl("mol-etcd1", "member list -w json").stdout)["members"]
    assert sorted(m["name"] for m in members) == sorted(MEMBERS)
    assert next(m["ID"] for m in members if m["name"] == "mol-etcd3") != old_id
    # The new member has the cluster's data; the old data is kept, not deleted.
    assert etcdctl("mol-etcd3", "get --print-value-only /test/replication").stdout.strip() == "written-on-etcd1"
    assert node("mol-etcd3").run(f"ls -d {BACKUPS}/removed-member-*/member/wal").rc == 0


def _not_after(name: str, path: str) -> datetime:
    """The certificate's notAfter, naive UTC."""
    out = node(name).check_output(f"openssl x509 -in {path} -noout -enddate")  # notAfter=Dec  2 19:08:14 2026 GMT
    return datetime.strptime(out.split("=", 1)[1].strip(), "%b %d %H:%M:%S %Y %Z")


def _started(name: str) -> str:
    return node(name).check_output("systemctl show -p ActiveEnterTimestampMonotonic --value etcd")


def test_a_certificate_near_its_expiry_is_renewed_on_a_rerun_and_only_its_member_restarts():
    """mol-etcd2's server certificate re-signed by hand with the etcd CA for one day, as one near its end: a rerun of
    layer 02 signs it again (community.crypto alone keeps a certificate that matches its request, whatever its
    dates), names it with its old and new expiry, restarts that member alone, and the cluster is healthy."""
    cert = f"{PKI}/server.crt"
    csr = node("mol-etcd2").check_output(f"cat {PKI}/server.csr")
    short = subprocess.run(["docker", "exec", "-i", "mol-etcd1", "openssl", "x509", "-req", "-CA", f"{PKI}/ca.crt",
                            "-CAkey", f"{PKI}/ca.key", "-days", "1", "-copy_extensions", "copy"],
                           input=csr + "\n", capture_output=True, text=True, check=True).stdout
    subprocess.run(["docker", "exec", "-i", "mol-etcd2", "sh", "-c", f"cat > {cert}"], input=short, text=True,
                   check=True)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    assert _not_after("mol-etcd2", cert) < now + timedelta(days=2)
    before = {name: _started(name) for name in ("mol-etcd1", "mol-etcd2")}
    result = run_layer_02("etcd")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert f"Renewed mol-etcd2's {cert} (old expiry" in result.stdout
    assert "etcd restarts with it, one member at a time" in result.stdout
    assert result.stdout.count("Renewed ") == 1, "only the certificate near its expiry is renewed"
    assert _not_after("mol-etcd2", cert) > now + timedelta(days=300)  # etcd_cert_validity_days: 365
    assert node("mol-etcd2").run(f"openssl verify -CAfile {PKI}/ca.crt {cert}").rc == 0
    assert _started("mol-etcd2") != before["mol-etcd2"], "mol-etcd2 was not restarted with its new certificate"
    assert _started("mol-etcd1") == before["mol-etcd1"], "a member whose certificates did not change was restarted"
    wait_healthy("mol-etcd1")
    served = subprocess.run(["docker", "exec", "mol-etcd1", "sh", "-c",
                             f"openssl s_client -connect {MEMBERS['mol-etcd2']}:2379 -CAfile {PKI}/ca.crt "
                             f"-cert {PKI}/admin.crt -key {PKI}/admin.key </dev/null 2>/dev/null "
                             "| openssl x509 -noout -enddate"], capture_output=True, text=True)
    assert served.stdout.strip() == node("mol-etcd2").check_output(f"openssl x509 -in {cert} -noout -enddate"), \
        "etcd on mol-etcd2 does not serve the renewed certificate"


def test_restore_from_snapshot_brings_back_the_snapshot_data():
    assert etcdctl("mol-etcd1", "put /test/restore before-snapshot").rc == 0
    assert node("mol-etcd1").run("systemctl start etcd-backup.service").rc == 0
    snapshot = f"{BACKUPS}/{_snapshots('mol-etcd1')[-1]}"
    assert etcdctl("mol-etcd1", "put /test/restore after-snapshot").rc == 0
    # The documented procedure (docs/etcd.md): the same snapshot on every member, etcd stopped on every member,
    # then etcd-restore on each.
    restore_copy = f"{BACKUPS}/restore-test.db"
    for name in MEMBERS:
        subprocess.run(f"docker exec mol-etcd1 cat {shlex.quote(snapshot)} | "
                       f"docker exec -i {name} sh -c 'cat > {restore_copy}'", shell=True, check=True)
    for name in MEMBERS:
        assert node(name).run("systemctl stop etcd").rc == 0
    for name in MEMBERS:
        result = node(name).run(f"etcd-restore {restore_copy}")
        assert result.rc == 0, result.stdout + result.stderr
    wait_healthy("mol-etcd2")
    assert etcdctl("mol-etcd2", "get --print-value-only /test/restore").stdout.strip() == "before-snapshot"
    assert etcdctl("mol-etcd3", "get --print-value-only /test/replication").stdout.strip() == "written-on-etcd1"
    assert len(json.loads(etcdctl("mol-etcd1", "member list -w json").stdout)["members"]) == 3
    # The previous data was kept aside, not deleted.
    assert node("mol-etcd1").run("ls -d /var/lib/etcd.before-restore-*/member").rc == 0
