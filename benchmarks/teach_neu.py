"""Benchmark: the offline measure teacher over NEU-DET (1800 steel-surface images, 200x200) with `--profile neu`.

Target (issue 3): all 1800 images in under 10 minutes on the project's 2-core CPU. Prints a table and writes
benchmarks/results/teach_neu.json with the hardware and package versions, so the README's figure can be traced here.

    .venv/bin/python benchmarks/teach_neu.py [--root ../shared/data/neu-det] [--limit N]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from importlib.metadata import version
from pathlib import Path

from maemi.fileio import atomic_write_json
from maemi.teachers.measure import MeasureTeacher
from maemi.teachers.pipeline import TeachConfig, teach
from maemi.teachers.records import read_records

TARGET_S = 600.0
HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=HERE.parents[1] / "shared" / "data" / "neu-det")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (classes in turn)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "teach_neu.json")
    args = parser.parse_args()
    if not args.root.is_dir():
        sys.exit(f"{args.root}: NEU-DET not found (pass --root)")

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "neu.jsonl"
        start = time.perf_counter()
        report = teach(args.root, data, MeasureTeacher("neu"), TeachConfig(profile="neu", limit=args.limit),
                       progress=True)
        wall = time.perf_counter() - start
        records = read_records(data)

    images = report.answered
    result = {
        "benchmark": "teach_neu",
        "dataset": str(args.root),
        "teacher": "measure",
        "profile": "neu",
        "images": images,
        "unreadable": len(report.unreadable),
        "records": len(records),
        "records_by_task": dict(Counter(r["task"] for r in records)),
        "wall_s": round(wall, 2),
        "ms_per_image": round(1000 * wall / max(images, 1), 1),
        "projected_1800_s": round(1800 * wall / max(images, 1), 1),
        "target_s": TARGET_S,
        "meets_target": 1800 * wall / max(images, 1) < TARGET_S,
        "hardware": {"machine": platform.machine(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
                     "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "python": platform.python_version()},
        "packages": {p: version(p) for p in ("numpy", "scipy", "scikit-image", "pillow")},
    }
    print(f"{'images':>8} {'records':>8} {'wall s':>8} {'ms/img':>8} {'1800 imgs s':>12} {'target s':>9}")
    print(f"{images:>8} {len(records):>8} {wall:>8.1f} {result['ms_per_image']:>8.1f} "
          f"{result['projected_1800_s']:>12.1f} {TARGET_S:>9.0f}  {'OK' if result['meets_target'] else 'TOO SLOW'}")
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
