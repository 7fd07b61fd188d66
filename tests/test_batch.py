"""`rain batch` on a local Ray with two CPU workers and the built-in model, on the example inputs: the same frames as
`rain animate`, a killed worker's job retried, a bad job failing alone, Ctrl-C then resume; the jobs file's rules;
the message without Ray.

One Ray session serves the module (starting Ray costs ~10 s here); each batch joins it, in a subprocess through
`rain batch --address` or in this process (which `rain batch` finds running Ray in and uses).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import bench_module
from PIL import Image

from rain_core.batch.jobs import JobsFileError, read_jobs
from rain_core.batch.worker import partial_files
from rain_core.cli import main
from rain_core.io.video import VideoSink, probe_video, read_video_frames

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
REFERENCE = EXAMPLES / "anyone-1.png"
POSES = EXAMPLES / "anyone-video-1_kps.mp4"  # 64 frames, 30 fps
POSES_SHORT = EXAMPLES / "anyone-video-2_kps.mp4"  # 48 frames


def run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_csv(path: Path, rows: list[dict]) -> Path:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = [",".join(columns)] + [",".join(str(row.get(c, "")) for c in columns) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def results_by_id(path: Path) -> dict:
    records = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        records.setdefault(record["id"], []).append(record)
    return records


def no_partials(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if "partial" in p.name]


def long_pose_video(path: Path, frames: int = 600) -> Path:
    """The example's 64 frames at 64 px, repeated: a job surely still running when the test acts."""
    clip, _, _ = read_video_frames(POSES, 0, 0)
    small = np.stack([np.asarray(Image.fromarray(f).resize((64, 64), Image.BILINEAR)) for f in clip])
    with VideoSink(path, fps=30) as sink:
        for start in range(0, frames, len(small)):
            sink.write(small[: frames - start])
    return path


# ---- the jobs file (no Ray) ------------------------------------------------------------------------------------


def test_jobs_file_paths_resolve_against_its_folder_and_settings_are_typed(tmp_path):
    jobs = write_csv(tmp_path / "jobs.csv", [
        {"reference": "refs/a.png", "poses": "/abs/p.mp4", "output": "out/a.mp4", "max_frames": "8",
         "guidance": "2.5", "model": "tiny"},
        {"reference": "b.png", "poses": "p.mp4", "output": "out/b", "noise": "shared", "pose_check": "false"}])
    first, second = read_jobs(jobs)
    assert first.reference == str(tmp_path / "refs/a.png") and first.poses == "/abs/p.mp4"
    assert first.id == "out/a.mp4" and first.output == str(tmp_path / "out/a.mp4")
    assert first.settings == {"max_frames": 8, "guidance": 2.5, "model": "tiny"}
    assert second.settings == {"noise": "shared", "pose_check": False} and second.line == 3
    jsonl = tmp_path / "jobs.jsonl"
    jsonl.write_text('{"id": "x", "reference": "a.png", "poses": "p.mp4", "output": "x.mp4", "max-frames": 4}\n\n')
    (job,) = read_jobs(jsonl)
    assert job.id == "x" and job.settings == {"max_frames": 4}


@pytest.mark.parametrize("rows, message", [
    ([{"reference": "a.png", "poses": "p.mp4", "output": "o.mp4", "colour": "red"}], "line 2, column 'colour'"),
    ([{"reference": "a.png", "poses": "p.mp4", "output": "o.mp4", "steps": "four"}], "line 2, column 'steps'"),
    ([{"reference": "a.png", "poses": "p.mp4", "output": "o.mp4"}, {"reference": "b.png", "poses": "p.mp4",
                                                                    "output": "o.mp4"}], "line 3, column 'output'"),
    ([{"reference": "a.png", "output": "o.mp4"}], "line 2: no poses"),
])
def test_a_bad_jobs_file_is_refused_naming_the_line_and_column(tmp_path, rows, message):
    with pytest.raises(JobsFileError, match=message):
        read_jobs(write_csv(tmp_path / "jobs.csv", rows))


def test_a_job_counts_as_complete_only_while_its_output_and_settings_are_as_recorded(tmp_path):
    from rain_core.batch.driver import result_record
    from rain_core.batch.jobs import is_complete

    (job,) = read_jobs(write_csv(tmp_path / "jobs.csv", [{"reference": "a.png", "poses": "p.mp4", "output": "o.mp4"}]))
    output = tmp_path / "o.mp4"
    output.write_bytes(b"frames")
    defaults = {"seed": 0}
    record = result_record(job, {"status": "done", "output": str(output)}, 1, job.fingerprint(defaults))
    assert is_complete(job, record, job.fingerprint(defaults))
    assert not is_complete(job, record, job.fingerprint({"seed": 1}))  # a flag or column changed
    assert not is_complete(job, {**record, "status": "failed"}, job.fingerprint(defaults))
    output.write_bytes(b"other frames")  # replaced since
    assert not is_complete(job, record, job.fingerprint(defaults))
    output.unlink()
    assert not is_complete(job, record, job.fingerprint(defaults))


def test_without_ray_batch_exits_2_saying_which_extra_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError, as when it is absent
    jobs = write_csv(tmp_path / "jobs.csv", [{"reference": REFERENCE, "poses": POSES, "output": "o.mp4"}])
    code, _, err = run(["batch", jobs], capsys)
    assert code == 2, err
    assert 'pip install "comfyui-rain[cluster]"' in err and "Traceback" not in err


# ---- on Ray ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray", reason="Ray is the `cluster` extra: pip install -e \".[test]\" installs it")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.ERROR,
             log_to_driver=False, object_store_memory=100 * 1024 * 1024)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def long_poses(tmp_path_factory):
    return long_pose_video(tmp_path_factory.mktemp("poses") / "long_kps.mp4")


def _kill_the_worker_writing(output: Path, timeout: float = 240.0) -> int:
    """SIGKILL the process that holds `output`'s temporary file open (a worker mid-job); returns its pid."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for partial in partial_files(output):
            for process in psutil.process_iter(["pid", "cmdline"]):
                if "ray::" not in " ".join(process.info["cmdline"] or []):
                    continue
                try:
                    if any(f.path == str(partial) for f in process.open_files()):
                        os.kill(process.pid, signal.SIGKILL)
                        return process.pid
                except psutil.Error:
                    continue
        time.sleep(0.05)
    raise AssertionError(f"no worker started writing {output} within {timeout} s")


@pytest.fixture(scope="module")
def mixed_batch(ray_session, long_poses, tmp_path_factory):
    """One batch (two workers) of good jobs, bad jobs, and a job whose worker is SIGKILLed mid-job: (exit code,
    stderr, results by id, folder, killed pid). One batch for the three behaviours: workers take ~10 s to start."""
    folder = tmp_path_factory.mktemp("mixed")
    data = bytearray(POSES.read_bytes())  # the damage of test_cli_traps' randomised-bytes test
    data[40_000:140_000] = np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    (folder / "broken.mp4").write_bytes(bytes(data))
    Image.new("RGB", (256, 256), (255, 255, 255)).save(folder / "blank.png")
    jobs = write_csv(folder / "jobs.csv", [
        {"id": "long", "reference": REFERENCE, "poses": long_poses, "output": "out/long.mp4", "max_frames": 96},
        {"id": "frames", "reference": REFERENCE, "poses": POSES, "output": "out/frames", "max_frames": 12},
        {"id": "broken", "reference": REFERENCE, "poses": "broken.mp4", "output": "out/broken.mp4"},
        {"id": "missing", "reference": REFERENCE, "poses": "nowhere.mp4", "output": "out/missing.mp4"},
        {"id": "blank", "reference": "blank.png", "poses": POSES_SHORT, "output": "out/blank.mp4"},
        {"id": "video", "reference": REFERENCE, "poses": POSES_SHORT, "output": "out/video.mp4", "max_frames": 8}])
    process = subprocess.Popen([sys.executable, "-m", "rain_core", "batch", str(jobs), "--model", "tiny",
                                "--workers", "2", "--address", ray_session.get_runtime_context().gcs_address],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        killed = _kill_the_worker_writing(folder / "out/long.mp4")
    finally:
        _, err = process.communicate(timeout=600)
    return process.returncode, err, results_by_id(folder / "jobs.results.jsonl"), folder, killed


def test_batch_and_animate_give_bit_identical_frames_for_the_same_job(mixed_batch, tmp_path, capsys):
    _, err, results, folder, _ = mixed_batch
    assert results["frames"][-1]["status"] == "done", err
    code, _, err = run(["animate", "--model", "tiny", "--reference", REFERENCE, "--poses", POSES, "--max-frames", 12,
                        "--threads", 1, "--out", tmp_path / "animate"], capsys)
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "animate").iterdir())
    assert len(names) == 12 and names == sorted(p.name for p in (folder / "out/frames").iterdir())
    for name in names:
        assert np.array_equal(np.asarray(Image.open(tmp_path / "animate" / name)),
                              np.asarray(Image.open(folder / "out/frames" / name))), name


@pytest.mark.parametrize("job", ["broken", "missing", "blank"])
def test_a_bad_job_fails_alone_with_the_message_rain_animate_gives(mixed_batch, job, tmp_path, capsys):
    code, err, results, folder, _ = mixed_batch
    assert code == 2, err  # some job had bad input, the others done
    assert results["video"][-1]["status"] == "done" and probe_video(folder / "out/video.mp4").frame_count == 8
    record = results[job][-1]
    assert record["status"] == "failed" and record["kind"] == "input" and record["attempts"] == 1
    assert f"job {job} (line {record['line']}): {record['error']}" in err and "Traceback" not in err
    row = {"broken": ("--poses", folder / "broken.mp4"), "missing": ("--poses", folder / "nowhere.mp4"),
           "blank": ("--reference", folder / "blank.png")}[job]
    args = {"--reference": REFERENCE, "--poses": POSES_SHORT, row[0]: row[1]}
    code, _, animate_err = run(["animate", "--model", "tiny", *sum(args.items(), ()), "--out", tmp_path / "o.mp4"],
                               capsys)
    assert code == 2 and animate_err.strip().splitlines()[-1] == f"rain animate: {record['error']}"  # after tqdm
    assert not (folder / f"out/{job}.mp4").exists() and no_partials(folder) == []


def test_a_killed_workers_job_is_retried_on_another_and_completes_without_a_partial_file(mixed_batch):
    _, err, results, folder, killed = mixed_batch
    assert "job long (line 2): its worker died" in err and "retrying on another" in err
    record = results["long"][-1]
    assert record["status"] == "done" and record["attempts"] == 2, err
    assert not record["worker"].endswith(f":{killed}")
    assert probe_video(folder / "out/long.mp4").frame_count == 96
    assert no_partials(folder) == []


def test_ctrl_c_stops_cleanly_and_the_next_run_skips_the_completed_jobs(ray_session, long_poses, tmp_path, capsys):
    short = [{"id": f"short{i}", "reference": REFERENCE, "poses": POSES_SHORT, "output": f"out/short{i}.mp4",
              "max_frames": 8, "seed": i} for i in range(2)]
    long = [{"id": f"long{i}", "reference": REFERENCE, "poses": long_poses, "output": f"out/long{i}.mp4",
             "max_frames": 600, "seed": i} for i in range(2)]
    jobs = write_csv(tmp_path / "jobs.csv", short + long)
    results = tmp_path / "jobs.results.jsonl"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Ctrl-C as a terminal delivers it (a suite started in the background inherits SIGINT ignored)
    process = subprocess.Popen([sys.executable, "-m", "rain_core", "batch", str(jobs), "--model", "tiny",
                                "--workers", "2", "--address", ray_session.get_runtime_context().gcs_address],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while not (results.exists() and len(results.read_text().splitlines()) == 2
               and all(partial_files(tmp_path / f"out/long{i}.mp4") for i in range(2))):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "stopped; 2 of 4 jobs are complete" in err and "Traceback" not in err
    assert no_partials(tmp_path) == [] and not (tmp_path / "out/long0.mp4").exists()
    stamps = {i: (tmp_path / f"out/short{i}.mp4").stat().st_mtime_ns for i in range(2)}

    for row in long:  # the next run: the long jobs made short, the completed ones unchanged
        row["max_frames"] = 8
    write_csv(jobs, short + long)
    code, out, err = run(["batch", jobs, "--model", "tiny", "--workers", 2, "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["skipped"], summary["done"]) == (2, 2)
    assert {i: (tmp_path / f"out/short{i}.mp4").stat().st_mtime_ns for i in range(2)} == stamps
    assert all(probe_video(tmp_path / f"out/long{i}.mp4").frame_count == 8 for i in range(2))


@pytest.mark.slow  # two more batches (three worker starts): ~60 s on this busy machine
def test_batch_scale_bench_smoke_mode_measures_one_and_two_workers(ray_session, tmp_path):
    result = bench_module("batch_scale").main(["--smoke", "--out", str(tmp_path / "batch_scale.json")])
    assert [row["workers"] for row in result["rows"]] == [1, 2] and result["rows"][0]["speedup"] == 1.0
    assert all(row["jobs_per_min"] > 0 for row in result["rows"])
    assert [turn["workers_used"] for turn in result["turns"]] == [1, 2]
    assert result["gpus_on_paper"]["on_paper"] is True
    assert json.loads((tmp_path / "batch_scale.json").read_text())["rows"] == result["rows"]
