"""Every ```python and ```bash block of README.md runs as written on the built-in model.

A block is run in a fresh temporary folder that holds what a user's clone holds next to the README (a link to
`examples/`, and `.venv` for the bash blocks that call `.venv/bin/rain`). A marker comment on the line before a
block says how else to treat it:

    <!-- readme-test: skip (REASON) -->       not run here; the reason is the skip message (a download from the
                                              real hub, a GPU, a ComfyUI checkout, what CI runs itself)
    <!-- readme-test: local-hub (REASON) -->  run against tests/hub_server.py's stand-in files instead of the
                                              Hugging Face hub (HF_ENDPOINT, RAIN_TAESDV_URL)

A block without a marker must run and exit 0. A new block in README is picked up by this test as it is.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"(?:<!--\s*readme-test:\s*(?P<mode>[\w-]+)\s*(?:\((?P<reason>[^)]*)\))?\s*-->\s*\n)?"
                   r"^```(?P<lang>python|bash)\n(?P<code>.*?)^```\s*$", re.MULTILINE | re.DOTALL)


def readme_blocks() -> list[tuple[str, str, str, str, int]]:
    """(language, code, mode, reason, line) of every python/bash block; mode "run" where no marker says else."""
    text = README.read_text()
    blocks = []
    for match in BLOCK.finditer(text):
        line = text.count("\n", 0, match.start("lang")) + 1
        blocks.append((match["lang"], match["code"], match["mode"] or "run", match["reason"] or "", line))
    return blocks


BLOCKS = readme_blocks()


def test_the_readme_has_the_blocks_this_test_expects():
    """The extraction itself: a Python example that runs, and markers that are spelled right (a typo in a marker
    would silently run a block meant to be skipped, or fail with a confusing error)."""
    assert any(lang == "python" and mode == "run" for lang, _, mode, _, _ in BLOCKS)
    assert {mode for _, _, mode, _, _ in BLOCKS} <= {"run", "skip", "local-hub"}
    for _, _, mode, reason, line in BLOCKS:
        assert mode == "run" or reason.strip(), f"README line {line}: a {mode} marker needs a reason in parentheses"
    fences = len(re.findall(r"^```(?:python|bash)$", README.read_text(), re.MULTILINE))
    assert fences == len(BLOCKS), "a python/bash block was not recognised (unclosed fence?)"


def _workspace(tmp_path: Path) -> Path:
    """What sits beside README.md in a clone, as links: examples/ and the venv running this test."""
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    return tmp_path


def _local_hub_env(stack) -> dict:
    sys.path.insert(0, str(Path(__file__).parent))
    from hub_server import LocalHub
    from test_download import TAESDV_PATH, _content, _release

    server = stack.enter_context(LocalHub(_release(), plain={TAESDV_PATH: _content("taesdv", 2048)}))
    return {"HF_ENDPOINT": server.url, "RAIN_TAESDV_URL": server.url + TAESDV_PATH, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


@pytest.mark.parametrize("lang, code, mode, reason, line", BLOCKS, ids=[f"{b[0]}-line{b[4]}" for b in BLOCKS])
def test_readme_block_runs_as_written(lang, code, mode, reason, line, tmp_path):
    import contextlib

    if mode == "skip":
        pytest.skip(f"README line {line}: {reason}")
    workspace = _workspace(tmp_path)
    env = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_OFFLINE", "PYTHONPATH")}
    env["OMP_NUM_THREADS"] = "1"
    with contextlib.ExitStack() as stack:
        if mode == "local-hub":
            env.update(_local_hub_env(stack))
        if lang == "python":
            command = [sys.executable, "-c", code]
        else:
            command = ["bash", "-e", "-o", "pipefail", "-c", code]
        result = subprocess.run(command, cwd=workspace, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (f"README line {line} ({lang}) failed with exit {result.returncode}:\n"
                                    f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    made = sorted(p.name for p in workspace.iterdir() if p.name not in ("examples", ".venv"))
    assert made, f"README line {line}: the block ran but wrote nothing"
    assert not [name for name in made if "rain-tmp" in name], made
