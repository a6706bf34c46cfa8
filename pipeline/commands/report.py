"""``hazeflow report OUTPUT_DIR``: one self-contained HTML page per run (pipeline.analytics.report)."""
from __future__ import annotations

from pipeline.analytics.report import build_report


def main(args) -> int:
    path = build_report(args.output_dir)
    print(path)
    return 0
