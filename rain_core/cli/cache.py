"""`rain cache`: the compiled-tick cache (AOTInductor packages of the CPU tick): where, what, how large; --clear."""

from __future__ import annotations

import time

from .common import EXIT_OK, emit


def add_parser(sub) -> None:
    p = sub.add_parser("cache", help="show (or --clear) the compiled-tick cache: path, packages, sizes, total")
    p.add_argument("--clear", action="store_true",
                   help="remove every compiled package (a build running now keeps its files); the next stream "
                   "runs eagerly or compiles again")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run)


def _mb(count: int) -> str:
    return f"{count / 1e6:.1f} MB"


def run(args) -> int:
    from ..cpu_fast import (
        CACHE_MAX_ENV,
        cache_dir,
        cache_limit_bytes,
        cached_packages,
        clear_cache,
        recover_stale_builds,
    )

    folder = cache_dir() / "aoti"
    recovered = recover_stale_builds(folder)
    cleared = clear_cache(folder) if args.clear else None
    packages = cached_packages(folder)
    building = sorted(marker.stem for marker in folder.glob("*.building")) if folder.is_dir() else []
    total = sum(p["bytes"] for p in packages)
    limit = cache_limit_bytes()
    now = time.time()
    summary = {"path": str(folder), "packages": [{"name": p["path"].name, "bytes": p["bytes"],
                                                  "last_used_s_ago": round(now - p["used"])} for p in packages],
               "total_bytes": total, "limit_bytes": limit, "building": building, "stale_builds_removed": recovered}
    if cleared is not None:
        summary["cleared"] = cleared
    lines = [f"compiled-tick cache: {folder}"]
    if cleared is not None:
        lines.append(f"cleared: {cleared['removed']} files, {_mb(cleared['bytes'])}"
                     + (f"; {len(cleared['kept'])} build(s) running now kept" if cleared["kept"] else ""))
    for package in packages:
        lines.append(f"  {package['path'].name}  {_mb(package['bytes']):>10}  last used "
                     f"{(now - package['used']) / 3600:.1f} h ago")
    for key in building:
        lines.append(f"  {key}.pt2  (being built now)")
    lines.append(f"{len(packages)} package(s), {_mb(total)} in all; bound {_mb(limit) if limit > 0 else 'none'} "
                 f"({CACHE_MAX_ENV}; the least recently used go first)")
    if recovered:
        lines.append(f"removed the leftovers of {len(recovered)} builder(s) that no longer run")
    emit(args, summary, lines)
    return EXIT_OK
