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


# ---- the Comfy Registry package ------------------------------------------------------------------------------------


def tracked_files() -> list[str]:
    return subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\n")[:-1]


def packaged_files() -> set[str]:
    """What `comfy node pack` zips: the git-tracked files minus the .comfyignore patterns (git's own matching)."""
    ignored = subprocess.run(["git", "ls-files", "--cached", "--ignored", "--exclude-from=.comfyignore"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split("\n")[:-1]
    return set(tracked_files()) - set(ignored)


def test_the_package_keeps_every_file_the_pack_reads_at_run_time():
    import json

    package = packaged_files()
    needed = {"__init__.py", "LICENSE", "README.md", "pyproject.toml", "requirements.txt", "examples/README.md"}
    needed |= {name for name in tracked_files() if name.startswith(("nodes/", "js/", "rain_core/"))}
    needed |= {name for name in tracked_files() if name.startswith("example_workflows/") and name.endswith((".json", ".jpg"))}
    needed |= {name for name in tracked_files() if name.startswith("examples/keypoints/")}  # copied to the input folder
    for workflow in (ROOT / "example_workflows").glob("*.json"):  # the inputs the shipped workflows name
        needed |= {f"examples/{name}" for name in re.findall(r'"([\w-]+\.(?:png|mp4))"', workflow.read_text())}
    live_route = (ROOT / "nodes" / "live_route.py").read_text()  # the live panel's example pose video and reference
    needed |= {f"examples/{name}" for name in re.findall(r'PACK_ROOT / "examples" / "([^"]+)"', live_route)}
    assert {"examples/anyone-video-1_kps.mp4", "examples/anyone-1.png", "examples/anyone-2.png"} <= needed
    assert needed - package == set()
    assert json.loads((ROOT / "rain_core" / "assets" / "tiny-rain" / "rain_config.json").read_text())


def test_the_package_leaves_out_tests_bench_ci_and_studies():
    package = packaged_files()
    for folder in ("tests/", "bench/", ".ci/", ".github/"):
        assert not [name for name in package if name.startswith(folder)], folder
    assert [name for name in package if name.startswith("docs/")] == ["docs/demo.jpg"]  # the README's picture
    assert "examples/anyone-video-2_kps.mp4" not in package and "NOTES.md" not in package


def test_nothing_packaged_is_a_pickle_or_an_executable():
    listing = subprocess.run(["git", "ls-files", "-s"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    modes = {line.split("\t")[1]: line.split()[0] for line in listing.splitlines()}
    package = packaged_files()
    risky = (".pth", ".pt", ".ckpt", ".bin", ".pkl", ".pickle", ".npy", ".npz", ".exe", ".dll", ".so", ".dylib", ".sh",
             ".bat", ".ps1")
    assert [name for name in package if name.lower().endswith(risky)] == []
    assert [name for name in package if modes[name] != "100644"] == []  # no executable bit, no symlink
    weights = [name for name in package if name.startswith("rain_core/assets/")]
    assert weights and all(name.endswith((".safetensors", ".json", ".md")) for name in weights)


def test_pyproject_is_registry_ready_with_its_icon_urls_and_classifiers():
    from PIL import Image

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    urls, comfy = pyproject["project"]["urls"], pyproject["tool"]["comfy"]
    repository = urls["Repository"]
    assert urls["Documentation"].startswith(repository) and urls["Bug Tracker"] == repository + "/issues"
    raw = repository.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    assert comfy["Icon"].startswith(raw) and comfy["PublisherId"] and comfy["DisplayName"]
    icon = ROOT / comfy["Icon"][len(raw):]
    assert icon.as_posix()[len(ROOT.as_posix()) + 1:] in tracked_files()
    with Image.open(icon) as image:
        assert image.size[0] == image.size[1] <= 400
    classifiers = pyproject["project"]["classifiers"]
    # the values the Registry reads (comfy_config/config_parser.py of ComfyUI and comfy-cli)
    assert [c for c in classifiers if c.startswith("Operating System :: ")] == ["Operating System :: OS Independent"]
    accelerators = {"GPU :: NVIDIA CUDA", "GPU :: AMD ROCm", "GPU :: Intel Arc", "NPU :: Huawei Ascend", "GPU :: Apple Metal"}
    assert {c[len("Environment :: "):] for c in classifiers if c.startswith("Environment :: ")} <= accelerators


def test_the_publish_workflow_runs_comfy_orgs_action_when_pyproject_changes_on_main():
    workflow = (ROOT / ".github" / "workflows" / "publish.yml").read_text()
    assert "uses: Comfy-Org/publish-node-action@v1" in workflow
    assert re.search(r"push:\s*\n\s*branches: \[main\]\s*\n\s*paths: \[pyproject.toml\]", workflow)
    assert "personal_access_token: ${{ secrets.REGISTRY_ACCESS_TOKEN }}" in workflow


def test_template_names_sort_in_their_intended_order():
    """A ComfyUI that sorts a pack's templates (upstream since `collect_workflow_templates`) lists them by file name,
    and so does Windows' NTFS when one does not: "RAIN <n> - ..." numbered 1, 2, 3, ... in that order."""
    names = sorted(path.stem for path in (ROOT / "example_workflows").glob("*.json"))
    numbers = [int(re.match(r"RAIN (\d+) - ", name)[1]) for name in names]
    assert numbers == list(range(1, len(names) + 1)), names
