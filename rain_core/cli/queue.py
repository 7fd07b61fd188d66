"""`rain queue`: batch-render a workflow through one running ComfyUI server, one job after another.

One server on purpose: spreading work over machines is `rain batch`'s (Ray: workers, placement, retries), which
renders the engine directly and needs no ComfyUI on each machine.
"""

from __future__ import annotations

import glob
import json
import sys
import time
from pathlib import Path

from .common import EXIT_INTERNAL, EXIT_OK, UsageError, emit


def add_parser(sub) -> None:
    p = sub.add_parser("queue", help="batch-render a workflow through a running ComfyUI")
    p.add_argument("workflow", help="workflow .json (UI format or API format)")
    p.add_argument("--server", action="append", metavar="URL",
                   help="the ComfyUI server (default http://127.0.0.1:8188); one server: to spread jobs over several "
                        "machines use `rain batch` on Ray")
    p.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE", help="override an input (repeatable)")
    p.add_argument("--sweep", action="append", metavar="INPUT=GLOB", help="one job per matching file (repeatable)")
    p.add_argument("--out", default="out/queue", help="folder for downloaded outputs")
    p.add_argument("--timeout", type=float, default=30.0, help="HTTP timeout per request (s)")
    p.add_argument("--job-timeout", type=float, default=3600.0, help="max seconds per job")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run)


def run(args) -> int:
    from .comfy_client import (
        ComfyClient,
        JobResult,
        ServerError,
        WorkflowError,
        apply_overrides,
        error_messages,
        parse_value,
        ui_to_api,
    )

    servers = list(dict.fromkeys(args.server or ["http://127.0.0.1:8188"]))
    if len(servers) > 1:
        raise UsageError(f"--server given {len(servers)} times: rain queue drives one ComfyUI server. To spread jobs "
                         "over several machines or GPUs use `rain batch JOBS` (Ray; README: Batch rendering), or "
                         "run one rain queue per server.")
    workflow_path = Path(args.workflow)
    if not workflow_path.is_file():
        raise UsageError(f"WORKFLOW {workflow_path}: file not found. Pass a workflow saved from ComfyUI (.json).")
    try:
        workflow = json.loads(workflow_path.read_text())
    except json.JSONDecodeError as error:
        raise UsageError(f"WORKFLOW {workflow_path}: not valid JSON ({error}).") from None
    overrides = {}
    for item in args.set or []:
        if "=" not in item:
            raise UsageError(f"--set {item}: expected NODE.INPUT=VALUE")
        key, value = item.split("=", 1)
        overrides[key] = parse_value(value)
    sweeps = []
    for item in args.sweep or []:
        if "=" not in item:
            raise UsageError(f"--sweep {item}: expected INPUT=GLOB or NODE.INPUT=GLOB, e.g. reference=refs/*.png")
        key, pattern = item.split("=", 1)
        files = sorted(glob.glob(pattern))
        if not files:
            raise UsageError(f"--sweep {item}: the pattern matches no file")
        sweeps.append((key, [Path(f) for f in files]))

    url = servers[0]
    client = ComfyClient(url, timeout=args.timeout)
    try:
        object_info = client.object_info()
    except ServerError as error:
        raise UsageError(f"--server {url}: {error}") from None
    base_prompt = apply_overrides(ui_to_api(workflow, object_info), overrides)

    def sweep_targets(key):
        if "." in key:
            return [key]
        # bare input name: every node having that input (e.g. 'image' of LoadImage nodes, 'reference' …)
        hits = [f"{nid}.{key}" for nid, node in base_prompt.items() if key in node["inputs"]]
        if not hits:
            raise UsageError(f"--sweep {key}=…: no node in the workflow has an input named '{key}'")
        return hits

    jobs = [({}, "job")]
    for key, files in sweeps:
        targets = sweep_targets(key)
        jobs = [({**o, **{t: f for t in targets}}, f"{name}-{f.stem}") for o, name in jobs for f in files]

    out = Path(args.out)
    results = []
    for index, (sweep_values, name) in enumerate(jobs, 1):
        start = time.monotonic()
        result = JobResult(name=name, status="error", server=url)
        try:
            uploads = {key: client.upload_image(path) for key, path in sweep_values.items()}
            prompt = apply_overrides(base_prompt, uploads)
            result.prompt_id = client.queue(prompt)
            print(f"[{index}/{len(jobs)}] {name}: queued {result.prompt_id}", file=sys.stderr)
            entry = client.wait(result.prompt_id, timeout=args.job_timeout)
            if entry["status"]["status_str"] == "success":
                result.files = client.download_outputs(entry, out, prefix=f"{name}_" if len(jobs) > 1 else "")
                result.status = "success"
            else:
                result.error = error_messages(entry)
        except (WorkflowError, RuntimeError, OSError) as error:  # ServerError is a RuntimeError
            result.error = str(error)
        result.seconds = round(time.monotonic() - start, 2)
        print(f"[{index}/{len(jobs)}] {name}: {result.status}" + (f" — {result.error}" if result.error else
                                                                    f" — {len(result.files)} file(s)"), file=sys.stderr)
        results.append(result)

    failed = [r for r in results if r.status != "success"]
    summary = {"jobs": [r.__dict__ for r in results], "failed": len(failed), "server": url}
    emit(args, summary, [f"{r.name}: {r.status} {r.files or r.error}" for r in results])
    return EXIT_OK if not failed else EXIT_INTERNAL
