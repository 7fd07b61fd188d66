"""The GPU benchmark's summary table (printed and written to gpu_stream_table.txt)."""

from __future__ import annotations

import json
import math

from .run import Run, _jsonable


def print_table(run: Run) -> str:
    env = run.results.get("environment", {})
    lines = [
        f"RAIN tick on {env.get('name', '?')} (torch {env.get('torch')}), "
        f"stream {run.results.get('build', {}).get('stream', {})}",
        f"{'row':24s} {'fps':>8s} {'ms/tick':>9s} {'guider':>7s} {'unet':>8s} {'step':>6s} {'decode':>7s} "
        f"{'lat@30':>7s} {'peakGiB':>8s} {'TFLOP/s':>8s} {'%bf16':>6s}",
    ]
    for row in run.results.get("rows", []):
        if "ms_per_tick" not in row:
            lines.append(f"{row['id']:24s} {row.get('skipped') or row.get('error', '')}")
            continue
        stages = row["stage_ms"]
        latency = row["latency_30fps_s"]["mean"]
        latency_text = f"{latency:.3f}" if math.isfinite(latency) else "behind"
        peak_text = f"{row['peak_gib']:.2f}" if row.get("peak_gib") is not None else "-"
        tflops_text = f"{row['tflops']:.1f}" if row.get("tflops") else "-"
        share_text = f"{100 * row['fraction_of_bf16_ceiling']:.0f}" if row.get("fraction_of_bf16_ceiling") else "-"
        lines.append(
            f"{row['id']:24s} {row['fps']:8.1f} {row['ms_per_tick']:9.2f} {stages['guider']:7.2f} {stages['unet']:8.2f} "
            f"{stages['step']:6.2f} {stages['decode']:7.2f} {latency_text:>7s} {peak_text:>8s} {tflops_text:>8s} "
            f"{share_text:>6s}"
        )
    ceiling = run.results.get("ceiling", {})
    if ceiling:
        lines.append("ceilings: " + ", ".join(f"{k} {v:.1f}" for k, v in ceiling.items() if not k.endswith("_n")))
    for key in ("engine", "check", "memory", "authors"):
        if key in run.results:
            lines.append(f"{key}: {json.dumps(run.results[key], default=_jsonable)}")
    lines.append(
        "sections: " + ", ".join(f"{k} {v['status']} ({v['seconds']} s)" for k, v in run.results["sections"].items())
    )
    text = "\n".join(lines)
    print(text)
    (run.out / "gpu_stream_table.txt").write_text(text + "\n")
    return text
