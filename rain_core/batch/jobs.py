"""The jobs file of `rain batch` (CSV with a header row, or JSON lines) and its results file (JSON lines).

A job is one `rain animate` run: reference, poses, output, and optional settings that override the command's flags.
Relative paths resolve against the jobs file's folder, so a jobs file travels with its inputs. The results file gets
one line per finished job (appended as it finishes, so an interrupted batch keeps what it did); the last line of
a job wins. A job is skipped on the next run when its last line says done, the job is unchanged (same paths and
settings) and its output still has the size and modification time recorded then.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..loading.layout import is_builtin_name
from ..stream.config import DECODERS, NOISE_MODES


class JobsFileError(ValueError):
    """A jobs file that cannot be read; the message names the file, line and column."""


def _choice(*allowed):
    def parse(text):
        value = str(text).strip().lower()
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return value
    return parse


def _positive(kind):
    def parse(text):
        value = kind(text)
        if not value > 0:
            raise ValueError(f"expected a number > 0, found {value}")
        return value
    return parse


def _boolean(text):
    if isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _whole(text):
    if isinstance(text, float) and not text.is_integer():
        raise ValueError(f"expected a whole number, found {text}")
    return int(text)


PATH_COLUMNS = ("reference", "poses", "output")
# The optional settings: the column names are `rain animate`'s flags with '_' for '-'.
SETTINGS = {
    "model": str,
    "levels": _positive(_whole),
    "frames_per_cohort": _positive(_whole),
    "steps": _positive(_whole),
    "guidance": float,
    "seed": _whole,
    "noise": _choice(*NOISE_MODES),
    "height": _positive(_whole),
    "width": _positive(_whole),
    "max_frames": _positive(_whole),
    "fps": _positive(float),
    "decoder": _choice(*DECODERS),
    "pose_check": _boolean,
}
COLUMNS = ("id", *PATH_COLUMNS, *SETTINGS)


@dataclass
class Job:
    """One line of the jobs file: `id` (the `id` column, else the output as written), paths made absolute."""

    id: str
    line: int
    reference: str
    poses: str
    output: str
    settings: dict = field(default_factory=dict)

    def arguments(self, defaults: dict) -> dict:
        """The `rain animate` arguments of this job: the command's flags, then this line's settings."""
        return {**defaults, **self.settings, "reference": self.reference, "poses": self.poses, "out": self.output}

    def fingerprint(self, defaults: dict) -> str:
        """Changes when anything that decides the frames changes (paths, settings, the command's flags)."""
        text = json.dumps(self.arguments(defaults), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _rows(path: Path):
    """(line number, {column: value}) of a CSV (header row) or JSON-lines file; blank lines skipped."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise JobsFileError(f"{path} line {number}: not valid JSON ({error.msg}).") from None
            if not isinstance(row, dict):
                raise JobsFileError(f"{path} line {number}: expected a JSON object, e.g. "
                                    '{"reference": "ref.png", "poses": "poses.mp4", "output": "out.mp4"}.')
            yield number, row
        return
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if not header:
        raise JobsFileError(f"{path}: empty; the first line names the columns, e.g. reference,poses,output.")
    header = [name.strip() for name in header]
    for number, values in enumerate(reader, 2):
        if not any(value.strip() for value in values):
            continue
        if len(values) > len(header):
            raise JobsFileError(f"{path} line {number}: {len(values)} values for {len(header)} columns.")
        yield number, {name: value for name, value in zip(header, values) if value.strip() != ""}


def _column(name: str) -> str:
    return str(name).strip().lower().replace("-", "_")


def _resolve(folder: Path, value) -> str:
    path = Path(os.path.expanduser(str(value).strip()))
    return str(path if path.is_absolute() else folder / path)


def read_jobs(path) -> list[Job]:
    """Parse and check a jobs file; raises JobsFileError naming the line and column of the first problem."""
    path = Path(path)
    if not path.is_file():
        raise JobsFileError(f"JOBS {path}: file not found. Write a CSV with the header reference,poses,output "
                            "(optional columns: " + ", ".join(COLUMNS[4:]) + ") or a .jsonl file.")
    folder = path.resolve().parent
    jobs, outputs, ids = [], {}, {}
    for number, row in _rows(path):
        row = {_column(name): value for name, value in row.items() if value is not None}
        where = f"{path} line {number}"
        for name in row:
            if name not in COLUMNS:
                raise JobsFileError(f"{where}, column '{name}': unknown column; the columns are "
                                    f"{', '.join(COLUMNS)}.")
        missing = [name for name in PATH_COLUMNS if not str(row.get(name, "")).strip()]
        if missing:
            raise JobsFileError(f"{where}: no {' / '.join(missing)}; every job needs reference, poses and output.")
        settings = {}
        for name, parse in SETTINGS.items():
            if name not in row:
                continue
            try:
                settings[name] = parse(row[name])
            except (TypeError, ValueError) as error:
                raise JobsFileError(f"{where}, column '{name}': {row[name]!r} is not valid ({error}).") from None
        model = settings.get("model")
        if model is not None and not (is_builtin_name(model) and not (folder / model).exists()):
            settings["model"] = _resolve(folder, model)
        job = Job(id=str(row.get("id") or row["output"]).strip(), line=number,
                  reference=_resolve(folder, row["reference"]), poses=_resolve(folder, row["poses"]),
                  output=_resolve(folder, row["output"]), settings=settings)
        for key, seen, what in ((os.path.normpath(job.output), outputs, "output"), (job.id, ids, "id")):
            if key in seen:
                raise JobsFileError(f"{where}, column '{what}': the same {what} as line {seen[key]}; every job "
                                    "needs its own output and id.")
            seen[key] = number
        jobs.append(job)
    if not jobs:
        raise JobsFileError(f"{path}: no jobs in it.")
    return jobs


# --------------------------------------------------------------------------------------------------- results file


def default_results_path(jobs_path) -> Path:
    """jobs.csv → jobs.results.jsonl beside it."""
    jobs_path = Path(jobs_path)
    return jobs_path.with_name(f"{jobs_path.stem}.results.jsonl")


def read_results(path) -> dict[str, dict]:
    """The last record of each job id; unreadable lines (a batch killed mid-write) are ignored."""
    records = {}
    path = Path(path)
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "id" in record:
            records[str(record["id"])] = record
    return records


def output_stamp(output) -> dict | None:
    """Size and modification time of a finished output (a file, or a folder of PNG frames)."""
    path = Path(output)
    try:
        stat = path.stat()
    except OSError:
        return None
    size = stat.st_size
    if path.is_dir():
        size = sum(child.stat().st_size for child in path.iterdir() if child.is_file())
    return {"output_size": size, "output_mtime_ns": stat.st_mtime_ns}


def is_complete(job: Job, record: dict | None, fingerprint: str) -> bool:
    """Whether a finished run of this very job left the output that is there now."""
    if not record or record.get("status") != "done" or record.get("job_hash") != fingerprint:
        return False
    stamp = output_stamp(record.get("output") or job.output)
    return stamp is not None and all(record.get(key) == value for key, value in stamp.items())


class ResultsFile:
    """Appends one JSON line per finished job, flushed at once (an interrupted batch keeps its lines)."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())

    def append(self, record: dict) -> None:
        self._file.write(json.dumps(record, default=str) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()
