"""Write the RI-GAN training configs of a GPU session (run by tools/gpu_session.sh).

Both start from configs/train_rigan.yaml (same data, losses, seedable synthesis) and change
what a GPU run should change: the clear frames come from the carried copy of the shared data
(HAZEFLOW_SHARED_DATA; the CDnet highway folder there holds only every 20th frame, so ``every``
becomes 1), batches of 32 made by DataLoader workers, a time budget instead of an iteration
count, a new seed (7: neither the CPU run's 1 nor the held-out 99), no SOTS validation (the
dev set is not carried and is never trained on). ``--init`` in the session script continues
from the shipped CPU-trained weights.

usage: python3 tools/gpu_train_configs.py SECONDS OUT_DIR  ->  OUT_DIR/rigan_gpu.yaml, OUT_DIR/rigan_light_gpu.yaml
"""
from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def gpu_config(base: dict, seconds: float, shared: Path, width: int, blocks: int, workers: int) -> dict:
    cfg = copy.deepcopy(base)
    cfg["seed"] = 7
    cfg["model"].update(width=width, blocks=blocks)
    clear = []
    for src in cfg["data"]["clear"]:
        src = dict(src)
        if "path" in src:
            src["path"] = str(shared / src["path"].split("shared/data/", 1)[1])
            if "cdnet2014-highway" in src["path"]:
                src["every"] = 1
        clear.append(src)
    cfg["data"].update(clear=clear, samples_per_epoch=320000)  # one epoch per run: workers start once
    cfg["train"].update(epochs=1000, batch=32, lr_g=3e-4, lr_d=1.5e-4, lr_floor=0.05, adv_start=0,
                        checkpoint_every=250, max_seconds=float(seconds), workers=workers)
    cfg["val"].update(hazy=None, clear=None)
    return cfg


def main(argv: list[str]) -> int:
    seconds, out = float(argv[0]), Path(argv[1])
    shared = Path(os.environ.get("HAZEFLOW_SHARED_DATA", ROOT.parent / "shared" / "data")).resolve()
    base = yaml.safe_load((ROOT / "configs" / "train_rigan.yaml").read_text())
    out.mkdir(parents=True, exist_ok=True)
    workers = max(1, (os.cpu_count() or 2) // 2 - 1)  # two runs side by side
    for name, width, blocks in (("rigan_gpu", 16, 4), ("rigan_light_gpu", 8, 3)):
        cfg = gpu_config(base, seconds, shared, width, blocks, workers)
        (out / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    print(f"configs in {out}: {seconds:.0f} s each, {workers} workers each, data from {shared}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
