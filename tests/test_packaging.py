"""The declared dependency ranges are the ones CI's minimum-versions tier installs, and the repository stands alone."""

import re
import subprocess
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def requirement_floors(lines) -> dict[str, str]:
    floors = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if match := re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(>=|==)\s*([0-9][0-9A-Za-z.]*)", line):
            floors[match[1].lower().replace("_", "-")] = match[3]
    return floors


def test_every_lower_bound_is_installed_exactly_by_the_minimum_versions_tier():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = requirement_floors(project["dependencies"] + project["optional-dependencies"]["train"])
    pinned = requirement_floors((ROOT / ".ci" / "min-versions.txt").read_text().splitlines())
    assert set(declared) == set(pinned)
    for name, floor in declared.items():
        # ">=0.30" is satisfied exactly by "0.30.0": compare with trailing zeros dropped
        assert pinned[name].split(".")[: len(floor.split("."))] == floor.split("."), (name, floor, pinned[name])
        assert all(part == "0" for part in pinned[name].split(".")[len(floor.split(".")):]), (name, pinned[name])


def test_requirements_txt_lists_the_same_runtime_dependencies_without_torch():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = (ROOT / "requirements.txt").read_text().splitlines()
    assert requirement_floors(requirements) == requirement_floors(project["dependencies"])
    names = {re.split(r"[<>=!~ ]", line.strip())[0].lower() for line in requirements if line.strip() and not line.startswith("#")}
    assert not names & {"torch", "torchvision", "torchaudio"}
    assert "accelerate" not in names  # training only: the `train` extra
    assert "ray" not in names  # `rain batch` only: the `cluster` extra; installing the pack into ComfyUI never pulls it


def test_ray_is_the_cluster_extra_and_the_test_extra_installs_it_so_ci_runs_the_batch_tests():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert [r for r in extras["cluster"] if re.match(r"ray\b", r)] == extras["cluster"] != []
    assert set(extras["cluster"]) <= set(extras["test"])
    assert not any(re.match(r"ray\b", r) for r in project_dependencies())


def project_dependencies() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def test_no_tracked_file_names_the_workspace_or_its_shared_folder():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    # the workspace's shared folder beside the clone, and the workspace root of the build machine; spelt in pieces so
    # that this file does not name them itself
    workspace_paths = [".." + "/shared", "/" + "work" + "/"]
    pattern = re.compile("|".join(re.escape(path) for path in workspace_paths))
    offenders = []
    for name in files:
        path = ROOT / name
        if path.suffix not in {".py", ".md", ".json", ".js", ".toml", ".txt", ""}:
            continue
        if path.is_file() and pattern.search(path.read_text(errors="ignore")):
            offenders.append(name)
    assert offenders == [], f"files naming {workspace_paths}, which a user's clone does not have: {offenders}"
