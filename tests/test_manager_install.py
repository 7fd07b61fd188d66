"""Host tier: ComfyUI-Manager installs the pack, as a user's Manager would, and ComfyUI then loads it.

`comfyui-manager` comes from the package index into a throwaway copy of ComfyUI's venv (the Manager installs a pack's
requirements into the Python it runs in); its command line, `cm-cli`, installs the pack from a git URL of a bare
clone of the committed HEAD (`file://localhost/...`: a `file:///...` URL is reported "not found" with exit code 0);
ComfyUI, started from a copy of COMFYUI_DIR, must list the pack's nodes, and no install may have changed torch or
numpy (pip freeze before and after each step). Skipped with the reason when the package index is unreachable.

    COMFYUI_DIR=$COMFY COMFY_PYTHON=$COMFY_VENV/bin/python .venv/bin/pytest -q -m comfyui tests/test_manager_install.py -s
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from comfy_host import COMFY_PYTHON, COMFYUI_DIR, HOST_MARKS, OUR_NODES, ROOT, free_port

pytestmark = HOST_MARKS
PACK = "comfyui-rain"  # the folder cm-cli names after the URL
UNREACHABLE = r"No matching distribution|Could not fetch|Failed to establish|Network is unreachable|Temporary failure"
HOST_PACKAGES = ("torch", "torchvision", "torchaudio", "numpy")


UNNEEDED = """
import json, re, sys
from importlib import metadata
installed = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(): d for d in metadata.distributions()}
needed = {re.sub(r"[-_.]+", "-", re.split(r"[ ;<>=!~\\[(]", r, maxsplit=1)[0]).lower()
          for d in installed.values() for r in (d.requires or []) if "extra ==" not in r}
print(json.dumps([n for n in json.loads(sys.argv[1]) if n in installed and n not in needed]))
"""


def requirement_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(re.sub(r"[-_.]+", "-", re.split(r"[ ;<>=!~\[]", line, maxsplit=1)[0]).lower())
    return names


def freeze(python: Path) -> dict[str, str]:
    lines = run([python, "-m", "pip", "freeze", "--all"], check=True).stdout.splitlines()
    return {re.sub(r"[-_.]+", "-", re.split(r"==| @ ", line)[0]).lower(): line for line in lines if line.strip()}


def run(command: list, timeout: float = 900, cwd=None, **kwargs) -> subprocess.CompletedProcess:
    """A command run away from the repository (whose .egg-info looks installed to a `python -c` started there)."""
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd or tempfile.gettempdir(), **kwargs)


def test_the_manager_installs_the_pack_from_git_and_comfyui_loads_it(tmp_path):
    started = time.time()
    # A copy of ComfyUI (never the original) without the user's models, inputs and other packs.
    comfy = tmp_path / "ComfyUI"
    shutil.copytree(COMFYUI_DIR, comfy, symlinks=True, ignore=lambda folder, names: [
        n for n in names if Path(folder) == Path(COMFYUI_DIR) and n in ("models", "input", "output", "temp", "user",
                                                                        "custom_nodes", ".git")])
    (comfy / "custom_nodes").mkdir()
    # A throwaway copy of ComfyUI's venv: what the Manager installs must land where ComfyUI imports it.
    venv = tmp_path / "venv"
    prefix = run([COMFY_PYTHON, "-c", "import sys; print(sys.prefix)"], check=True).stdout.strip()
    shutil.copytree(prefix, venv, symlinks=True)
    python = venv / "bin" / "python"
    assert run([python, "-c", "import sys; print(sys.prefix)"]).stdout.strip() == str(venv)
    # As fresh as ComfyUI's own install: the pack's requirements that ComfyUI does not list, and nothing installed
    # depends on, are removed first, so the Manager has them to install (here: diffusers).
    fresh = sorted(requirement_names(ROOT / "requirements.txt") - requirement_names(Path(COMFYUI_DIR) / "requirements.txt"))
    removable = json.loads(run([python, "-c", UNNEEDED, json.dumps(fresh)], check=True).stdout)
    if removable:
        run([python, "-m", "pip", "uninstall", "-q", "-y", *removable], check=True)
    copied = time.time()
    frozen = [freeze(python)]

    home = tmp_path / "home"  # the Manager's and uv's caches and settings stay in the test's folder
    home.mkdir()
    environ = {**os.environ, "HOME": str(home), "COMFYUI_PATH": str(comfy), "PYTHONUNBUFFERED": "1"}
    manager = run([python, "-m", "pip", "install", "-q", "comfyui-manager"], env=environ)
    if manager.returncode != 0 and re.search(UNREACHABLE, manager.stderr):
        pytest.skip(f"the package index is unreachable: {manager.stderr.strip().splitlines()[-1]}")
    assert manager.returncode == 0, manager.stderr[-3000:]
    frozen.append(freeze(python))
    manager_installed = time.time()

    # The published repository, as a bare clone of the committed HEAD.
    bare = tmp_path / "git" / f"{PACK}.git"
    run(["git", "init", "-q", "--bare", bare], check=True)
    run(["git", "-C", ROOT, "push", "-q", bare, "HEAD:refs/heads/main"], check=True)
    run(["git", "-C", bare, "symbolic-ref", "HEAD", "refs/heads/main"], check=True)
    install = run([python, "-m", "cm_cli", "install", f"file://localhost{bare}", "--mode", "local"], env=environ,
                  cwd=tmp_path)
    log = install.stdout + install.stderr
    (tmp_path / "cm-cli.log").write_text(log)
    assert install.returncode == 0 and (comfy / "custom_nodes" / PACK / "__init__.py").is_file(), log[-4000:]
    head = run(["git", "-C", comfy / "custom_nodes" / PACK, "rev-parse", "HEAD"]).stdout.strip()
    assert head == run(["git", "-C", ROOT, "rev-parse", "HEAD"]).stdout.strip()
    frozen.append(freeze(python))
    pack_installed = time.time()

    for name in HOST_PACKAGES:  # neither the Manager nor the pack's requirements touched the host's own packages
        assert {f.get(name) for f in frozen} == {frozen[0].get(name)}, (name, [f.get(name) for f in frozen])
    added = sorted(set(frozen[2]) - set(frozen[1]))
    changed = sorted(n for n in set(frozen[1]) & set(frozen[2]) if frozen[1][n] != frozen[2][n])

    port = free_port()
    server_log = tmp_path / "server.log"
    with open(server_log, "w") as output:
        server = subprocess.Popen([str(python), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                                   "--disable-api-nodes", "--disable-auto-launch"], cwd=comfy, stdout=output,
                                  stderr=subprocess.STDOUT, env={**environ, "OMP_WAIT_POLICY": "PASSIVE"})
        try:
            info, deadline = None, time.time() + 300
            while info is None and time.time() < deadline and server.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/object_info", timeout=30) as response:
                        info = json.loads(response.read())
                except OSError:
                    time.sleep(0.5)
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    text = server_log.read_text()
    assert info is not None, text[-4000:]
    assert not [line for line in text.splitlines() if "IMPORT FAILED" in line and PACK in line], text[-4000:]
    assert OUR_NODES <= set(info), sorted(set(info))[:20]
    print(f"copy of the venv {copied - started:.0f} s; comfyui-manager from the index {manager_installed - copied:.0f} s;"
          f" cm-cli install of the pack {pack_installed - manager_installed:.0f} s; ComfyUI up and listing "
          f"{len(OUR_NODES)} RAIN nodes; removed first: {removable}; added by the pack: {added}; changed: {changed}; "
          f"opencv advice logged: "
          f"{'OpenCV builds share one cv2 folder' in text}", file=sys.stderr)
