"""Executor: a :class:`Plan` -> futures on a Dask ``Client`` (LocalCluster or an address).

Units are submitted with deterministic keys; results stream back through
``as_completed`` to a callback (which writes each part), so the client never holds every
row. A unit that raises is retried (``retries``) and then either recorded as a failure
(``on_error: skip``) or stops the run (``on_error: fail``). ``cluster="sync"`` runs the
units in-process one after another: the debuggable path, and the reference the
distributed runs are compared with in tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, TaskError
from .planner import Plan, WorkUnit
from .tasks import JobContext, UnitResult, run_unit

__all__ = ["ClientStarter", "ClusterOptions", "ExecutionSummary", "choose_processes", "execute",
           "open_client"]

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True, slots=True)
class ClusterOptions:
    """Where to run: ``address`` (existing scheduler), ``"sync"``, or a new LocalCluster
    (default: one worker in this process with a thread per core)."""

    address: str | None = None
    n_workers: int = 1
    threads_per_worker: int | None = None  # None: one per CPU core
    memory_limit: str = "auto"
    dashboard: bool = True
    processes: bool | str = False  # or "auto": see :func:`choose_processes`
    slurm: Any = None  # SlurmClusterSpec: workers as SLURM jobs (dask-jobqueue)
    kubernetes: Any = None  # KubernetesClusterSpec: a KubeCluster (dask-kubernetes)

    @property
    def local(self) -> bool:
        """Whether these options start a LocalCluster (not an address, SLURM or Kubernetes)."""
        return not (self.address or self.slurm is not None or self.kubernetes is not None)

    @property
    def threads(self) -> int:
        """Threads per worker, with ``None`` resolved to the CPU count."""
        import os

        return self.threads_per_worker or os.cpu_count() or 1


@dataclass
class ExecutionSummary:
    """Counts and timings of one execution."""

    units_total: int = 0
    units_done: int = 0
    units_failed: int = 0
    rows: int = 0
    chunks_read: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    dashboard_link: str | None = None
    scheduler: str = "sync"
    n_workers: int = 0
    wall_s: float = 0.0
    unit_s_total: float = 0.0
    unit_s_max: float = 0.0
    first_unit_at: float | None = None  # wall clock when the first unit started
    #: per worker thread ("address thread-name"): units, busy_s (sum of unit durations),
    #: cpu_s (that thread's CPU in them), first_start / last_end (wall clock): how evenly
    #: the work was spread
    per_worker: dict[str, dict[str, float]] = field(default_factory=dict)
    #: phase -> [wall s, CPU s] summed over every unit (``UnitResult.phases``)
    phases: dict[str, list[float]] = field(default_factory=dict)

    def phase_record(self) -> dict[str, dict[str, float]]:
        """:attr:`phases` as ``{phase: {"wall_s", "cpu_s"}}``, in the order units pass them."""
        return {k: {"wall_s": round(w, 3), "cpu_s": round(c, 3)}
                for k, (w, c) in self.phases.items()}

    def worker_record(self) -> dict[str, dict[str, float]]:
        """:attr:`per_worker` with times in seconds from the first unit's start."""
        t0 = self.first_unit_at or 0.0
        return {w: {"units": int(r["units"]), "busy_s": round(r["busy_s"], 3),
                    "cpu_s": round(r["cpu_s"], 3),
                    "first_start_s": round(r["first_start"] - t0, 3),
                    "last_end_s": round(r["last_end"] - t0, 3)}
                for w, r in sorted(self.per_worker.items())}


def slurm_cluster_kwargs(spec: Any) -> dict[str, Any]:
    """``dask_jobqueue.SLURMCluster`` arguments for a ``cluster.slurm`` section (pure)."""
    kwargs: dict[str, Any] = {
        "cores": spec.cores, "memory": spec.memory, "processes": spec.processes,
        "walltime": spec.walltime, "queue": spec.queue, "account": spec.account,
        "job_script_prologue": list(spec.job_script_prologue),
        "job_extra_directives": list(spec.job_extra_directives),
        "local_directory": spec.local_directory, "interface": spec.interface,
        "name": "pqb-worker",
    }
    return {k: v for k, v in kwargs.items() if v is not None}


def kubernetes_cluster_kwargs(spec: Any) -> dict[str, Any]:
    """``dask_kubernetes.operator.KubeCluster`` arguments for a ``cluster.kubernetes``
    section (pure); worker resources and environment go into the worker pods."""
    kwargs: dict[str, Any] = {"name": spec.name, "image": spec.image, "n_workers": spec.n_workers,
                              "resources": dict(spec.resources) or None, "env": dict(spec.env) or None,
                              "namespace": spec.namespace}
    return {k: v for k, v in kwargs.items() if v is not None}


def _connect_deployed(options: ClusterOptions) -> tuple[Any, Any]:
    """A cluster started through dask-jobqueue (SLURM) or dask-kubernetes."""
    from distributed import Client

    if options.slurm is not None:
        try:
            from dask_jobqueue import SLURMCluster
        except ImportError as exc:
            raise ConfigError("cluster.slurm needs dask-jobqueue",
                              hint='pip install "pixelquery_batch[jobqueue]"') from exc
        cluster = SLURMCluster(**slurm_cluster_kwargs(options.slurm))
        cluster.scale(jobs=options.slurm.jobs)
    else:
        try:
            from dask_kubernetes.operator import KubeCluster
        except ImportError as exc:
            raise ConfigError("cluster.kubernetes needs dask-kubernetes",
                              hint="pip install dask-kubernetes (and the Dask operator in the "
                              "Kubernetes cluster)") from exc
        cluster = KubeCluster(**kubernetes_cluster_kwargs(options.kubernetes))
    try:
        client = Client(cluster, set_as_default=True)
        client.wait_for_workers(1, timeout=600)
    except BaseException:
        cluster.close()
        raise
    return client, cluster


def _connect(options: ClusterOptions) -> tuple[Any, Any]:
    """A connected ``distributed.Client`` and the LocalCluster it started (or ``None``)."""
    from distributed import Client, LocalCluster

    options = choose_processes(options, None, None)  # "auto" of unknown size: threads
    if options.address:
        try:
            return Client(options.address, timeout="20s", set_as_default=True), None
        except OSError as exc:
            raise ConfigError(f"cannot connect to the Dask scheduler at {options.address}: {exc}",
                              hint="check cluster.address / --cluster and that the scheduler runs",
                              address=options.address) from exc
    if not options.local:
        return _connect_deployed(options)
    import dask

    # Dask's statistical profiler only feeds the dashboard: without one, its watcher
    # threads walk every thread's stack every 10 ms, holding the GIL (~0.3 s of CPU per
    # 100,000-field run, taken from the units). Its event-loop health tick (every 20 ms in
    # each server: the scheduler, each nanny, each worker) and system monitor (psutil
    # every 500 ms) only warn and feed the dashboard; slower, they stop taking the cores
    # from worker processes that have no spare one (by hand, 100,000 fields, two worker
    # processes, 3 interleaved runs each: off-CPU time of a worker's units 0.36-0.65 s
    # against 0.46-0.92 s; one worker unchanged).
    quiet = {} if options.dashboard else {"distributed.worker.profile.enabled": False,
                                          "distributed.admin.tick.interval": "200ms",
                                          "distributed.admin.system-monitor.interval": "2s"}
    with dask.config.set({**quiet, **_start_method(options)}):
        cluster = LocalCluster(
            n_workers=options.n_workers,
            threads_per_worker=options.threads,
            memory_limit=options.memory_limit,
            processes=options.processes,
            dashboard_address=":0" if options.dashboard else None,
            scheduler_kwargs={} if options.dashboard else {"dashboard": False},
            silence_logs=logging.ERROR,
        )
    try:
        client = Client(cluster, set_as_default=True)
    except BaseException:
        cluster.close()
        raise
    # an in-process (threads) LocalCluster registers a dashboard service even when asked
    # not to; remember what the spec asked for, so no link is announced
    client.pqb_dashboard = options.dashboard
    return client, cluster


#: Field-scene pairs from which ``processes: auto`` starts worker processes.
AUTO_PROCESSES_PAIRS = 1_000_000


def choose_processes(options: ClusterOptions, n_fields: int | None,
                     n_scenes: int | None) -> ClusterOptions:
    """Resolve ``processes="auto"``: threads of this process for jobs under
    :data:`AUTO_PROCESSES_PAIRS` field-scene pairs (or of unknown size), else one
    single-thread worker process per thread asked for.

    Threads start at once and share one cache of field pixels; worker processes start in
    ~1.5 s (while the job is prepared) but share no GIL, and each holds only its strips
    of fields. Measured by hand on 2 cores, 12 scenes: 20,000 and 50,000 fields, threads 0.5-0.6 s
    sooner end to end; 100,000 fields (1.2 M pairs), the same wall time, execution
    3.6-3.8 s instead of 4.2-4.4 s, each worker under 0.5 GB where the threaded process
    peaks at 1.1-1.2 GB.

    >>> o = ClusterOptions(n_workers=1, threads_per_worker=2, processes="auto")
    >>> big = choose_processes(o, 100_000, 12)
    >>> big.processes, big.n_workers, big.threads_per_worker
    (True, 2, 1)
    >>> choose_processes(o, 20_000, 12).processes, choose_processes(o, None, 12).processes
    (False, False)
    """
    if options.processes != "auto":
        return options
    threads = options.n_workers * options.threads
    pairs = (n_fields or 0) * (n_scenes or 0)
    if threads >= 2 and pairs >= AUTO_PROCESSES_PAIRS:
        return dataclasses.replace(options, processes=True, n_workers=threads,
                                   threads_per_worker=1)
    return dataclasses.replace(options, processes=False)


def _start_method(options: ClusterOptions) -> dict[str, str]:
    """Worker processes forked from a server that has imported Dask, numpy and pandas
    once (Dask's ``forkserver`` method), unless Dask is configured otherwise than its
    default ``spawn``.

    Spawned workers each import everything again while the client reads the fields
    and plans on the same cores. Measured by hand on 2 cores, 100,000 fields x 12 scenes, two
    worker processes, three runs each: execution 3.81-4.19 s spawned, 3.58-3.64 s
    forked from the server (the units themselves took 7.4-8.0 s of worker time
    against 7.0-7.1 s); the whole run 9.65-9.98 s against 8.88-9.36 s. Nothing that
    starts threads at import (Icechunk's runtime, Arrow's pools) is imported before the
    fork: Dask's preload is its own dependencies.
    """
    import dask

    key = "distributed.worker.multiprocessing-method"
    if not options.processes or dask.config.get(key, "spawn") != "spawn":
        return {}
    return {key: "forkserver"}


def _disconnect(client: Any, cluster: Any) -> None:
    try:
        client.close()
    finally:
        if cluster is not None:
            cluster.close()


@contextlib.contextmanager
def open_client(options: ClusterOptions) -> Iterator[Any]:
    """A connected ``distributed.Client`` (closing the LocalCluster it started, if any)."""
    client, cluster = _connect(options)
    try:
        yield client
    finally:
        _disconnect(client, cluster)


class ClientStarter:
    """Connect to (or start) the cluster in a background thread, then warm the workers.

    The client goes on reading the catalog, loading fields and planning meanwhile; the
    workers import the task modules at the same time (instead of when the first unit
    arrives). :meth:`client` waits for it; :meth:`close` shuts down what was started.

    With ``processes="auto"`` the thread first sizes the job: ``count_fields`` (run on
    it, e.g. the feature count in the fields file's header) and the number of scenes,
    which the caller reports with :meth:`scenes_found` once the catalog is searched;
    :attr:`options` then holds the cluster's resolved shape.
    """

    def __init__(self, options: ClusterOptions, *,
                 count_fields: Callable[[], int | None] | None = None) -> None:
        self._options = options
        self.options = options  # resolved (processes True/False) once started
        self._count_fields = count_fields
        self._n_scenes: int | None = None
        self._sized = threading.Event()
        self._client: Any = None
        self._cluster: Any = None
        self._error: BaseException | None = None
        self._closing: threading.Thread | None = None
        self._thread = threading.Thread(target=self._start, name="pqb-cluster-start", daemon=True)
        self._t0 = time.perf_counter()
        self.start_s = 0.0
        self.ready_at: float | None = None  # wall clock once connected and warmed
        self._thread.start()

    def _start(self) -> None:
        from .tasks import warm_worker

        try:
            options = self._options
            if options.processes == "auto" and options.local:  # size a LocalCluster first
                n_fields = _quietly(self._count_fields)
                self._sized.wait(timeout=60)  # the catalog search: well under a second
                options = choose_processes(options, n_fields, self._n_scenes)
                self.options = options
                if options.processes:
                    logger.info("starting %d single-thread worker processes (processes: auto, "
                                "%s fields x %s scenes)", options.n_workers, n_fields,
                                self._n_scenes)
            self._client, self._cluster = _connect(options)
            self.start_s = time.perf_counter() - self._t0
            self._client.run(warm_worker)
            self.ready_at = time.time()
        except BaseException as exc:  # re-raised on the caller's thread by client()
            self._error = exc

    def scenes_found(self, n_scenes: int) -> None:
        """The job's scene count (sizes a ``processes="auto"`` cluster)."""
        self._n_scenes = n_scenes
        self._sized.set()

    def _join_start(self) -> None:
        """Wait for the start (sizes not reported by now: decided without them)."""
        self._sized.set()
        self._thread.join()

    def _take(self) -> tuple[Any, Any] | None:
        """The client and cluster to shut down, once (``None``: nothing or done)."""
        if self._client is None:
            return None
        taken, self._client, self._cluster = (self._client, self._cluster), None, None
        return taken

    def client(self) -> Any:
        """The connected ``distributed.Client`` (raises what starting it raised)."""
        self._join_start()
        if self._error is not None:
            raise self._error
        return self._client

    def close(self) -> None:
        """Shut down what was started (waits for a :meth:`close_soon` under way)."""
        self._join_start()
        if self._closing is not None:
            self._closing.join()
            self._closing = None
        taken = self._take()
        if taken is not None:
            _disconnect(*taken)

    def close_soon(self) -> None:
        """Start shutting down in the background (:meth:`close` waits for the end).

        Stopping worker processes takes ~0.35 s of waiting on them; the client writes
        its manifest and report meanwhile."""
        self._join_start()
        taken = self._take()
        if taken is None:
            return
        client, cluster = taken

        def stop() -> None:
            try:
                _disconnect(client, cluster)
            except Exception:  # the run's outputs are written: a failed shutdown is logged
                logger.warning("could not shut the cluster down cleanly", exc_info=True)

        self._closing = threading.Thread(target=stop, name="pqb-cluster-stop", daemon=True)
        self._closing.start()


def _quietly(count: Callable[[], int | None] | None) -> int | None:
    """``count()``, or ``None`` if there is none or it fails (the job's own reading of the
    file reports the problem)."""
    if count is None:
        return None
    try:
        return count()
    except Exception:
        return None


def _unit_failed(summary: ExecutionSummary, unit: WorkUnit, exc: BaseException,
                 ctx: JobContext) -> None:
    """Apply the failure policy to a unit that raised (after its retries)."""
    if ctx.on_error == "fail":
        raise TaskError(f"unit {unit.unit_id} failed: {exc}", unit_id=unit.unit_id,
                        scene_ids=[s.scene_id for s in unit.scenes],
                        field_ids=unit.fields.ids.slice(0, 20).to_pylist()) from exc
    err = f"{type(exc).__name__}: {exc}"
    summary.units_failed += 1
    summary.failures.extend(
        {"unit_id": unit.unit_id, "scene_id": s.scene_id, "field_id": fid, "error": err}
        for s in unit.scenes for fid in unit.fields.field_ids())


def _consume(summary: ExecutionSummary, unit: WorkUnit, result: Callable[[], UnitResult],
             ctx: JobContext, on_result: Callable[[UnitResult], None]) -> None:
    """Take one unit's result (or its error, through the failure policy)."""
    try:
        res = result()
    except TaskError:
        raise
    except Exception as exc:
        _unit_failed(summary, unit, exc, ctx)
    else:
        _record(summary, res, on_result)


def _record(summary: ExecutionSummary, res: UnitResult, on_result: Callable[[UnitResult], None]) -> None:
    summary.units_done += 1
    summary.rows += res.table.num_rows
    summary.chunks_read += res.chunks_read
    summary.failures.extend(res.failures)
    summary.warnings.extend(res.warnings)
    summary.unit_s_total += res.duration_s
    summary.unit_s_max = max(summary.unit_s_max, res.duration_s)
    for phase, (wall, cpu) in res.phases.items():
        got = summary.phases.setdefault(phase, [0.0, 0.0])
        got[0] += wall
        got[1] += cpu
    if res.started_at and (summary.first_unit_at is None or res.started_at < summary.first_unit_at):
        summary.first_unit_at = res.started_at
    if res.started_at:
        w = summary.per_worker.setdefault(res.worker or "?", {
            "units": 0, "busy_s": 0.0, "cpu_s": 0.0, "first_start": res.started_at, "last_end": 0.0})
        w["units"] += 1
        w["busy_s"] += res.duration_s
        w["cpu_s"] += res.cpu_s
        w["first_start"] = min(w["first_start"], res.started_at)
        w["last_end"] = max(w["last_end"], res.started_at + res.duration_s)
    on_result(res)


def execute(
    plan: Plan,
    ctx: JobContext,
    *,
    on_result: Callable[[UnitResult], None],
    cluster: ClusterOptions | str | Any = "sync",
    progress: ProgressFn | None = None,
    retries: int = 1,
    on_start: Callable[[ExecutionSummary], None] | None = None,
) -> ExecutionSummary:
    """Run every unit of ``plan``.

    Parameters
    ----------
    plan, ctx
        From the planner and the job spec.
    on_result
        Called on the client with each :class:`UnitResult`, as units complete.
    cluster
        ``"sync"`` (in-process), :class:`ClusterOptions`, or an existing ``Client``.
    progress
        ``progress("units", done, total)``.
    retries
        Automatic retries of a failing unit (transient storage errors, lost workers).
    on_start
        Called once the cluster is connected (the summary has the scheduler address and
        dashboard link), before any unit runs.

    Raises
    ------
    TaskError
        With ``on_error: fail``, for the first unit that fails (ids attached).
    """
    t0 = time.perf_counter()
    summary = ExecutionSummary(units_total=len(plan.units))
    units = list(plan.units)
    if progress:
        progress("units", 0, len(units))
    if cluster == "sync":
        if on_start:
            on_start(summary)
        for unit in units:
            _consume(summary, unit, lambda u=unit: run_unit(u, ctx), ctx, on_result)
            if progress:
                progress("units", summary.units_done + summary.units_failed, len(units))
        summary.wall_s = time.perf_counter() - t0
        return summary

    if isinstance(cluster, ClusterOptions):
        with open_client(cluster) as client:
            return _execute_on(client, units, ctx, summary, on_result, progress, retries, t0,
                               on_start)
    return _execute_on(cluster, units, ctx, summary, on_result, progress, retries, t0, on_start)


def _execute_on(client: Any, units: list[WorkUnit], ctx: JobContext, summary: ExecutionSummary,
                on_result: Callable[[UnitResult], None], progress: ProgressFn | None,
                retries: int, t0: float,
                on_start: Callable[[ExecutionSummary], None] | None) -> ExecutionSummary:
    import dask
    from distributed import as_completed

    info = client.scheduler_info(n_workers=-1)
    has_dashboard = ("dashboard" in info.get("services", {})
                     and getattr(client, "pqb_dashboard", True))
    summary.dashboard_link = getattr(client, "dashboard_link", None) if has_dashboard else None
    summary.scheduler = client.scheduler.address
    summary.n_workers = len(info.get("workers", {}))
    logger.info("submitting units", extra={"units": len(units), "scheduler": summary.scheduler,
                                           "dashboard": summary.dashboard_link})
    if on_start:
        on_start(summary)
    # the context (~1 KB) travels inside each task rather than scattered: scattered data
    # cannot be recomputed, so a worker dying while holding the only replica would fail
    # every unit with "already forgotten"; in the task it survives any worker
    # (so does the unit's own set of fields, ~10 MB for 50,000 fields: above Dask's
    # large-graph warning, whose advice, scattering, is what the lines above rule out)
    by_key: dict[str, WorkUnit] = {}
    futures = []
    prefer = strip_affinity(units, sorted(info.get("workers", {})))
    with dask.config.set({"distributed.admin.large-graph-warning-threshold": "1GB"}):
        for unit in units:
            key = f"pqb-unit-{ctx.job_hash}-{unit.unit_id}"
            by_key[key] = unit
            where = prefer.get(unit.unit_id)
            futures.append(client.submit(run_unit, unit, ctx, key=key, retries=retries,
                                         pure=False, workers=where,
                                         allow_other_workers=where is not None))
    done = 0
    try:
        for fut in as_completed(futures):
            _consume(summary, by_key[fut.key], fut.result, ctx, on_result)
            fut.release()
            done += 1
            if progress:
                progress("units", done, len(units))
    except BaseException:
        client.cancel(futures)
        raise
    summary.wall_s = time.perf_counter() - t0
    return summary


def strip_affinity(units: Sequence[WorkUnit], workers: Sequence[str]) -> dict[str, list[str]]:
    """A preferred worker for each unit: the units of one set of fields (a grid's strip:
    the same ``fields_key``) on one worker, which then works out their pixels once
    instead of every worker that gets one of them doing it again. Sets go largest first
    to the least loaded worker (by field-scene pairs). Empty when there is one worker or
    fewer sets of fields than workers (pinning would leave workers idle). The
    preference is loose: Dask still moves units to other workers when it must.

    Examples
    --------
    >>> from types import SimpleNamespace as U
    >>> us = [U(unit_id=f"{k}{i}", fields_key=k, n_pairs=n) for k, n in (("a", 6), ("b", 5), ("c", 2))
    ...       for i in range(2)]
    >>> strip_affinity(us, ["w1", "w2"])
    {'a0': ['w1'], 'a1': ['w1'], 'b0': ['w2'], 'b1': ['w2'], 'c0': ['w2'], 'c1': ['w2']}
    >>> strip_affinity(us, ["w1"])
    {}
    """
    sets: dict[str, list[Any]] = {}
    for u in units:
        sets.setdefault(u.fields_key or u.unit_id, []).append(u)
    if len(workers) < 2 or len(sets) < len(workers):
        return {}
    load = dict.fromkeys(workers, 0)
    out: dict[str, list[str]] = {}
    for members in sorted(sets.values(), key=lambda m: -sum(u.n_pairs for u in m)):
        w = min(workers, key=lambda w: (load[w], w))
        load[w] += sum(u.n_pairs for u in members)
        out.update({u.unit_id: [w] for u in members})
    return dict(sorted(out.items()))


def execute_rollup(
    units: list[Any],
    rctx: Any,
    *,
    cluster: str | Any = "sync",
    progress: ProgressFn | None = None,
    retries: int = 1,
) -> Any:
    """Run rollup units and tree-reduce their partials; returns one ``RollupResult``.

    On a cluster, partial maps are merged pairwise on the workers (a binary tree of
    ``merge_rollup_results`` tasks), so the client only receives the final, small map
    and never any pixel.
    """
    from .tasks import RollupResult, merge_rollup_results
    from .tasks import run_rollup_unit_guarded as run_rollup_unit

    if not units:
        return RollupResult({}, {}, units=0)
    if progress:
        progress("rollup", 0, len(units))
    if cluster == "sync":
        out = None
        for i, unit in enumerate(units, 1):
            res = run_rollup_unit(unit, rctx)
            out = res if out is None else merge_rollup_results(out, res)
            if progress:
                progress("rollup", i, len(units))
        return out
    from distributed import as_completed

    client = cluster
    futures = [client.submit(run_rollup_unit, u, rctx, retries=retries, pure=False,
                             key=f"pqb-rollup-{rctx.job.job_hash}-{u.unit_id}") for u in units]
    level = list(futures)
    while len(level) > 1:
        nxt = [client.submit(merge_rollup_results, level[i], level[i + 1], pure=False)
               for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    done = 0
    try:
        for fut in as_completed(futures):
            if fut.status == "error" and rctx.job.on_error == "fail":
                fut.result()  # raises the unit's TaskError
            done += 1
            if progress:
                progress("rollup", done, len(units))
        return level[0].result()
    except BaseException:
        client.cancel(futures + level)
        raise


def execute_map(fn: Callable[..., Any], units: list[Any], *args: Any, cluster: str | Any = "sync",
                progress: ProgressFn | None = None, stage: str = "units", retries: int = 1,
                key_prefix: str = "pqb") -> list[Any]:
    """Run ``fn(unit, *args)`` for every unit (in-process or on the client's cluster) and
    return the results in unit order (shared arguments travel inside each task)."""
    if progress:
        progress(stage, 0, len(units))
    if cluster == "sync":
        out = []
        for i, unit in enumerate(units, 1):
            out.append(fn(unit, *args))
            if progress:
                progress(stage, i, len(units))
        return out
    from distributed import as_completed

    client = cluster
    shared = list(args)  # small (contexts, sinks): inside each task, see _execute_on
    futures = [client.submit(fn, u, *shared, retries=retries, pure=False,
                             key=f"{key_prefix}-{getattr(u, 'unit_id', i)}")
               for i, u in enumerate(units)]
    try:
        for done, _ in enumerate(as_completed(futures), 1):
            if progress:
                progress(stage, done, len(units))
        return client.gather(futures)
    except BaseException:
        client.cancel(futures)
        raise
