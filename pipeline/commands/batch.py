"""``hazeflow batch INPUTS... --output DIR [--config FILE] [--workers N] [--ray auto|ADDRESS] [--retries N]``.

Every input is one work unit with its own output set ``DIR/<name>/``; the run
is recorded in ``DIR/batch.jsonl`` and summarised in ``DIR/summary.json``.
Re-running the same command resumes: complete output sets are kept, failed
inputs are retried while they have attempts left. Exit status 0 when every
input is done, 130 after Ctrl-C, otherwise one line naming how many failed.
"""
from __future__ import annotations

import dataclasses
import sys

from pipeline.batch.driver import BatchRun, cpu_workers, format_table
from pipeline.batch.inputs import expand_inputs
from pipeline.config import CONFIG_DIR, load_config, with_overrides
from pipeline.errors import ConfigError, PipelineError

DEFAULT_CONFIG = CONFIG_DIR / "batch.yaml"


def main(args) -> int:
    config = load_config(args.config or DEFAULT_CONFIG)
    config = with_overrides(config, output=args.output, backend=args.backend, device=args.device)
    if config.runtime.policy == "drop_oldest":
        raise ConfigError("runtime.policy", "drop_oldest loses frames; a batch needs every frame (use block or auto)")
    config = dataclasses.replace(config, inputs=())  # the command line names the inputs
    if args.workers is not None and args.workers < 1:
        raise ConfigError("--workers", f"must be >= 1, got {args.workers}")
    inputs = expand_inputs(args.inputs)
    show = not args.no_progress and sys.stderr.isatty()
    batch = BatchRun(config, args.output, inputs, retries=args.retries, progress=show)
    if args.ray is None:
        from pipeline.batch.pools import LocalPool

        workers = args.workers or cpu_workers()
        report = batch.run(lambda: LocalPool(config, batch.root), workers)
    else:
        report = _run_on_ray(batch, config, args)
    print(format_table(report, batch.root))
    if report.interrupted:
        print("hazeflow: interrupted; finished inputs are kept, re-run the command to resume", file=sys.stderr)
        return 130
    failed = report.count("failed")
    if failed:
        raise PipelineError(str(batch.manifest_path), f"{failed} of {len(report.entries)} inputs failed "
                            "(causes in the table above and in the manifest)")
    return 0


def _run_on_ray(batch: BatchRun, config, args):
    from pipeline.batch.pools import RayPool, connect_ray

    if args.gpus_per_worker is not None and args.gpus_per_worker < 0:
        raise ConfigError("--gpus-per-worker", f"must be >= 0, got {args.gpus_per_worker}")
    gpus = args.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if config.runtime.device == "cuda" else 0.0
    connection = connect_ray(args.ray, args.workers)
    try:
        workers = args.workers or _ray_slots(gpus)
        return batch.run(lambda: RayPool(config, batch.root, num_cpus=1.0, num_gpus=gpus), workers)
    finally:
        if connection["started"]:
            import ray

            ray.shutdown()


def _ray_slots(gpus: float) -> int:
    """Workers the cluster can hold at once: one per CPU, or per ``gpus`` GPUs."""
    import ray

    resources = ray.cluster_resources()
    if gpus > 0:
        return max(1, int(resources.get("GPU", 0) / gpus))
    return max(1, int(resources.get("CPU", 1)))
