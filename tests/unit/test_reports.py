"""Specification of layer 00's unreachable report: one line per host it could not reach, in ssh's own words."""
import os
import subprocess
import sys
from pathlib import Path

from ansible_collections.airgap.kubernetes.plugins.filter.unreachable_report import FilterModule
from ansible_collections.airgap.kubernetes.plugins.module_utils.reports import unreachable_report

REPO = Path(__file__).resolve().parents[2]
REPORT = FilterModule().filters()["unreachable_report"]
REFUSED = "ssh: connect to host 10.0.0.2 port 22: Connection refused\r\n"
CHANGED_KEY = ("@@@@@@@@@@@\r\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\r\n"
               "Offending ECDSA key in /root/.ssh/known_hosts:3\r\n"
               "  remove with:\r\n  ssh-keygen -f \"/root/.ssh/known_hosts\" -R \"10.0.0.3\"\r\n"
               "Host key verification failed.\r\n")


def down(msg, **hostvars):
    return {"airgap_ssh_probe": {"unreachable": True, "msg": msg, "changed": False}, **hostvars}


def test_a_host_that_answered_gives_no_line():
    assert unreachable_report({"node1": {"airgap_ssh_probe": {"stdout": "/usr/bin/python3\n", "rc": 0}}}) == []


def test_an_unreachable_host_is_named_with_its_address_user_and_sshs_last_line():
    report = unreachable_report({"node2": down(REFUSED, ansible_host="10.0.0.2", ansible_user="root")})
    assert report == ["- node2 (10.0.0.2, user root): ssh: connect to host 10.0.0.2 port 22: Connection refused"]


def test_without_ansible_host_and_user_the_name_and_the_default_user_are_shown():
    assert unreachable_report({"node2": down("timed out")}) == ["- node2 (node2, user default): timed out"]


def test_an_unreachable_host_with_no_message_says_no_answer():
    assert unreachable_report({"node2": down("")}) == ["- node2 (node2, user default): no answer"]


def test_a_changed_host_key_adds_sshs_removal_command():
    [line] = unreachable_report({"node3": down(CHANGED_KEY, ansible_host="10.0.0.3", ansible_user="root")})
    assert line == ("- node3 (10.0.0.3, user root): Host key verification failed. The host key differs from the one "
                    "recorded: if the host was reinstalled, remove the old key "
                    "(ssh-keygen -f \"/root/.ssh/known_hosts\" -R \"10.0.0.3\") and rerun.")


def test_every_unreachable_host_gets_its_own_line_in_inventory_order():
    hosts = {"node3": down("c"), "node1": {"airgap_ssh_probe": {"rc": 0}}, "node2": down("b")}
    assert [line.split(" ")[1] for line in unreachable_report(hosts)] == ["node3", "node2"]


def test_the_filter_reads_the_listed_hosts_from_hostvars_and_skips_localhost():
    hostvars = {"localhost": down("x"), "node2": down(REFUSED, ansible_host="10.0.0.2"), "node9": down("not listed")}
    assert REPORT(["localhost", "node2"], hostvars) == [
        "- node2 (10.0.0.2, user default): ssh: connect to host 10.0.0.2 port 22: Connection refused"]


def test_the_filter_reads_another_registered_probe_when_told():
    assert REPORT(["node2"], {"node2": {"probe": {"unreachable": True, "msg": "x"}}}, probe="probe") == [
        "- node2 (node2, user default): x"]


def test_the_report_names_a_host_a_real_ansible_run_could_not_reach(tmp_path):
    # Port 9 on this machine's loopback refuses at once: an unreachable host without waiting for a timeout.
    (tmp_path / "hosts.yml").write_text(
        "all:\n  hosts:\n    ghost: {ansible_host: 127.0.0.1, ansible_port: 9, ansible_user: nobody}\n"
        "    localhost: {ansible_connection: local, ansible_python_interpreter: " + sys.executable + "}\n")
    (tmp_path / "play.yml").write_text("""\
- name: Probe
  hosts: ghost
  gather_facts: false
  tasks:
    - name: Probe
      ansible.builtin.raw: "true"
      register: airgap_ssh_probe
      ignore_unreachable: true
- name: Report
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Report
      ansible.builtin.debug:
        msg: "{{ groups['all'] | airgap.kubernetes.unreachable_report(hostvars) }}"
""")
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_SSH_ARGS": "-o ConnectTimeout=5 -o BatchMode=yes"}
    proc = subprocess.run([str(Path(sys.executable).with_name("ansible-playbook")), "-i", str(tmp_path / "hosts.yml"),
                           str(tmp_path / "play.yml")], cwd=REPO, env=env, capture_output=True, text=True, check=False)
    lines = [text.strip() for text in proc.stdout.splitlines() if text.strip().startswith('"- ghost')]
    assert len(lines) == 1, proc.stdout + proc.stderr
    line = lines[0]
    assert line.startswith('"- ghost (127.0.0.1, user nobody): ') and line.endswith('port 9: Connection refused"')
