"""End to end, on one shared lab: `run.sh deploy-cluster` deploys layers 00-05 on 3 control planes (also the etcd
members) and 2 workers, with no route out, from a bundle built by `run.sh build-bundle` (05 with the lab's addons:
none, as its bundle can carry no addon image; tests/lab/test_manifests_apiserver.py applies them to a real API server). The lab runs the real
Kubernetes v1.20.2 (built from Debian's source package). A run killed in 01 resumes there; a rerun skips every
step; a second full run changes nothing; the cluster works (pods, Services, NodePorts, Secrets encrypted in etcd),
survives a stopped control plane, and takes a changed API server flag one control plane at a time. Then the day-2
commands on the same cluster: add-node of a spare worker (node6, left out of the first deploy) while the worker
node5 hangs (its container paused), remove-node of a worker, of a control plane that is an etcd member, and (--force)
of a stopped node, and remove-cluster, which must leave every node as it was before the deploy."""
from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from ansible_collections.airgap.kubernetes.tools.lab import cluster, upstream

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import node_state as node_states  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
NAME = "e2e-k8s"
LAYERS = ("00-ssh", "01-bootstrap-os", "02-etcd", "03-control-plane", "04-network", "05-apps")
CONTROL_PLANES = ("node1", "node2", "node3")
WORKERS = ("node4", "node5")
PYTHONLESS = "node5"
SPARE = "node6"
# The existing worker that hangs during add-node of SPARE (node4 serves the tests through its balancer).
DOWN = "node5"
BUSYBOX = "docker.io/library/busybox:1.35.0"
# The task of layer 01 on the nodes that the first deploy is killed in (roles/bootstrap_os/tasks/trust.yml).
KILL_AT = "Take the bundle CA out of the system trust store"

pytestmark = [pytest.mark.e2e, pytest.mark.lab]


@pytest.fixture(scope="module")
def prepared():
    """5 nodes (node1-3 control planes and etcd, node4-5 workers) + bundle host on an --internal network."""
    cluster.lab.down(NAME)
    try:
        ready = cluster.prepare(NAME, nodes=6, control_planes=3)
        # node6 is the spare that add-node adds later: out of the inventory for the deploy.
        data = yaml.safe_load(ready.inventory.read_text())
        spare = data["all"]["hosts"].pop(SPARE)
        del data["all"]["children"]["kube_node"]["hosts"][SPARE]
        ready.inventory.write_text(yaml.safe_dump(data, sort_keys=False))
        (ready.inventory.parent / "spare.yml").write_text(yaml.safe_dump(spare))
        # node5 starts like a minimal image without python3: layer 01 must bring it from the bundle.
        purge = ready.lab.ssh_args(PYTHONLESS) + [
            "DEBIAN_FRONTEND=noninteractive apt-get purge -y -q "
            "$(dpkg-query -W -f '${Package}\\n' 'python3*' 'libpython3*') && ! command -v python3"]
        subprocess.run(purge, check=True, capture_output=True, timeout=300)
        # Each node as it is before the deploy, for remove-cluster to be compared with.
        BEFORE.update({h: node_state(ready, h) for h in CONTROL_PLANES + WORKERS + (SPARE, "bundle")})
        print(f"\nprepared in {', '.join(f'{k} {v:.1f} s' for k, v in ready.seconds.items())}")
        yield ready
    finally:
        cluster.lab.down(NAME)


BEFORE: dict[str, dict[str, list[str]]] = {}


def node_state(prepared, host: str) -> dict[str, list[str]]:
    return node_states.node_state(prepared.lab.ssh_args(host))


def deploy_argv(prepared, *extra: str) -> list[str]:
    return [str(REPO / "run.sh"), "deploy-cluster", "-i", str(prepared.inventory), "--bundle",
            str(prepared.bundle_dir), *extra]


def deploy(prepared, *extra: str) -> subprocess.CompletedProcess:
    t0 = time.monotonic()
    proc = subprocess.run(deploy_argv(prepared, *extra), cwd=REPO, text=True, capture_output=True,
                          env={**os.environ, "NO_COLOR": "1"}, timeout=2400, stdin=subprocess.DEVNULL)
    print(f"deploy-cluster {' '.join(extra)}: exit {proc.returncode} in {time.monotonic() - t0:.1f} s")
    print("\n".join(line for line in proc.stdout.splitlines() if line.startswith("==")))
    return proc


def logs_dir(prepared):
    """Where run.sh writes one log per layer for this inventory."""
    return prepared.inventory.parent / ".airgap" / "logs"


def log_of(prepared, step: str) -> str:
    return (logs_dir(prepared) / f"{step}.log").read_text()


def ssh(prepared, host: str, script: str, timeout: int = 120) -> subprocess.CompletedProcess:
    # stdin from /dev/null: ssh makes the stdin it inherits non-blocking, and an ansible-playbook started beside it
    # (the roll test probes while it deploys) then refuses to run.
    return subprocess.run(prepared.lab.ssh_args(host) + [script], text=True, capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def kubeconfig(prepared) -> Path:
    return prepared.inventory.parent / ".airgap" / "admin.conf"


def kubectl(prepared, *args: str, check: bool = True, timeout: int = 120) -> subprocess.CompletedProcess:
    """The lab's kubectl on this controller, through the admin kubeconfig layer 03 fetched."""
    proc = subprocess.run([str(upstream._kube_bin() / "kubectl"), "--kubeconfig", str(kubeconfig(prepared)), *args],
                          text=True, capture_output=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
    return proc


def wait_for(what: str, probe, timeout: float = 180, every: float = 3):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")


def lock_free(path: Path) -> bool:
    with open(path, "rb") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fh, fcntl.LOCK_UN)
        return True


@pytest.fixture(scope="module")
def deployed(prepared):
    """The whole deploy, first killed in 01 and then resumed: what every later test uses."""
    # Into a file, not a pipe: a pipe nobody reads until the kill stalls the deploy once it holds 64 KiB.
    out = prepared.lab.dir / "deploy-killed.out"
    with open(out, "w", encoding="utf-8") as fh:
        proc = subprocess.Popen(deploy_argv(prepared), cwd=REPO, text=True, stdout=fh, stderr=subprocess.STDOUT,
                                env={**os.environ, "NO_COLOR": "1"}, start_new_session=True)
    log = logs_dir(prepared) / "01-bootstrap-os.log"
    deadline = time.monotonic() + 900
    # Killed once the nodes' own bootstrap is under way: the bundle server is up, the nodes half done (this task comes
    # right after the bundle CA's file is written on the nodes).
    while not (log.exists() and KILL_AT in log.read_text()):
        assert proc.poll() is None, f"deploy ended before 01 ran {KILL_AT!r} on the nodes:\n{out.read_text()[-6000:]}"
        assert time.monotonic() < deadline, f"01-bootstrap-os did not run {KILL_AT!r} on the nodes in 900 s"
        time.sleep(0.5)
    time.sleep(3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = out.read_text()
    # The playbook runs in a process group of its own and keeps the inventory's lock after run.sh dies, so no second
    # run starts beside it: kill it too, as the controller crashing would, and wait until the lock is free.
    lock = prepared.inventory.parent / ".airgap" / "lock"
    os.killpg(int(re.search(r"ansible-playbook pid (\d+)", lock.read_text())[1]), signal.SIGKILL)
    wait_for("the inventory's lock free once the killed playbook's processes are gone", lambda: lock_free(lock),
             timeout=120, every=1)
    steps = subprocess.run([str(REPO / "run.sh"), "steps", "-i", str(prepared.inventory)], cwd=REPO, text=True,
                           capture_output=True, env={**os.environ, "NO_COLOR": "1"})
    # What a dpkg run cut off by the kill leaves behind: its journal. apt refuses to work until it is finished.
    assert ssh(prepared, "node1", "touch /var/lib/dpkg/updates/0000").returncode == 0
    resumed = deploy(prepared)
    return {"first": first, "steps": steps.stdout, "resumed": resumed}


def test_a_deploy_killed_in_01_resumes_there_and_finishes_every_layer(prepared, deployed):
    assert "== 00-ssh done" in deployed["first"] and "== 01-bootstrap-os done" not in deployed["first"]
    assert re.search(r"01-bootstrap-os\s+running", deployed["steps"]), deployed["steps"]
    resumed = deployed["resumed"]
    assert resumed.returncode == 0, resumed.stdout[-6000:] + resumed.stderr[-2000:]
    assert re.search(r"== skip 00-ssh: done .*, inputs unchanged", resumed.stdout)
    for step in LAYERS[1:]:
        assert f"== {step} done" in resumed.stdout, step
    assert "== stop at" not in resumed.stdout
    assert f"export KUBECONFIG={kubeconfig(prepared)}" in resumed.stdout
    assert ssh(prepared, "node1", "ls -A /var/lib/dpkg/updates").stdout.strip() == ""


def test_the_admin_kubeconfig_is_private_and_reaches_the_cluster(prepared, deployed):
    assert kubeconfig(prepared).stat().st_mode & 0o777 == 0o600
    server = yaml.safe_load(kubeconfig(prepared).read_text())["clusters"][0]["cluster"]["server"]
    assert server == f"https://{prepared.lab.host('node1').ip}:6443"


def test_every_node_is_ready_at_the_labs_version(prepared, deployed):
    nodes = json.loads(kubectl(prepared, "get", "nodes", "-o", "json").stdout)["items"]
    seen = {n["metadata"]["name"]: n for n in nodes}
    assert sorted(seen) == sorted(CONTROL_PLANES + WORKERS)
    for name, node in seen.items():
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
        assert ready == "True", name
        assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.20.2"
    for name in CONTROL_PLANES:
        assert {"key": "node-role.kubernetes.io/master", "effect": "NoSchedule"} in seen[name]["spec"]["taints"]


def test_a_node_without_python3_got_it_from_the_bundle(prepared, deployed):
    assert f"python3 is missing on {PYTHONLESS}: layer 01 installs it from the bundle's apt repo" in \
        log_of(prepared, "00-ssh")
    out = ssh(prepared, PYTHONLESS, "command -v python3 && apt-cache policy python3")
    assert out.returncode == 0, out.stderr
    assert "/apt" in out.stdout and "deb.debian.org" not in out.stdout, out.stdout


def test_every_kubeconfig_on_a_node_goes_through_its_local_load_balancer(prepared, deployed):
    out = ssh(prepared, "node4", "grep -h 'server:' /etc/kubernetes/kubelet.conf; "
                                 "systemctl is-active haproxy; ss -ltnH 'sport = :6444'")
    assert out.returncode == 0, out.stderr
    assert "server: https://localhost:6444" in out.stdout and "active" in out.stdout
    assert "127.0.0.1:6444" in out.stdout
    proxy = kubectl(prepared, "-n", "kube-system", "get", "configmap", "kube-proxy", "-o", "json").stdout
    assert "https://localhost:6444" in json.loads(proxy)["data"]["kubeconfig.conf"]


def test_etcd_is_layer_02s_tls_cluster_with_every_member(prepared, deployed):
    out = ssh(prepared, "node1", "set -a; . /etc/etcd/etcdctl.env; set +a; etcdctl endpoint health --cluster")
    assert out.returncode == 0, out.stderr
    health = out.stdout + out.stderr  # etcdctl prints endpoint health on stderr
    assert health.count("is healthy") == len(CONTROL_PLANES) and "https://" in health, health
    manifest = ssh(prepared, "node2", "cat /etc/kubernetes/manifests/kube-apiserver.yaml").stdout
    assert "--etcd-servers=https://" in manifest and "/etc/kubernetes/manifests/etcd.yaml" not in \
        ssh(prepared, "node2", "ls /etc/kubernetes/manifests").stdout


WORKLOAD = f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: default}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      topologySpreadConstraints:
        - {{maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: ScheduleAnyway,
            labelSelector: {{matchLabels: {{app: web}}}}}}
      containers:
        - name: web
          image: {BUSYBOX}
          command: [sh, -c, 'echo "$HOSTNAME" > /tmp/index.html && exec httpd -f -vv -p 8080 -h /tmp']
          ports: [{{containerPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
"""


@pytest.fixture(scope="module")
def workload(prepared, deployed):
    manifest = prepared.lab.dir / "web.yaml"
    manifest.write_text(WORKLOAD)
    kubectl(prepared, "apply", "-f", str(manifest))
    kubectl(prepared, "rollout", "status", "deployment/web", "--timeout=180s", timeout=200)
    pods = json.loads(kubectl(prepared, "get", "pods", "-l", "app=web", "-o", "json").stdout)["items"]
    return [{"name": p["metadata"]["name"], "node": p["spec"]["nodeName"], "ip": p["status"]["podIP"]}
            for p in pods]


def test_a_three_replica_deployment_runs_on_the_workers(prepared, workload):
    assert len(workload) == 3
    assert {p["node"] for p in workload} == set(WORKERS)


def test_its_image_came_from_the_bundle_registry_with_always_pull_images_on(prepared, workload):
    manifest = ssh(prepared, "node1", "cat /etc/kubernetes/manifests/kube-apiserver.yaml").stdout
    assert re.search(r"--enable-admission-plugins=\S*AlwaysPullImages", manifest)
    pod = json.loads(kubectl(prepared, "get", "pod", workload[0]["name"], "-o", "json").stdout)
    assert pod["spec"]["containers"][0]["imagePullPolicy"] == "Always"
    log = ssh(prepared, "bundle", "cat /var/log/nginx/access.log /var/log/nginx/*.log 2>/dev/null; "
                                  "journalctl -u docker-registry --no-pager -o cat 2>/dev/null").stdout
    assert re.search(r"library/busybox/manifests/1\.35\.0", log), "no busybox pull in the bundle registry's logs"


def http_get(prepared, pod: str, host: str, port: int) -> str:
    """The body of GET / from inside a pod, with busybox nc (the static busybox's wget crashes in a bare rootfs)."""
    script = f'(printf "GET / HTTP/1.0\\r\\n\\r\\n"; sleep 1) | nc -w 5 {host} {port} | tail -n 1'
    return kubectl(prepared, "exec", pod, "--", "sh", "-c", script).stdout.strip()


def test_a_pod_reaches_a_pod_on_the_other_worker_by_ip(prepared, workload):
    by_node = {p["node"]: p for p in workload}
    src, dst = by_node[WORKERS[0]], by_node[WORKERS[1]]
    assert http_get(prepared, src["name"], dst["ip"], 8080) == dst["name"]
    # Pod IPs are preserved between nodes: the server logged the client pod's own address, not its node's.
    assert re.search(rf"\b{re.escape(src['ip'])}\]?:\d+: url:/", kubectl(prepared, "logs", dst["name"]).stdout)


def test_a_clusterip_service_answers_through_kube_proxy(prepared, workload):
    service = json.loads(kubectl(prepared, "get", "service", "web", "-o", "json").stdout)
    ip = service["spec"]["clusterIP"]
    assert http_get(prepared, workload[0]["name"], ip, 80) in {p["name"] for p in workload}
    assert ssh(prepared, "node4", "iptables-save -t nat | grep -c KUBE-SERVICES").stdout.strip() != "0"


def test_a_nodeport_answers_from_another_node(prepared, workload):
    service = json.loads(kubectl(prepared, "get", "service", "web", "-o", "json").stdout)
    port = service["spec"]["ports"][0]["nodePort"]
    worker_ip = prepared.lab.host("node4").ip
    out = ssh(prepared, "node2", f"curl -sf --max-time 5 http://{worker_ip}:{port}/")
    assert out.returncode == 0 and out.stdout.strip() in {p["name"] for p in workload}, out.stderr


def test_a_secret_is_encrypted_in_etcd(prepared, deployed):
    marker = "airgap-plaintext-marker-7f3a"
    kubectl(prepared, "create", "secret", "generic", "e2e-secret", f"--from-literal=v={marker}")
    out = ssh(prepared, "node1", "set -a; . /etc/etcd/etcdctl.env; set +a; "
                                 "etcdctl get /registry/secrets/default/e2e-secret --print-value-only | base64 -w0")
    assert out.returncode == 0, out.stderr
    raw = base64.b64decode(out.stdout)
    assert raw.startswith(b"k8s:enc:secretbox:v1:") and marker.encode() not in raw
    assert kubectl(prepared, "get", "secret", "e2e-secret", "-o", "jsonpath={.data.v}").stdout == \
        base64.b64encode(marker.encode()).decode()
    keys = ssh(prepared, "node2", "stat -c %a /etc/kubernetes/encryption/keys.json; "
                                  "md5sum /etc/kubernetes/encryption/keys.json | cut -c1-32").stdout.split()
    assert keys[0] == "600"
    assert ssh(prepared, "node3", "md5sum /etc/kubernetes/encryption/keys.json | cut -c1-32").stdout.split()[0] == keys[1]


ETCD_CLIENT = "/etc/kubernetes/pki/etcd-external/apiserver-etcd-client"


def test_each_control_plane_keeps_an_etcd_client_key_of_its_own_that_the_joins_never_carried(prepared, deployed):
    """The joins of node2 and node3 uploaded the control-plane certificates without node1's etcd client certificate
    (kubeadm stores a missing file as empty, and a joining node keeps its own): each control plane's certificate
    holds the public key of its own key, and the three keys differ."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    def public(key) -> bytes:
        return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    keys = {}
    for host in CONTROL_PLANES:
        out = ssh(prepared, host, f"cat {ETCD_CLIENT}.key; echo ===; cat {ETCD_CLIENT}.crt")
        assert out.returncode == 0, out.stderr
        key_pem, cert_pem = out.stdout.split("===\n")
        keys[host] = public(serialization.load_pem_private_key(key_pem.encode(), None).public_key())
        assert public(x509.load_pem_x509_certificate(cert_pem.encode()).public_key()) == keys[host], host
    assert len(set(keys.values())) == len(CONTROL_PLANES), "two control planes share an etcd client key"
    # The upload of this deploy's joins, alive for 2 h: every control-plane secret but the etcd client's.
    data = json.loads(kubectl(prepared, "-n", "kube-system", "get", "secret", "kubeadm-certs", "-o", "json").stdout)["data"]
    assert not data.get("external-etcd.key") and not data.get("external-etcd.crt"), sorted(data)
    assert data["ca.key"] and data["sa.key"] and data["external-etcd-ca.crt"], sorted(data)


def test_a_rerun_with_nothing_changed_skips_every_step(prepared, deployed):
    proc = deploy(prepared)
    assert proc.returncode == 0
    for step in LAYERS:
        assert re.search(f"== skip {step}: done .*, inputs unchanged", proc.stdout), proc.stdout


def test_a_second_full_run_reports_changed_0_on_every_host(prepared, deployed):
    proc = deploy(prepared, "--from", "00-ssh")
    assert proc.returncode == 0, proc.stdout[-4000:]
    for step in LAYERS:
        hosts = cluster.play_recap(log_of(prepared, step))
        assert hosts, f"no PLAY RECAP in {step}'s log"
        changed = {h: c["changed"] for h, c in hosts.items() if c["changed"] or c["failed"] or c["unreachable"]}
        assert changed == {}, f"{step}: second run changed or failed on {changed}"


def test_a_layer_runs_by_its_collection_name_with_plain_ansible_playbook(prepared, deployed):
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "NO_COLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
           "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(prepared.inventory.parent / ".airgap" / "facts")}
    proc = subprocess.run(["ansible-playbook", "-i", str(prepared.inventory), "airgap.kubernetes.network"], cwd=REPO,
                          text=True, capture_output=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    hosts = cluster.play_recap(proc.stdout)
    assert set(hosts) == set(CONTROL_PLANES + WORKERS)
    assert all(c["changed"] == 0 and c["failed"] == 0 for c in hosts.values()), hosts


def worker_kubectl(prepared, script: str, timeout: int = 60) -> subprocess.CompletedProcess:
    """kubectl on node4 with the admin credentials, through node4's own load balancer (localhost:6444)."""
    return ssh(prepared, "node4", f"kubectl --kubeconfig /root/admin-lb.conf {script}", timeout=timeout)


def test_the_api_stays_up_through_a_workers_balancer_while_a_control_plane_is_down(prepared, deployed):
    admin = yaml.safe_load(kubeconfig(prepared).read_text())
    admin["clusters"][0]["cluster"]["server"] = "https://localhost:6444"
    copy = ssh(prepared, "node4", "umask 077; cat > /root/admin-lb.conf <<'EOF'\n" + yaml.safe_dump(admin) + "EOF")
    assert copy.returncode == 0, copy.stderr
    container = prepared.lab.host("node1").container
    subprocess.run(["docker", "stop", "-t", "5", container], check=True, capture_output=True)
    try:
        nodes = wait_for("nodes listed through node4's balancer",
                         lambda: worker_kubectl(prepared, "get nodes -o name").stdout, timeout=60)
        assert "node/node5" in nodes
        worker_kubectl(prepared, f"run e2e-while-down --image={BUSYBOX} --restart=Never -- sleep 3600")
        wait_for("the new pod is scheduled with node1 down", lambda: worker_kubectl(
            prepared, "get pod e2e-while-down -o jsonpath={.spec.nodeName}").stdout.strip() in WORKERS, timeout=120)
    finally:
        subprocess.run(["docker", "start", container], check=True, capture_output=True)
    wait_for("node1 Ready again", lambda: '"True"' in kubectl(
        prepared, "get", "node", "node1", "-o", "jsonpath=\"{.status.conditions[?(@.type=='Ready')].status}\"",
        check=False).stdout, timeout=240)
    wait_for("node1's API server healthy again", lambda: kubectl(
        prepared, "get", "--raw", "/livez", check=False).stdout.strip() == "ok", timeout=120)
    health = ssh(prepared, "node2", "set -a; . /etc/etcd/etcdctl.env; set +a; etcdctl endpoint health --cluster")
    assert (health.stdout + health.stderr).count("is healthy") == 3


def running_step(prepared, since: float) -> str:
    """The layer a deploy started at `since` runs now: the last one whose log it has written."""
    logs = logs_dir(prepared)
    written = [step for step in LAYERS if (logs / f"{step}.log").exists()
               and (logs / f"{step}.log").stat().st_mtime >= since]
    return written[-1] if written else "before 00-ssh"


def test_a_changed_apiserver_flag_is_rolled_one_control_plane_at_a_time_and_the_api_stays_up(prepared, deployed):
    """The API through node4's balancer, read every second for the whole deploy (a quorum read of a namespace from
    etcd, as clients read): every read must succeed, the ones while layer 03 rolls the change included. /livez is not
    the probe: its etcd check has failed for a second on an API server no task touched (layer 01, under load) while
    the API served reads."""
    extra = prepared.inventory.parent / "group_vars" / "all" / "e2e-roll.yml"
    extra.write_text("---\nkube_apiserver_extra_args:\n  default-not-ready-toleration-seconds: 120\n")
    failures, probes, stop = [], {}, threading.Event()
    since = time.time() - 1

    def probe():
        while not stop.is_set():
            out = worker_kubectl(prepared, "get --raw /api/v1/namespaces/kube-system --request-timeout=10s",
                                 timeout=30)
            step = running_step(prepared, since)
            probes[step] = probes.get(step, 0) + 1
            if '"name":"kube-system"' not in out.stdout.replace(" ", ""):
                # kubectl quotes an error body with its newlines escaped.
                text = (out.stdout + out.stderr).replace("\\n", "\n")
                failures.append({"step": step, "at": time.strftime("%H:%M:%S"), "what": text.strip()[-300:]})
            time.sleep(1)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    try:
        proc = deploy(prepared)
    finally:
        stop.set()
        thread.join(timeout=30)
        extra.unlink()
    assert proc.returncode == 0, proc.stdout[-4000:]
    log = log_of(prepared, "03-control-plane")
    # One task block per batch, in batch order; a batch's other hosts (the workers beside the last control plane)
    # print their skipping lines in the same block.
    rolled = [host for block in re.split(r"^TASK \[", log, flags=re.M)
              if block.startswith("airgap.kubernetes.control_plane : Rewrite the control-plane manifests]")
              for host in re.findall(r"^changed: \[(node\d+)\]", block, re.M)]
    assert rolled == list(CONTROL_PLANES), rolled
    for host in CONTROL_PLANES:
        manifest = ssh(prepared, host, "cat /etc/kubernetes/manifests/kube-apiserver.yaml").stdout
        assert "--default-not-ready-toleration-seconds=120" in manifest, host
    print(f"API probes through node4's balancer, per layer: {probes}; failed: {len(failures)}")
    for failure in failures:
        print(failure)
    if failures:
        # What node4's balancer saw: its servers going down and up, with the time of each.
        print(ssh(prepared, "node4", "journalctl -o short-precise --no-pager -u haproxy -n 200 | grep -i -e down -e up "
                  "-e 'no server'").stdout)
    assert probes.get("03-control-plane", 0) >= 30, probes
    assert failures == [], "reads through node4's balancer failed"


# --------------------------------------------------------------------------- day 2, on the same cluster

def run_sh(prepared, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    t0 = time.monotonic()
    proc = subprocess.run([str(REPO / "run.sh"), *args, "-i", str(prepared.inventory)], cwd=REPO, text=True,
                          capture_output=True, env={**os.environ, "NO_COLOR": "1"}, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    print(f"run.sh {' '.join(args)}: exit {proc.returncode} in {time.monotonic() - t0:.1f} s")
    return proc


def edit_inventory(prepared, change) -> None:
    data = yaml.safe_load(prepared.inventory.read_text())
    change(data)
    prepared.inventory.write_text(yaml.safe_dump(data, sort_keys=False))


def drop_from_inventory(prepared, host: str) -> None:
    def drop(data):
        data["all"]["hosts"].pop(host)
        for group in data["all"]["children"].values():
            (group.get("hosts") or {}).pop(host, None)
    edit_inventory(prepared, drop)


SERVICES = ("kubelet", "containerd", "haproxy", "airgap-pod-network", "etcd")


def start_times(prepared, host: str) -> str:
    """When each of our services last started (monotonic): a restart changes it."""
    return ssh(prepared, host, "systemctl show -p Id -p ActiveEnterTimestampMonotonic " + " ".join(SERVICES)).stdout


def node_ready(prepared, name: str) -> bool:
    return '"True"' in kubectl(prepared, "get", "node", name, "-o",
                               "jsonpath=\"{.status.conditions[?(@.type=='Ready')].status}\"", check=False).stdout


@pytest.fixture(scope="module")
def added(prepared, deployed):
    """add-node of the spare worker while an existing worker (DOWN) hangs: its container is paused, so its kernel
    still accepts TCP connections on port 22 but no SSH server answers, as on a hung host. Unpaused afterwards."""
    existing = CONTROL_PLANES + WORKERS
    before = {h: start_times(prepared, h) for h in existing}
    spare = yaml.safe_load((prepared.inventory.parent / "spare.yml").read_text())

    def add(data):
        data["all"]["hosts"][SPARE] = spare
        data["all"]["children"]["kube_node"]["hosts"][SPARE] = {}
    edit_inventory(prepared, add)
    down = prepared.lab.host(DOWN).container
    subprocess.run(["docker", "pause", down], check=True, capture_output=True)
    try:
        t0 = time.monotonic()
        proc = run_sh(prepared, "add-node", SPARE)
        seconds = time.monotonic() - t0
        spare_ready_while_down = node_ready(prepared, SPARE)
    finally:
        subprocess.run(["docker", "unpause", down], check=True, capture_output=True)
    # Healthy again for the tests after this one (a pause restarts nothing, so its start times stay comparable).
    wait_for(f"{DOWN}'s SSH back", lambda: ssh(prepared, DOWN, "true", timeout=30).returncode == 0, timeout=60)
    wait_for(f"{DOWN} Ready again once unpaused", lambda: node_ready(prepared, DOWN), timeout=180)
    return {"proc": proc, "seconds": seconds, "before": before, "spare_ready_while_down": spare_ready_while_down,
            "after": {h: start_times(prepared, h) for h in existing}}


def test_add_node_makes_the_new_worker_ready(prepared, added):
    assert added["proc"].returncode == 0, added["proc"].stdout[-4000:]
    assert added["spare_ready_while_down"] and node_ready(prepared, SPARE)
    print(f"add-node {SPARE} with 5 existing nodes, {DOWN} hung: {added['seconds']:.1f} s")


def test_add_node_names_a_hung_existing_node_and_runs_no_task_on_it(prepared, added):
    out = added["proc"].stdout
    assert f"Not reachable, left alone: {DOWN}. The new nodes join without them; fix them with ./run.sh " \
           "deploy-cluster later." in out, out[-4000:]
    # Nothing delegated to it either (a delegated task logs "[node6 -> node5]"; the play recap names only play hosts).
    log = log_of(prepared, "scale-nodes")
    assert f"-> {DOWN}]" not in log and DOWN not in cluster.play_recap(log)


def test_add_node_runs_no_task_on_the_existing_nodes_and_restarts_nothing(prepared, added):
    hosts = cluster.play_recap(log_of(prepared, "scale-nodes"))
    assert set(hosts) <= {SPARE, "localhost"} and hosts[SPARE]["failed"] == 0, hosts
    assert added["after"] == added["before"]


def test_a_pod_on_the_new_worker_reaches_and_is_reached_from_the_other_workers_pods(prepared, added, workload):
    overrides = json.dumps({"spec": {"nodeName": SPARE}})
    kubectl(prepared, "run", "e2e-on-spare", f"--image={BUSYBOX}", "--restart=Never", f"--overrides={overrides}",
            "--", "sh", "-c", 'echo spare > /tmp/index.html && exec httpd -f -p 8080 -h /tmp')
    kubectl(prepared, "wait", "--for=condition=Ready", "pod/e2e-on-spare", "--timeout=180s", timeout=200)
    ip = kubectl(prepared, "get", "pod", "e2e-on-spare", "-o", "jsonpath={.status.podIP}").stdout.strip()
    # node4's route to the new node's pods came from the Node object, not from a task on node4.
    wait_for("a workload pod on node4 reaches the pod on the new worker",
             lambda: http_get(prepared, [p for p in workload if p["node"] == "node4"][0]["name"], ip, 8080) == "spare",
             timeout=60)


def test_remove_node_drains_deletes_and_resets_a_worker(prepared, added):
    proc = run_sh(prepared, "remove-node", SPARE)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert f"delete {SPARE} from it" in proc.stdout
    assert "NotFound" in kubectl(prepared, "get", "node", SPARE, check=False).stderr
    leftover = ssh(prepared, SPARE, "ls -d /etc/kubernetes /var/lib/kubelet /etc/containerd 2>/dev/null; "
                                    "systemctl list-unit-files --no-legend kubelet.service containerd.service")
    assert leftover.stdout.strip() == "", leftover.stdout
    route_gone = "ip -4 route show proto 211 | wc -l"
    wait_for("node4's route to the removed node's pods gone",
             lambda: ssh(prepared, "node4", route_gone).stdout.strip() == str(len(CONTROL_PLANES + WORKERS) - 1),
             timeout=60)
    drop_from_inventory(prepared, SPARE)


def test_removing_every_control_plane_is_refused_before_anything_changes(prepared, added):
    proc = run_sh(prepared, "remove-node", ",".join(CONTROL_PLANES))
    assert proc.returncode != 0
    assert "leaves no control plane" in proc.stdout and "leaves no etcd member" in proc.stdout, proc.stdout[-3000:]
    assert len(kubectl(prepared, "get", "nodes", "-o", "name").stdout.split()) == len(CONTROL_PLANES + WORKERS)


def etcd_members(prepared, via: str = "node1") -> tuple[list, str]:
    env = "set -a; . /etc/etcd/etcdctl.env; set +a; "
    members = json.loads(ssh(prepared, via, env + "etcdctl member list -w json").stdout)["members"]
    health = ssh(prepared, via, env + "etcdctl endpoint health --cluster 2>&1")
    return sorted(m["name"] for m in members), health.stdout


def lb_servers(prepared, host: str) -> dict[str, str]:
    """{server: haproxy's operational state} from the node's balancer (2: up), for the health-checked servers; each
    has an unchecked twin, used only while every check fails, and the twins must name the same control planes."""
    script = ("import socket; s = socket.socket(socket.AF_UNIX); s.connect('/run/haproxy-apiserver.sock'); "
              "s.sendall(b'show servers state\\n'); print(s.makefile().read())")
    out = ssh(prepared, host, f'python3 -c "{script}"').stdout
    servers = {f[3]: f[5] for f in (line.split() for line in out.splitlines())
               if len(f) > 5 and f[1] == "kube_apiserver"}
    checked = {name: state for name, state in servers.items() if not name.endswith("-unchecked")}
    assert {f"{name}-unchecked" for name in checked} == set(servers) - set(checked), servers
    return checked


def test_remove_node_of_a_control_plane_removes_its_etcd_member_and_the_cluster_stays_healthy(prepared, added):
    lb_started = start_times(prepared, "node4")
    proc = run_sh(prepared, "remove-node", "node3")
    assert proc.returncode == 0, proc.stdout[-4000:]
    names, health = etcd_members(prepared)
    assert names == ["node1", "node2"] and health.count("is healthy") == 2, health
    assert "NotFound" in kubectl(prepared, "get", "node", "node3", check=False).stderr
    assert kubectl(prepared, "get", "--raw", "/livez").stdout.strip() == "ok"
    assert worker_kubectl(prepared, "get nodes -o name").returncode == 0
    assert ssh(prepared, "node3", "ls /var/lib/etcd /etc/kubernetes 2>/dev/null | wc -l").stdout.strip() == "0"
    # The other nodes' balancers dropped it with a reload: haproxy did not restart.
    assert set(lb_servers(prepared, "node4")) == {"node1", "node2"}
    assert start_times(prepared, "node4") == lb_started


def test_add_node_of_a_control_plane_and_etcd_member_serves_the_api_through_every_nodes_balancer(prepared, added):
    """node3, reset by remove-node, comes back with add-node as a control plane and an etcd member."""
    existing = ("node1", "node2", "node4", "node5")
    before = {h: start_times(prepared, h) for h in existing}
    t0 = time.monotonic()
    proc = run_sh(prepared, "add-node", "node3")
    assert proc.returncode == 0, proc.stdout[-4000:]
    print(f"add-node of a control plane and etcd member: {time.monotonic() - t0:.1f} s")
    assert node_ready(prepared, "node3")
    names, health = etcd_members(prepared)
    assert names == ["node1", "node2", "node3"] and health.count("is healthy") == 3, health
    for host in existing:
        wait_for(f"{host}'s balancer sees node3's API server up",
                 lambda: lb_servers(prepared, host).get("node3") == "2", timeout=90)
    # A reload is all the existing nodes got: no service of theirs restarted.
    assert {h: start_times(prepared, h) for h in existing} == before


def test_remove_node_force_takes_a_stopped_node_out_of_the_cluster(prepared, added):
    container = prepared.lab.host("node5").container
    subprocess.run(["docker", "stop", "-t", "5", container], check=True, capture_output=True)
    try:
        proc = run_sh(prepared, "remove-node", "node5", "--force")
        assert proc.returncode == 0, proc.stdout[-4000:]
        assert "NotFound" in kubectl(prepared, "get", "node", "node5", check=False).stderr
        assert "hosts were not reset" in proc.stdout
    finally:
        subprocess.run(["docker", "start", container], check=True, capture_output=True)
    wait_for("node5's SSH back", lambda: ssh(prepared, "node5", "true").returncode == 0, timeout=120)
    # Back up, the node is reset by the same command without --force: nothing is left to remove in the cluster.
    proc = run_sh(prepared, "remove-node", "node5")
    assert proc.returncode == 0, proc.stdout[-4000:]
    drop_from_inventory(prepared, "node5")


def test_remove_cluster_leaves_every_node_and_the_bundle_server_as_they_were_before_the_deploy(prepared, added):
    # The tests' own file (the balancer test's kubeconfig), not the deploy's.
    ssh(prepared, "node4", "rm -f /root/admin-lb.conf")
    proc = run_sh(prepared, "remove-cluster", "--yes", "--with-bundle-server")
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "step file cleared" in proc.stdout
    diffs = {host: node_states.differences(before, node_state(prepared, host)) for host, before in BEFORE.items()}
    assert {h: d for h, d in diffs.items() if d} == {}


def test_a_second_remove_cluster_changes_nothing(prepared, added):
    proc = run_sh(prepared, "remove-cluster", "--yes", "--with-bundle-server")
    assert proc.returncode == 0, proc.stdout[-4000:]
    hosts = cluster.play_recap(log_of(prepared, "remove-cluster"))
    assert hosts and all(c["changed"] == 0 and c["failed"] == 0 for c in hosts.values()), hosts
