"""Where batch workers run: local processes (``LocalPool``) or Ray actors (``RayPool``).

Both give the driver the same small interface over numbered worker slots:
``start(slot)``, ``submit(slot, unit)``, ``events(timeout)`` and ``close()``.
Events are tuples ``(kind, slot, payload)``:

* ``("ready", slot, label)``: the worker set up its stages (label: host:pid);
* ``("result", slot, dict)``: a work unit ended (see ``BatchWorker.process``);
* ``("lost", slot, cause)``: the worker died; its unit (if any) did not finish;
* ``("start_failed", slot, cause)``: the worker could not set up (one line).

The driver decides what to retry; neither pool restarts anything on its own,
so every restart and retry is written to the manifest.

Why not ``concurrent.futures.ProcessPoolExecutor``: one dead worker breaks the
whole executor (every pending future fails) and it does not say which process
ran a task, so the manifest could not name the worker of a unit.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.connection import wait as wait_any

from pipeline.errors import ConfigError, PipelineError


def _cause(e: BaseException) -> str:
    if isinstance(e, PipelineError):
        return f"{e.input}: {e.cause}"
    return f"{type(e).__name__}: {e}"


# ---------------------------------------------------------------- local processes
def _serve(conn, config, root, parent_pid: int) -> None:
    """Body of a local worker process: set up, then answer units until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    _exit_with_parent(parent_pid)
    from pipeline.batch.worker import BatchWorker

    try:
        worker = BatchWorker(config, root)
    except BaseException as e:
        conn.send(("start_failed", _cause(e)))
        return
    conn.send(("ready", worker.label))
    try:
        while True:
            try:
                unit = conn.recv()
            except EOFError:
                return
            if unit is None:
                return
            conn.send(("result", worker.process(unit)))
    finally:
        worker.close()


def _exit_with_parent(parent_pid: int) -> None:
    """A driver killed with SIGKILL cannot stop its workers: they notice and leave within a second."""
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(3)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


class LocalPool:
    """Worker processes on this machine (``spawn``: no forked ONNX Runtime or decoder state)."""

    engine = "local"

    def __init__(self, config, root):
        self.config, self.root = config, str(root)
        self._ctx = multiprocessing.get_context("spawn")
        self._procs: dict[int, multiprocessing.Process] = {}
        self._conns: dict[int, object] = {}

    def start(self, slot: int) -> None:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_serve, args=(child, self.config, self.root, os.getpid()),
                                 name=f"hazeflow-batch-{slot}", daemon=True)
        proc.start()
        child.close()
        self._procs[slot], self._conns[slot] = proc, parent

    def submit(self, slot: int, unit: dict) -> None:
        try:
            self._conns[slot].send(unit)
        except OSError:  # died since it was idle: its sentinel reports it as lost, with this unit
            pass

    def events(self, timeout: float) -> list[tuple]:
        waitables = {}
        for slot, conn in self._conns.items():
            waitables[conn] = slot
            waitables[self._procs[slot].sentinel] = slot
        out, gone = [], set()
        for ready in wait_any(list(waitables), timeout):
            slot = waitables[ready]
            if slot in gone:
                continue
            conn = self._conns[slot]
            try:
                while conn.poll():  # what the worker sent before it exited comes first
                    kind, payload = conn.recv()
                    out.append((kind, slot, payload))
                    if kind == "start_failed":
                        self._forget(slot)
                        gone.add(slot)
                        break
            except (EOFError, OSError):
                pass
            if slot in gone:
                continue
            proc = self._procs[slot]
            if not proc.is_alive():
                proc.join(1.0)
                out.append(("lost", slot, _exit_cause(proc.exitcode)))
                self._forget(slot)
                gone.add(slot)
        return out

    def _forget(self, slot: int) -> None:
        conn, proc = self._conns.pop(slot), self._procs.pop(slot)
        conn.close()
        proc.join(5.0)
        if proc.is_alive():
            proc.kill()
            proc.join()

    def pid(self, slot: int) -> int | None:
        proc = self._procs.get(slot)
        return proc.pid if proc is not None else None

    def close(self) -> None:
        for slot in list(self._conns):
            try:
                self._conns[slot].send(None)
            except OSError:
                pass
        deadline = time.monotonic() + 10.0
        for slot in list(self._procs):
            proc = self._procs[slot]
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():  # stuck in a file: the driver is going, so is the worker
                proc.kill()
                proc.join()
            self._conns.pop(slot).close()
            self._procs.pop(slot)

    def terminate(self) -> None:
        """Stop now (Ctrl-C): units in flight stay unfinished and are redone on resume."""
        for proc in self._procs.values():
            proc.kill()
        for slot in list(self._procs):
            self._procs.pop(slot).join()
            self._conns.pop(slot).close()


def _exit_cause(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"worker process killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"worker process killed by signal {-code}"
    return f"worker process exited with status {code}"


# ---------------------------------------------------------------- Ray
def connect_ray(address: str, workers: int | None) -> dict:
    """Join the Ray cluster at ``address`` (``auto``: RAY_ADDRESS or a cluster started on this machine
    with ``ray start``; if there is none, a local instance); ``started``: whether this call connected
    (and so should ``ray.shutdown()``), False when Ray was initialised already."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray", "Ray is not installed (pip install -e '.[cluster]')") from None
    if ray.is_initialized():  # the caller (a test, a notebook) started it and will shut it down
        return {"started": False}
    quiet = {"log_to_driver": False, "logging_level": "warning", "configure_logging": True}
    if address != "auto":
        try:
            ray.init(address=address, **quiet)
        except Exception as e:
            raise ConfigError(f"--ray {address}", f"cannot join the Ray cluster ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:200]})") from None
        return {"started": True}
    try:
        ray.init(address="auto", **quiet)
        return {"started": True}
    except ConnectionError:
        pass  # nothing running: start one here
    ray.init(num_cpus=workers or None, include_dashboard=False, **quiet)
    return {"started": True}


class RayPool:
    """One Ray actor per worker slot; a unit is a method call on an idle actor.

    Each actor holds a ``BatchWorker`` (stages set up once). Actors are not
    restarted by Ray (``max_restarts=0``): a lost actor shows up as ``lost`` and
    the driver starts a new one and retries the unit, writing both to the
    manifest. ``num_gpus`` per actor may be fractional (two workers on one GPU).
    """

    engine = "ray"

    def __init__(self, config, root, num_cpus: float = 1.0, num_gpus: float = 0.0):
        import ray

        self.ray = ray
        self.config, self.root = config, str(root)
        self._actor_cls = ray.remote(_RayWorker).options(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0,
                                                          max_task_retries=0)
        self._actors: dict[int, object] = {}
        self._pending: dict = {}  # ObjectRef -> (slot, kind)

    def start(self, slot: int) -> None:
        actor = self._actor_cls.remote(self.config, self.root)
        self._actors[slot] = actor
        self._pending[actor.info.remote()] = (slot, "ready")

    def submit(self, slot: int, unit: dict) -> None:
        self._pending[self._actors[slot].process.remote(unit)] = (slot, "result")

    def events(self, timeout: float) -> list[tuple]:
        if not self._pending:
            time.sleep(timeout)
            return []
        ready, _ = self.ray.wait(list(self._pending), num_returns=1, timeout=timeout)
        out = []
        for ref in ready:
            slot, kind = self._pending.pop(ref)
            try:
                value = self.ray.get(ref)
            except self.ray.exceptions.RayActorError as e:
                out.append(("lost", slot, f"Ray actor died ({_ray_reason(e)})"))
                self._drop(slot)
                continue
            except self.ray.exceptions.RayError as e:  # a task error: BatchWorker.process does not raise
                out.append(("lost", slot, _ray_reason(e)))
                self._drop(slot)
                continue
            if kind == "ready" and "error" in value:
                out.append(("start_failed", slot, value["error"]))
                self._drop(slot)
                continue
            out.append((kind, slot, value["worker"] if kind == "ready" else value))
        return out

    def _drop(self, slot: int) -> None:
        actor = self._actors.pop(slot, None)
        for ref, (s, _) in list(self._pending.items()):
            if s == slot:
                self._pending.pop(ref)
        if actor is not None:
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass

    def close(self) -> None:
        for slot in list(self._actors):
            self._drop(slot)

    terminate = close


def _ray_reason(e: BaseException) -> str:
    """The first sentence of a Ray error, without ids and tracebacks."""
    text = " ".join(str(e).split())
    for marker in ("The actor died", "The actor is dead", "Worker unexpectedly exits"):
        i = text.find(marker)
        if i >= 0:
            text = text[i:]
            break
    return text.split(". ")[0][:160]


class _RayWorker:
    """The Ray actor: a BatchWorker living in a Ray worker process.

    A set-up failure is kept and reported by ``info`` as one line instead of
    raised: Ray would otherwise turn it into an actor death with a traceback.
    """

    def __init__(self, config, root):
        from pipeline.batch.worker import BatchWorker

        self.worker, self.error = None, None
        try:
            self.worker = BatchWorker(config, root)
        except Exception as e:
            self.error = _cause(e)

    def info(self) -> dict:
        return {"error": self.error} if self.error else self.worker.info()

    def process(self, unit: dict) -> dict:
        return self.worker.process(unit)
