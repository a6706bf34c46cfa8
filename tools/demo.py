"""``make demo``: run hazeflow on the bundled hazy clip and show where the outputs are.

Runs ``hazeflow run configs/default.yaml --input assets/demo.mp4 --output out/demo``
(CPU, no network, no shared data needed). The clip is regenerated from
../shared/data when it is missing and that data is present.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIP = ROOT / "assets" / "demo.mp4"
OUT = ROOT / "out" / "demo"


def main() -> int:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tools"))
    if not CLIP.exists():
        from make_demo_clip import SRC, make_clip

        if not SRC.exists():
            print(f"demo: error: {CLIP}: missing and {SRC} is not here to rebuild it", file=sys.stderr)
            return 2
        make_clip(SRC, CLIP)
    from pipeline.cli import main as hazeflow

    argv = ["run", str(ROOT / "configs" / "default.yaml"), "--input", str(CLIP), "--output", str(OUT)]
    print("hazeflow " + " ".join(argv), flush=True)
    status = hazeflow(argv)
    if status == 0:
        print(f"\ndemo: done. Open {OUT / 'demo' / 'preview.mp4'} (input | dehazed | foreground and boxes);"
              f" per-frame objects in {OUT / 'demo' / 'events.jsonl'}, numbers in {OUT / 'demo' / 'summary.json'}")
    return status


if __name__ == "__main__":
    sys.exit(main())
