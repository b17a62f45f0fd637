"""Specification of where the bundle CA is trusted: in a file of its own that the bundle server's clients name (apt for
its name, containerd for its registry, every download from it), never in the system trust store, where every program
on the node would trust it for any name. The last tests run the role's guard and a real download task (over loopback
HTTPS, from a server only a throwaway CA vouches for) with ansible-playbook."""
from __future__ import annotations

import datetime
import hashlib
import http.server
import ipaddress
import os
import re
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(os.environ.get("AIRGAP_VENV", Path.home() / ".cache" / "airgap-kubernetes" / "venv")) / "bin"
SYSTEM_STORE = re.compile(r"/usr/local/share/ca-certificates|/usr/share/ca-certificates|update-ca-certificates|/etc/ssl/")

# The only places that may name the system trust store: taking out the copy earlier deploys put there.
CLEANUP_FILES = {"roles/bootstrap_os/vars/main.yml", "roles/node_reset/defaults/main.yml",
                 "roles/node_reset/meta/argument_specs.yml", "roles/node_reset/files/node-reset.sh",
                 "roles/node_reset/README.md"}
CLEANUP_TASK = ("roles/bootstrap_os/tasks/trust.yml",
                "Take the bundle CA out of the system trust store, where an older deploy put it")
# Tasks that name it to keep the bundle CA out of it.
ALLOWED_TASKS = {CLEANUP_TASK, ("roles/bootstrap_os/tasks/main.yml", "Check where the bundle CA goes")}
# Requests that do not go to the bundle server, and why.
NOT_THE_BUNDLE_SERVER = {
    ("roles/control_plane/tasks/healthy.yml", "Wait for the local API server"): "this node's own API server",
}
MODULES = ("airgap.kubernetes.bundle_fetch", "ansible.builtin.get_url", "ansible.builtin.uri", "get_url", "uri")


def _tasks(items):
    """Every task of a task list, blocks opened."""
    for task in items or []:
        if not isinstance(task, dict):
            continue
        yield task
        for key in ("block", "rescue", "always"):
            yield from _tasks(task.get(key))


def _task_files():
    for path in sorted(REPO.glob("roles/*/tasks/**/*.yml")) + sorted(REPO.glob("roles/*/handlers/*.yml")):
        yield path.relative_to(REPO).as_posix(), list(_tasks(yaml.safe_load(path.read_text())))


def _group_var(name: str):
    for path in sorted((REPO / "group_vars" / "all").glob("*.yml")):
        values = yaml.safe_load(path.read_text()) or {}
        if name in values:
            return values[name]
    raise KeyError(name)


def test_the_bundle_ca_file_is_outside_the_system_trust_store():
    ca_file = _group_var("bootstrap_os_ca_file")
    assert ca_file.startswith("/") and not SYSTEM_STORE.search(ca_file), ca_file
    assert not ca_file.startswith("/etc/kubernetes/"), "the bundle CA must never be the Kubernetes CA"


def test_no_role_puts_anything_into_the_system_trust_store_but_the_cleanup_takes_it_out():
    found = []
    for path in sorted(p for p in REPO.glob("roles/**/*") if p.is_file()):
        rel = path.relative_to(REPO).as_posix()
        if rel in CLEANUP_FILES or rel in {file for file, _ in ALLOWED_TASKS}:
            continue
        found += [f"{rel}:{n}: {line.strip()}" for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
                  if SYSTEM_STORE.search(line)]
    # The files of the allowed tasks, task by task (comments aside).
    found += [f"{rel}: {task.get('name')}" for rel, tasks in _task_files() if rel in {file for file, _ in ALLOWED_TASKS}
              for task in tasks if (rel, task.get("name")) not in ALLOWED_TASKS and SYSTEM_STORE.search(yaml.safe_dump(task))]
    assert found == [], "only the cleanup of earlier deploys may name the system trust store:\n" + "\n".join(found)


def test_the_cleanup_only_removes_and_rebuilds_the_store_fresh():
    task = next(t for rel, tasks in _task_files() if rel == CLEANUP_TASK[0] for t in tasks if t.get("name") == CLEANUP_TASK[1])
    script = task["ansible.builtin.shell"]
    assert "rm -f -- \"$f\"" in script and "update-ca-certificates --fresh" in script
    # Nothing is written into the store: no copy, link or redirection into it.
    assert not re.search(r"\b(cp|ln|install|tee)\b|>\s*\S*ca-certificates", script), script


def _ca_named(module: str, task: dict) -> str:
    """The CA file a download task names: bundle_fetch's ca_file, uri's ca_path; get_url has none (ansible-core
    2.19), so OpenSSL's default CA file, SSL_CERT_FILE in the task's environment."""
    if module.endswith("bundle_fetch"):
        return str(task[module].get("ca_file", ""))
    if module.endswith("uri"):
        return str(task[module].get("ca_path", ""))
    return str((task.get("environment") or {}).get("SSL_CERT_FILE", ""))


def test_every_download_from_the_bundle_server_names_the_bundle_ca():
    wrong = []
    seen = 0
    for rel, tasks in _task_files():
        for task in tasks:
            module = next((m for m in MODULES if m in task), None)
            if module is None or (rel, task.get("name")) in NOT_THE_BUNDLE_SERVER:
                continue
            seen += 1
            named = _ca_named(module, task)
            # The bundle server checks itself against its own CA, where it keeps it; the nodes against their copy.
            want = "bundle_server_pki_dir" if rel.startswith("roles/bundle_server/") else "{{ bootstrap_os_ca_file }}"
            if want not in named:
                wrong.append(f"{rel}: {task.get('name')}: names {named!r} as its CA, want {want!r}")
    assert seen >= 6, f"only {seen} bundle_fetch/get_url/uri tasks found: the scan misses some"
    assert wrong == [], "\n".join(wrong)


def test_containerd_and_apt_name_the_bundle_ca_for_the_bundle_server_only():
    hosts_toml = (REPO / "roles/container_runtime/templates/hosts.toml.j2").read_text()
    assert re.search(r'^\{% if item\.mirror %\}(?:\n(?!\{% endif).*)*\nca = "\{\{ container_runtime_registry_ca_file \}\}"$',
                     hosts_toml, re.MULTILINE), hosts_toml
    defaults = yaml.safe_load((REPO / "roles/container_runtime/defaults/main.yml").read_text())
    assert defaults["container_runtime_registry_ca_file"] == "{{ bootstrap_os_ca_file }}"
    apt_conf = (REPO / "roles/bootstrap_os/templates/airgap-bundle-ca.conf.j2").read_text()
    settings = [line for line in apt_conf.splitlines() if line and not line.startswith("//")]
    assert settings == [
        "Acquire::https::{{ bootstrap_os_apt_repo_url | urlsplit('hostname') }}::CaInfo \"{{ bootstrap_os_ca_file }}\";"]
    python = (REPO / "roles/bootstrap_os/tasks/python.yml").read_text()
    assert 'Acquire::https::"$host"::CaInfo=' in python and "Acquire::https::CAInfo" not in python


# --- Role tasks as written, run by a real ansible-playbook on this host ---------------------------------------------

def _issue(tmp_path: Path) -> tuple[Path, Path, Path]:
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test bundle CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = tmp_path / "ca.crt", tmp_path / "server.crt", tmp_path / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


@pytest.fixture
def bundle_https(tmp_path):
    """A loopback HTTPS file server whose certificate only the test's CA vouches for; yields (base URL, root, CA)."""
    ca, cert, key = _issue(tmp_path)
    root = tmp_path / "served"
    root.mkdir()
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(root))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", root, ca
    server.shutdown()
    server.server_close()


def _role_task(tasks_file: str, name: str) -> dict:
    return next(t for t in yaml.safe_load((REPO / "roles" / tasks_file).read_text()) if t.get("name") == name)


def _run_task(tmp_path: Path, task: dict, variables: dict) -> subprocess.CompletedProcess:
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": [task], "vars": variables}]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}
    return subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", "-e",
                           f"ansible_python_interpreter={VENV_BIN / 'python'}", str(tmp_path / "play.yml")],
                          capture_output=True, text=True, env=env, timeout=120)


def _run_etcd_download(tmp_path: Path, url: str, sha256: str, ca_file: Path) -> subprocess.CompletedProcess:
    task = _role_task("etcd/tasks/install.yml", "Download the etcd release and check its sha256")
    task["airgap.kubernetes.bundle_fetch"]["files"][0].update(owner=str(os.geteuid()), group=str(os.getegid()))
    (tmp_path / "downloads").mkdir(exist_ok=True)
    # The timeout as group_vars sets it; no retry, so that a refused download fails at once.
    timeout = yaml.safe_load((REPO / "group_vars" / "all" / "bootstrap_os.yml").read_text())["bundle_download_timeout"]
    return _run_task(tmp_path, task, {"etcd_install_dir": str(tmp_path / "downloads"), "bootstrap_os_ca_file": str(ca_file),
                                      "etcd_artifact": {"url": url, "sha256": sha256},
                                      "bundle_download_timeout": timeout, "bundle_download_retries": 0})


@pytest.mark.parametrize("ca_file", ["/usr/local/share/ca-certificates/airgap.crt", "/etc/ssl/certs/bundle.pem",
                                     "/etc/kubernetes/pki/ca.crt", "bundle-ca.crt"])
def test_the_role_refuses_a_bundle_ca_file_in_the_system_store_or_the_kubernetes_pki(tmp_path, ca_file):
    proc = _run_task(tmp_path, _role_task("bootstrap_os/tasks/main.yml", "Check where the bundle CA goes"),
                     {"bootstrap_os_ca_file": ca_file})
    assert proc.returncode != 0
    assert f"bootstrap_os_ca_file is {ca_file}: the bundle CA must go to a file of its own" in proc.stdout, proc.stdout
    assert "/etc/airgap-kubernetes/bundle-ca.crt" in proc.stdout


def test_the_role_accepts_a_bundle_ca_file_of_its_own(tmp_path):
    proc = _run_task(tmp_path, _role_task("bootstrap_os/tasks/main.yml", "Check where the bundle CA goes"),
                     {"bootstrap_os_ca_file": "/etc/airgap-kubernetes/bundle-ca.crt"})
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_download_from_the_bundle_server_is_checked_against_the_bundle_ca_alone(tmp_path, bundle_https):
    base, root, ca = bundle_https
    data = b"etcd release\n"
    (root / "etcd.tar.gz").write_bytes(data)
    # The system store does not know the test's CA: what passes below passes through ca_path alone.
    with pytest.raises(ssl.SSLCertVerificationError), socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1]))) as conn:
        ssl.create_default_context().wrap_socket(conn, server_hostname="127.0.0.1")
    proc = _run_etcd_download(tmp_path, f"{base}/etcd.tar.gz", hashlib.sha256(data).hexdigest(), ca)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "downloads" / "etcd.tar.gz").read_bytes() == data


def test_a_plain_http_download_needs_no_bundle_ca_file(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    (root / "etcd.tar.gz").write_bytes(b"x")
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(root))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proc = _run_etcd_download(tmp_path, f"http://127.0.0.1:{server.server_address[1]}/etcd.tar.gz",
                                  hashlib.sha256(b"x").hexdigest(),
                                  tmp_path / "no-such-ca.crt")
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 0, proc.stdout + proc.stderr
