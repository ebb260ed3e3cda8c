"""``make bench``: every benchmark of benchmarks/, ours beside a peer in the same run, as one table.

Each module exposes ``measure(options) -> list[Row]`` (see ``benchmarks/table.py``). The run prints
the table and the machine it ran on, optionally writes both as JSON (``--json PATH``), and exits 1
only if some row's data differed from the truth (``ok=False``) or a benchmark could not run at all:
never because of a timing.

    .venv/bin/python benchmarks/run.py [--quick] [--only sync tokens ...] [--json bench.json]
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import platform
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Modules may import ``benchmarks.table`` (from the repository root) or ``table`` (from here).
for _path in (str(ROOT), str(ROOT / "benchmarks")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from benchmarks.table import BenchOptions, Row  # noqa: E402 (needs the path above)

# group -> module; ``breaker`` is written separately and may be absent.
MODULES: dict[str, str] = {
    "sync": "benchmarks.sync_speed",
    "tokens": "benchmarks.tokens",
    "memory": "benchmarks.memory",
    "faults": "benchmarks.faults",
    "breaker": "benchmarks.breaker_cost",
}
OPTIONAL = {"breaker"}
COLUMNS = ("group", "metric", "ours", "peer", "peer name", "ratio", "unit", "ok", "note")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    defaults = BenchOptions()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", default=defaults.redis_url, help="Redis for shared state (default: %(default)s)")
    parser.add_argument(
        "--postgres-url", default=defaults.postgres_url, help="PostgreSQL server (default: %(default)s)"
    )
    parser.add_argument("--repeats", type=int, default=defaults.repeats, help="timings are medians of this many runs")
    parser.add_argument("--quick", action="store_true", help="smaller data sizes and fewer seeds")
    parser.add_argument("--only", nargs="+", choices=sorted(MODULES), metavar="GROUP", help="run only these groups")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the table and the machine as JSON here")
    parser.add_argument("--verbose", action="store_true", help="show the provider log (retries, breaker)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def fmt(value: float) -> str:
    if math.isinf(value):
        return "inf"
    if math.isnan(value):
        return "nan"
    if value == int(value) and abs(value) < 1e9:
        return str(int(value))
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def machine(options: BenchOptions) -> dict[str, Any]:
    """CPU, Python, Redis and PostgreSQL versions; a server that does not answer says why."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
    }
    try:
        import redis

        client = redis.Redis.from_url(options.redis_url, socket_timeout=5)
        info["redis"] = str(client.info("server")["redis_version"])
        client.close()
    except Exception as exc:
        info["redis"] = f"unavailable ({type(exc).__name__}: {exc})"
    try:
        from sqlalchemy import create_engine, text

        engine = create_engine(options.postgres_url)
        with engine.connect() as conn:
            info["postgresql"] = str(conn.execute(text("SHOW server_version")).scalar_one())
        engine.dispose()
    except Exception as exc:
        info["postgresql"] = f"unavailable ({type(exc).__name__}: {exc})"
    return info


def render(rows: Sequence[Row]) -> str:
    cells = [
        [
            row.group,
            row.metric,
            fmt(row.ours),
            fmt(row.peer),
            row.peer_name,
            fmt(row.ratio),
            row.unit,
            "ok" if row.ok else "DIFFERS",
            row.note,
        ]
        for row in rows
    ]
    widths = [max(len(text) for text in column) for column in zip(COLUMNS, *cells, strict=False)]
    widths[-1] = 0  # the note runs to the end of the line
    numeric = {2, 3, 5}

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            value.rjust(width) if index in numeric else value.ljust(width)
            for index, (value, width) in enumerate(zip(values, widths, strict=True))
        ).rstrip()

    return "\n".join([line(COLUMNS), line(["-" * w for w in widths[:-1]] + ["-" * 4]), *map(line, cells)])


def row_json(row: Row) -> dict[str, Any]:
    values = asdict(row)
    values["ratio"] = row.ratio if math.isfinite(row.ratio) else None
    return values


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Retries and breaker openings under faults are expected here; their warnings would bury the table.
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="  log: %(message)s")
    options = BenchOptions(
        redis_url=args.redis_url, postgres_url=args.postgres_url, repeats=args.repeats, quick=args.quick
    )
    groups = args.only or list(MODULES)
    rows: list[Row] = []
    errors: dict[str, str] = {}
    absent: list[str] = []
    durations: dict[str, float] = {}
    started = time.perf_counter()
    # Every group is imported before anything is measured: a missing peer fails now, not after minutes.
    modules = {}
    for group in groups:
        name = MODULES[group]
        try:
            modules[group] = importlib.import_module(name)
        except ModuleNotFoundError as missing:
            if group in OPTIONAL and missing.name == name:
                absent.append(group)
                print(f"[{group}] {name} is not there yet: no {group} rows in this run", flush=True)
                continue
            raise SystemExit(
                f"[{group}] needs {missing.name!r}, which is not installed: pip install -e '.[bench]' (make bench does)"
            ) from None
    for group, module in modules.items():
        print(f"[{group}] measuring ...", flush=True)
        group_started = time.perf_counter()
        try:
            measured = list(module.measure(options))
        except Exception:
            errors[group] = traceback.format_exc()
            print(f"[{group}] FAILED to run:\n{errors[group]}", flush=True)
            continue
        finally:
            durations[group] = time.perf_counter() - group_started
        rows += measured
        print(f"[{group}] {len(measured)} row(s) in {durations[group]:.0f} s", flush=True)

    info = machine(options)
    print()
    print(render(rows))
    print()
    print(
        f"Machine: {info['cpu_count']} CPU ({info['cpu_model']}), {info['python']}, "
        f"Redis {info['redis']}, PostgreSQL {info['postgresql']}"
    )
    print(f"Options: repeats={options.repeats} quick={options.quick}; took {time.perf_counter() - started:.0f} s")
    print("ratio = ours / peer. Only data that differs from the sandbox's truth fails the run, never a timing.")
    for group in absent:
        print(f"Not run: {group} ({MODULES[group]} does not exist yet).")
    differs = [row for row in rows if not row.ok]
    for row in differs:
        print(f"DATA DIFFERS: [{row.group}] {row.metric}: {row.note}")
    for group in errors:
        print(f"ERROR: group {group} could not run (traceback above).")
    if args.json is not None:
        report = {
            "machine": info,
            "options": asdict(options),
            "rows": [row_json(row) for row in rows],
            "absent": absent,
            "errors": errors,
            "seconds": durations,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"Wrote {args.json}")
    return 1 if differs or errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
