"""Renders role templates the way the roles do, with a real ansible-playbook run on this host (connection local)."""
import os
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(os.environ.get("AIRGAP_VENV", Path.home() / ".cache" / "airgap-kubernetes" / "venv")) / "bin"


def render_templates(workdir: Path, host: str, variables: dict, templates: dict) -> None:
    """Each role template (path under roles/) to its dest, for inventory host `host` with `variables`, mode 0755."""
    play = [{"hosts": host, "gather_facts": False, "vars": variables, "tasks": [
        {"name": "Render the templates", "loop": [{"src": str(REPO / "roles" / src), "dest": str(dest)}
                                                  for src, dest in templates.items()],
         "ansible.builtin.template": {"src": "{{ item.src }}", "dest": "{{ item.dest }}", "mode": "0755"}}]}]
    (workdir / "render.yml").write_text(yaml.safe_dump(play))
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}
    proc = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", f"{host},", "-c", "local", "-e",
                           f"ansible_python_interpreter={VENV_BIN / 'python'}", str(workdir / "render.yml")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
