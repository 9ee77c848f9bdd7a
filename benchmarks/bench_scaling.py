"""Scaling of the medium per-field job over 1, 2, 4 and 8 workers of a separate Dask cluster.

What it measures (issue "scaling run": speedup, scheduler time per task, graph size, and
what 1,000,000 fields x 50 scenes on 100 nodes would need):

* **data**: the seeded sample of ``bench_field_stats.py`` (same generator, same
  ``--workdir`` reuse through its marker file), by default the *medium job*: 20,000 fields
  x 12 scenes of 5490 x 5490 px (uint16 DEFLATE + predictor, 512 px tiles). The job
  (``DIR/runs/scaling.yaml``): ``bands: []``, ``indices: {ndvi: builtin}``, stats mean,
  std, min, max, median, p25, p75, count, ``pixels: centre``, ``masks: {nodata: true,
  cloud: null}`` (red and nir are read), parquet. Before timing, the red/nir COGs and the
  repository are read once (warm page cache for every configuration);
* **cluster**: per configuration a separately started ``dask scheduler`` + N ``dask
  worker`` processes (``pixelquery_batch.testing.cluster.separate_cluster``, 1 thread
  each, ``--memory-limit``), started and stopped around that configuration's runs:
  1 x 1 and 2 x 1 (the machine's 2 cores), then 4 x 1 and 8 x 1. The last two
  *oversubscribe* a 2-core machine: they cannot be faster, and what they add over 2 x 1
  is scheduler, communication and contention overhead (that is their purpose here);
* **runs**: ``run_job(spec, cluster=address)`` in this process (the client): one
  untimed warm-up run per configuration (every worker imports the engine's modules and
  opens the repository), then ``--repeats`` timed runs, medians reported. Before each
  timed run the workers' cached field pixels are dropped
  (``pixelquery_batch.gather.clear_pixel_cache`` on every worker; ``--keep-pixel-cache``
  keeps them), so each run computes them like a fresh job does (once per worker and
  block of fields). From each run's manifest: ``execution.wall_s`` (execution phase:
  scatter, submit, every unit, results consumed and written by the client),
  ``plan.tasks``, ``plan.field_scene_pairs``, ``execution.chunks_read``,
  ``execution.unit_s_total`` (sum of the units' durations measured on the workers);
  around each run: the ``run_job`` wall, the CPU seconds (user + system, psutil) of each
  worker process, of the scheduler process and of this client process;
* **overhead per task**, estimated from the job: ``(execution wall x min(workers x
  threads, cores) - unit_s_total) / tasks``, clamped at 0: the core-seconds of the
  execution phase not spent inside a unit, per task. It includes scheduling,
  (de)serialisation, the client's consumption of results (parquet parts are written on the
  client inside the execution phase) *and* idle cores at the tail (6 tasks on 4 or 8
  workers leave workers idle): an upper bound on the scheduler's share;
* **pure scheduler overhead**: on every cluster (the 2-worker figure is the one used
  below), ``client.map`` of a trivial function over ``--noop-tasks`` (2,000) inputs with
  ``pure=False`` and ``client.gather``: ms per task (submit to all results back), and the
  scheduler process's CPU per task; after an untimed batch of 100;
* **graph size**: ``prepare_job`` + ``plan_prepared(job, workers=4)`` (what ``run_job``
  plans for when given a scheduler address: it does not ask the scheduler how many
  workers it has) -> tasks, and ``len(pickle.dumps(...))`` of the first work unit and of
  the shared ``JobContext`` (scattered once per job, broadcast); the planner's task count
  for other worker hints is printed too;
* **memory**: each worker process's kernel RSS high-water mark (``VmHWM``, read through
  ``client.run`` at the end of the configuration: it covers the warm-up and the timed
  runs), and the scheduler's;
* **extrapolation** (printed at the end as a markdown table, derived only from the
  figures measured here): 1,000,000 fields x 50 scenes on 100 nodes of 2 cores, and of
  16 cores assuming the measured per-core throughput holds (an assumption: memory
  bandwidth, I/O and the network are not measured at 16 cores).

Usage (from the repository root)::

    python benchmarks/bench_scaling.py                               # medium job, /work/bench_scaling
    python benchmarks/bench_scaling.py --size 1024 --scenes 4 --fields 1000 \\
        --repeats 1 --configs 1x1,2x1 --workdir /tmp/bench_scaling_small     # smoke (~1 min)
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import resource
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import (  # sibling module of this script
    GB,
    MB,
    _worker_peak_rss,
    cogs_by_scene,
    data_files,
    ndvi_job,
    resident_fraction,
    say,
    say_context,
    setup_data,
    warm_page_cache,
    write_result,
)

STATS = ("mean", "std", "min", "max", "median", "p25", "p75", "count")
DEFAULT_CONFIGS = "1x1,2x1,4x1,8x1"   # workers x threads per worker
RUN_JOB_WORKER_HINT = 4                # run_job's workers_hint for a scheduler address
PLAN_HINTS = (1, 2, 4, 8, 200)         # planner worker hints shown for comparison
TARGET = {"fields": 1_000_000, "scenes": 50, "nodes": 100, "cores": 2, "cores_big": 16}
HOUR = 3600.0
MAX_UNIT_S = 30.0                      # planner.plan_job's default max_unit_s


# --------------------------------------------------------------------------- setup


def write_spec(path: Path, *, repo: str, fields: str, out_dir: Path) -> Path:
    """The medium job (as in ``bench_field_stats.py``); no cluster section: the address is
    given to ``run_job``."""
    import yaml

    spec = ndvi_job(path.stem, repo=repo, fields=fields, stats=STATS,
                    outputs={"dir": str(out_dir), "stats": {"format": "parquet"}})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def graph_size(spec: Path) -> dict[str, Any]:
    """Tasks and pickled sizes of the plan ``run_job`` makes for a scheduler address, the
    planner's task count for other worker hints, and the chunks each field's window
    touches on its own (the no-reuse bound on range requests)."""
    from pixelquery_batch.pipeline import plan_prepared, prepare_job

    t0 = time.perf_counter()
    job = prepare_job(spec)
    prepare_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    plan = plan_prepared(job, workers=RUN_JOB_WORKER_HINT)
    plan_s = time.perf_counter() - t0
    unit = plan.units[0]
    ctx = job.context()
    t0 = time.perf_counter()
    unit_bytes = [len(pickle.dumps(u, protocol=5)) for u in plan.units]
    pickle_s = time.perf_counter() - t0
    ctx_bytes = len(pickle.dumps(ctx, protocol=5))
    tasks_by_hint = {}
    for hint in PLAN_HINTS:
        tasks_by_hint[hint] = (len(plan.units) if hint == RUN_JOB_WORKER_HINT
                               else len(plan_prepared(job, workers=hint).units))
    # chunks per band each field's (clipped) window touches on its own: the request count
    # if no two fields shared a chunk (sparse fields)
    seen: set[str] = set()
    per_field: list[int] = []
    for u in plan.units:
        if u.fields_key in seen:
            continue
        seen.add(u.fields_key)
        cy, cx = u.scenes[0].bands[0][1].chunks_yx
        for f in u.fields:
            r0, c0, h, w = f.window
            r0, c0 = max(r0, 0), max(c0, 0)
            r1, c1 = min(f.window[0] + h, u.shape_yx[0]), min(f.window[1] + w, u.shape_yx[1])
            if r1 > r0 and c1 > c0:
                per_field.append(((r1 - 1) // cy - r0 // cy + 1) * ((c1 - 1) // cx - c0 // cx + 1))
    # the planner's cost model for one scene of unit 0's block of fields (planner.plan_job):
    # it sizes scene batches so that a unit stays under max_unit_s (30 s)
    from pixelquery_batch import planner

    pixels = sum(f.window[2] * f.window[3] for f in unit.fields)
    per_scene_cost = (unit.chunks * planner.COST_CHUNK_S + pixels * planner.COST_PIXEL_S
                      + len(unit.fields) * len(job.variables) * planner.COST_FIELD_VAR_S)
    return {
        "prepare_s": prepare_s, "plan_s": plan_s, "pickle_units_s": pickle_s,
        "planner_cost_per_scene_s": per_scene_cost, "n_variables": len(job.variables),
        "tasks": len(plan.units), "pairs": plan.n_pairs, "fields": plan.fields_matched,
        "fields_per_task": [len(u.fields) for u in plan.units],
        "scenes_per_task": [len(u.scenes) for u in plan.units],
        "unit0_bytes": unit_bytes[0], "units_bytes_total": sum(unit_bytes),
        "unit0_bytes_per_field": unit_bytes[0] / max(1, len(unit.fields)),
        "context_bytes": ctx_bytes, "tasks_by_worker_hint": tasks_by_hint,
        "bands_read": list(plan.variables_bands),
        "chunks_per_field_window_mean": statistics.fmean(per_field) if per_field else 0.0,
        "fields_with_pixels_window": len(per_field),
    }


# --------------------------------------------------------------------------- one configuration


@dataclass
class Config:
    workers: int
    threads: int
    runs: list[dict[str, Any]] = field(default_factory=list)
    noop: list[dict[str, Any]] = field(default_factory=list)
    warmup: dict[str, Any] = field(default_factory=dict)
    peak_rss_workers: list[int] = field(default_factory=list)
    peak_rss_scheduler: int = 0
    start_s: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.workers} x {self.threads}"

    @property
    def slots(self) -> int:
        return self.workers * self.threads


def _noop(i: int) -> int:
    return i


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds of each process (0 for one that is gone)."""
    import psutil

    out = {}
    for name, pid in pids.items():
        try:
            t = psutil.Process(pid).cpu_times()
            out[name] = t.user + t.system
        except psutil.Error:
            out[name] = 0.0
    return out


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def time_noop(client: Any, n: int, sched_pid: int) -> dict[str, float]:
    """Submit ``n`` trivial tasks (``pure=False``) and gather them: wall and scheduler CPU."""
    cpu0 = _cpu({"s": sched_pid})["s"]
    t0 = time.perf_counter()
    futures = client.map(_noop, range(n), pure=False)
    t1 = time.perf_counter()
    results = client.gather(futures)
    t2 = time.perf_counter()
    cpu = _cpu({"s": sched_pid})["s"] - cpu0
    assert results == list(range(n))
    del futures
    return {"tasks": n, "submit_s": t1 - t0, "total_s": t2 - t0,
            "ms_per_task": (t2 - t0) / n * 1e3, "scheduler_cpu_ms_per_task": cpu / n * 1e3}


def run_once(spec: Path, address: str, pids: dict[str, int]) -> dict[str, Any]:
    """One ``run_job`` against ``address``, with the CPU of every process around it."""
    from pixelquery_batch import run_job

    cpu0, self0 = _cpu(pids), _self_cpu()
    t0 = time.perf_counter()
    result = run_job(spec, cluster=address)
    wall = time.perf_counter() - t0
    cpu1, self1 = _cpu(pids), _self_cpu()
    m = result.manifest
    ex, plan = m["execution"], m["plan"]
    cpu = {k: cpu1[k] - cpu0[k] for k in pids}
    return {
        "run_job_wall_s": wall, "exec_wall_s": float(ex["wall_s"]),
        "unit_s_total": float(ex["unit_s_total"]), "unit_s_max": float(ex["unit_s_max"]),
        "tasks": int(plan["tasks"]), "pairs": int(plan["field_scene_pairs"]),
        "chunks_read": int(ex["chunks_read"]), "rows": int(ex["rows"]),
        "workers_seen": int(ex["workers"]), "failures": len(m["failures"]),
        "timings": m.get("timings", {}),
        "cpu_workers_s": sum(v for k, v in cpu.items() if k != "scheduler"),
        "cpu_scheduler_s": cpu["scheduler"], "cpu_client_s": self1 - self0,
        "stats_path": result.outputs.get("stats"),
    }


def run_config(cfg: Config, *, spec: Path, args: argparse.Namespace, logs: Path) -> None:
    from distributed import Client

    from pixelquery_batch.gather import clear_pixel_cache
    from pixelquery_batch.testing.cluster import separate_cluster

    say("")
    say(f"## {cfg.label} (workers x threads){'  [oversubscribed: more threads than cores]' if cfg.slots > args.cores else ''}")
    t0 = time.perf_counter()
    # the workers import _bench_common (for client.run) from this directory
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH", "")])}
    with separate_cluster(workers=cfg.workers, threads=cfg.threads, env=env,
                          memory_limit=args.memory_limit, timeout_s=180,
                          log_path=logs / f"cluster-{cfg.workers}x{cfg.threads}.log") as cl:
        cfg.start_s = time.perf_counter() - t0
        client = Client(cl.address, set_as_default=False, timeout="30s")
        try:
            pids = {addr: int(pid) for addr, pid in client.run(os.getpid).items()}
            sched_pid = int(client.run_on_scheduler(os.getpid))
            pids["scheduler"] = sched_pid
            say(f"  cluster up in {cfg.start_s:.1f} s: scheduler pid {sched_pid}, worker pids "
                f"{sorted(v for k, v in pids.items() if k != 'scheduler')}")
            cfg.warmup = run_once(spec, cl.address, pids)
            say(f"  warm-up (untimed): run_job {cfg.warmup['run_job_wall_s']:.2f} s, execution "
                f"{cfg.warmup['exec_wall_s']:.2f} s")
            for rep in range(args.repeats):
                if not args.keep_pixel_cache:
                    client.run(clear_pixel_cache)
                r = run_once(spec, cl.address, pids)
                cfg.runs.append(r)
                say(f"  [{rep + 1}] run_job {r['run_job_wall_s']:.2f} s, execution "
                    f"{r['exec_wall_s']:.2f} s, unit-s {r['unit_s_total']:.2f} (max "
                    f"{r['unit_s_max']:.2f}), {r['tasks']} tasks, {r['pairs']:,} pairs, "
                    f"{r['chunks_read']:,} chunks, {r['failures']} failures; CPU workers "
                    f"{r['cpu_workers_s']:.2f} s, scheduler {r['cpu_scheduler_s']:.2f} s, "
                    f"client {r['cpu_client_s']:.2f} s")
                if r["failures"]:
                    say(f"  WARNING: {r['failures']} failures in this run (see its manifest)")
            time_noop(client, 100, sched_pid)  # untimed
            for rep in range(args.repeats):
                n = time_noop(client, args.noop_tasks, sched_pid)
                cfg.noop.append(n)
                say(f"  [{rep + 1}] no-op: {n['tasks']} tasks in {n['total_s']:.2f} s (submit "
                    f"{n['submit_s']:.2f} s) = {n['ms_per_task']:.3f} ms per task; scheduler CPU "
                    f"{n['scheduler_cpu_ms_per_task']:.3f} ms per task")
            hwm = client.run(_worker_peak_rss)
            cfg.peak_rss_workers = [int(v) for _, v in sorted(hwm.items())]
            cfg.peak_rss_scheduler = int(client.run_on_scheduler(_worker_peak_rss))
            say(f"  peak RSS (VmHWM) per worker: "
                f"{', '.join(f'{v / MB:.0f}' for v in cfg.peak_rss_workers)} MB; scheduler "
                f"{cfg.peak_rss_scheduler / MB:.0f} MB")
        finally:
            client.close()


# --------------------------------------------------------------------------- summaries


def med(rows: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(float(r[key]) for r in rows))


def summarise(cfgs: list[Config], cores: int) -> list[dict[str, Any]]:
    base = next((c for c in cfgs if c.slots == 1), cfgs[0])
    b_exec, b_wall = med(base.runs, "exec_wall_s"), med(base.runs, "run_job_wall_s")
    out = []
    for c in cfgs:
        ex, wall = med(c.runs, "exec_wall_s"), med(c.runs, "run_job_wall_s")
        unit_s = med(c.runs, "unit_s_total")
        tasks, pairs = c.runs[-1]["tasks"], c.runs[-1]["pairs"]
        busy = min(c.slots, cores)
        overhead = max(0.0, (ex * busy - unit_s) / tasks) if tasks else 0.0
        out.append({
            "config": c.label, "workers": c.workers, "threads": c.threads,
            "oversubscribed": c.slots > cores, "cluster_start_s": c.start_s,
            "exec_wall_s": ex, "run_job_wall_s": wall,
            "exec_speedup": b_exec / ex, "run_job_speedup": b_wall / wall,
            "exec_efficiency": b_exec / ex / busy,
            "tasks": tasks, "pairs": pairs, "pairs_per_task": pairs / tasks if tasks else 0.0,
            "chunks_read": c.runs[-1]["chunks_read"], "unit_s_total": unit_s,
            "unit_s_max": med(c.runs, "unit_s_max"),
            "overhead_per_task_s": overhead,
            "cpu_workers_s": med(c.runs, "cpu_workers_s"),
            "cpu_scheduler_s": med(c.runs, "cpu_scheduler_s"),
            "cpu_client_s": med(c.runs, "cpu_client_s"),
            "scheduler_cpu_per_task_ms": med(c.runs, "cpu_scheduler_s") / tasks * 1e3 if tasks else 0.0,
            "noop_ms_per_task": med(c.noop, "ms_per_task"),
            "noop_scheduler_cpu_ms_per_task": med(c.noop, "scheduler_cpu_ms_per_task"),
            "peak_rss_worker_max": max(c.peak_rss_workers, default=0),
            "peak_rss_workers": c.peak_rss_workers, "peak_rss_scheduler": c.peak_rss_scheduler,
            "failures": max(r["failures"] for r in c.runs),
            "timings_median": {k: statistics.median(r["timings"][k] for r in c.runs)
                               for k in c.runs[-1]["timings"]
                               if all(r["timings"].get(k) is not None for r in c.runs)},
        })
    return out


def print_summary(rows: list[dict[str, Any]], repeats: int, cores: int) -> None:
    say("")
    say("=" * 132)
    say(f"scaling (median of {repeats} timed runs per configuration after one warm-up; "
        f"speedups vs {rows[0]['config']})")
    say("-" * 132)
    say(f"{'workers x threads':<19}{'exec s':>8}{'run_job s':>10}{'speedup':>9}{'(run_job)':>10}"
        f"{'tasks':>7}{'pairs':>10}{'pairs/task':>11}{'chunks':>8}{'unit-s':>8}"
        f"{'ovh/task s':>11}{'sched CPU/task':>15}{'no-op/task':>11}{'peak RSS':>9}")
    say("-" * 132)
    for r in rows:
        tag = " *" if r["oversubscribed"] else ""
        say(f"{r['config'] + tag:<19}{r['exec_wall_s']:>8.2f}{r['run_job_wall_s']:>10.2f}"
            f"{r['exec_speedup']:>8.2f}x{r['run_job_speedup']:>9.2f}x{r['tasks']:>7}"
            f"{r['pairs']:>10,}{r['pairs_per_task']:>11,.0f}{r['chunks_read']:>8,}"
            f"{r['unit_s_total']:>8.2f}{r['overhead_per_task_s']:>11.3f}"
            f"{r['scheduler_cpu_per_task_ms']:>12.1f} ms{r['noop_ms_per_task']:>8.3f} ms"
            f"{r['peak_rss_worker_max'] / MB:>6.0f} MB")
    say("-" * 132)
    say(f"* oversubscribed: more worker threads than the {cores} cores; slower by construction, "
        "what they add is scheduler/communication/contention overhead")
    say(f"ovh/task = (execution wall x min(workers x threads, cores={cores}) - unit_s_total) / "
        "tasks, clamped at 0: core-seconds of the execution phase outside any unit, per task "
        "(scheduling, transfers, the client writing results, and idle cores at the tail)")
    say("with oversubscription a unit's duration includes time spent waiting for a core, so "
        "unit_s_total exceeds the busy core-seconds and the estimate clamps at 0 there: read "
        "the scheduler CPU and no-op columns for those rows")
    say("sched CPU/task = scheduler process CPU during run_job / tasks (includes its "
        "heartbeats and the run's other calls); no-op/task = wall of client.map + gather of "
        "trivial tasks / tasks; peak RSS = max worker VmHWM over the configuration's runs")
    for r in rows:
        t = r["timings_median"]
        say(f"{r['config']}: CPU workers {r['cpu_workers_s']:.2f} s, scheduler "
            f"{r['cpu_scheduler_s']:.2f} s, client {r['cpu_client_s']:.2f} s; longest unit "
            f"{r['unit_s_max']:.2f} s; run_job phases (s from start): "
            + ", ".join(f"{k.removesuffix('_s')} {v:.2f}" for k, v in t.items())
            + f"; peak RSS workers [{', '.join(f'{v / MB:.0f}' for v in r['peak_rss_workers'])}]"
            f" MB, scheduler {r['peak_rss_scheduler'] / MB:.0f} MB; cluster start "
            f"{r['cluster_start_s']:.1f} s")


# --------------------------------------------------------------------------- extrapolation


def fmt_n(x: float) -> str:
    if x >= 1e9:
        return f"{x / 1e9:.2f} G"
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e4:
        return f"{x / 1e3:.0f} k"
    return f"{x:,.0f}"


def fmt_bytes(x: float) -> str:
    return f"{x / GB:.1f} GB" if x >= GB else f"{x / MB:.1f} MB"


def fmt_h(seconds: float) -> str:
    return f"{seconds / HOUR:.2f} h" if seconds >= 360 else f"{seconds / 60:.1f} min" \
        if seconds >= 60 else f"{seconds:.1f} s"


def extrapolate(rows: list[dict[str, Any]], graph: dict[str, Any], result_bytes_per_pair: float,
                cores: int) -> dict[str, Any]:
    """1,000,000 fields x 50 scenes on 100 nodes, from the measured figures only."""
    one = next(r for r in rows if r["workers"] * r["threads"] == 1)
    two = next((r for r in rows if r["workers"] * r["threads"] == 2 and r["threads"] == 1), None)
    two = two or one
    pairs = TARGET["fields"] * TARGET["scenes"]
    m_pairs = one["pairs"]
    ppt = two["pairs_per_task"]
    tasks = math.ceil(pairs / ppt)
    unit_s_pair = one["unit_s_total"] / m_pairs          # 1 worker: no contention
    cpu_pair = one["cpu_workers_s"] / m_pairs            # worker processes' CPU
    # client CPU: prepare + plan (until manifest timings.planned_s) scales with fields; the
    # rest (submit, consume results, write parquet parts, publish) with pairs
    client_plan_s = min(one["cpu_client_s"], one["timings_median"].get("planned_s", 0.0))
    client_plan_field = client_plan_s / graph["fields"]
    client_cpu_pair = (one["cpu_client_s"] - client_plan_s) / m_pairs
    eff = two["exec_efficiency"]                         # exec speedup at 2 workers / 2
    chunks_pair = one["chunks_read"] / m_pairs
    n_bands = len(graph["bands_read"])
    sparse_chunks_pair = graph["chunks_per_field_window_mean"] * n_bands
    unit_bytes_per_field = graph["unit0_bytes_per_field"]
    fields_per_task = statistics.fmean(graph["fields_per_task"])
    nodes = TARGET["nodes"]
    # what the planner itself would make: the target's fields on tiles at the measured
    # density (the measured sample is one tile), scene batches as in planner.plan_job
    fields_per_tile = graph["fields"]
    tiles = math.ceil(TARGET["fields"] / fields_per_tile)

    def planner_tasks(hint: int) -> int:
        per_grid = math.ceil(2 * hint / tiles)
        batches = max(per_grid, math.ceil(graph["planner_cost_per_scene_s"] * TARGET["scenes"]
                                          / MAX_UNIT_S))
        per_unit = max(1, math.ceil(TARGET["scenes"] / batches))
        return tiles * math.ceil(TARGET["scenes"] / per_unit)

    p4 = planner_tasks(RUN_JOB_WORKER_HINT)
    slots = nodes * TARGET["cores"]
    out = {
        "wall_s_2core_planner_hint4": (pairs / p4) * unit_s_pair * math.ceil(p4 / slots) / eff,
        "tiles_at_measured_density": tiles, "fields_per_tile": fields_per_tile,
        "planner_tasks": {h: planner_tasks(h) for h in (RUN_JOB_WORKER_HINT,
                                                        nodes * TARGET["cores"],
                                                        nodes * TARGET["cores_big"])},
        "pairs": pairs, "tasks": tasks, "pairs_per_task": ppt,
        "fields_per_task": fields_per_task,
        "unit_s_per_pair_us": unit_s_pair * 1e6, "cpu_per_pair_us": cpu_pair * 1e6,
        "client_cpu_per_pair_us": client_cpu_pair * 1e6, "efficiency_2": eff,
        "unit_s_total": unit_s_pair * pairs, "cpu_s_total": cpu_pair * pairs,
        "wall_s_2core": unit_s_pair * pairs / (nodes * TARGET["cores"] * eff),
        "wall_s_16core": unit_s_pair * pairs / (nodes * TARGET["cores_big"] * eff),
        "noop_ms_per_task": two["noop_ms_per_task"],
        "overhead_per_task_s": two["overhead_per_task_s"],
        "scheduler_s_noop": tasks * two["noop_ms_per_task"] / 1e3,
        "scheduler_s_job": tasks * two["overhead_per_task_s"],

        "graph_bytes": tasks * graph["unit0_bytes"],
        "result_bytes": result_bytes_per_pair * pairs,
        "client_cpu_s": client_cpu_pair * pairs + client_plan_field * TARGET["fields"],
        "client_plan_s_per_field_us": client_plan_field * 1e6,
        "scheduler_cpu_per_pair_us": two["cpu_scheduler_s"] / two["pairs"] * 1e6,
        "scheduler_cpu_s_pairs": two["cpu_scheduler_s"] / two["pairs"] * pairs,
        "rss_worker": two["peak_rss_worker_max"], "rss_scheduler": two["peak_rss_scheduler"],
        "requests_at_density": chunks_pair * pairs, "chunks_per_pair": chunks_pair,
        "requests_sparse": sparse_chunks_pair * pairs, "sparse_chunks_per_pair": sparse_chunks_pair,
        "unit_bytes_per_field": unit_bytes_per_field,
    }
    return out


def print_extrapolation(x: dict[str, Any], graph: dict[str, Any],
                        args: argparse.Namespace) -> list[str]:
    """The markdown table (returned too, for the JSON)."""
    F, S, N = TARGET["fields"], TARGET["scenes"], TARGET["nodes"]
    c2, c16 = TARGET["cores"], TARGET["cores_big"]
    measured = f"{args.fields:,} fields x {args.scenes} scenes of {args.size} px"
    lines = [
        f"| quantity ({F:,} fields x {S} scenes, {N} nodes) | how (measured on {measured}) | value |",
        "|---|---|---|",
        f"| field-scene pairs | fields x scenes | {x['pairs']:,.0f} |",
        f"| tasks | pairs / measured pairs per task ({x['pairs_per_task']:,.0f}; "
        f"{x['fields_per_task']:,.0f} fields x {x['pairs_per_task'] / x['fields_per_task']:.0f} "
        f"scenes per unit) | {x['tasks']:,} |",
        f"| tasks the planner would make | {x['tiles_at_measured_density']:,} tiles of "
        f"{x['fields_per_tile']:,} fields x scene batches (>= 2 x hint / tiles, <= "
        f"{MAX_UNIT_S:.0f} s per unit by its cost model); workers hint "
        + ", ".join(f"{h}" for h in x["planner_tasks"]) + " | "
        + " / ".join(f"{t:,}" for t in x["planner_tasks"].values()) + " |",
        f"| unit-seconds | {x['unit_s_per_pair_us']:.1f} µs per pair (1 worker, sum of unit "
        f"durations) x pairs | {x['unit_s_total'] / HOUR:,.1f} h |",
        f"| worker CPU-seconds | {x['cpu_per_pair_us']:.1f} µs CPU per pair (1 worker "
        f"process, user + system) x pairs | {x['cpu_s_total'] / HOUR:,.1f} h |",
        f"| wall, {N} nodes x {c2} cores | unit-seconds / ({N} x {c2} x parallel efficiency "
        f"at 2 workers {x['efficiency_2']:.2f}) | {fmt_h(x['wall_s_2core'])} |",
        f"| wall, {N} nodes x {c16} cores (assumption: per-core throughput as measured) | "
        f"unit-seconds / ({N} x {c16} x {x['efficiency_2']:.2f}) | {fmt_h(x['wall_s_16core'])} |",
        f"| wall, {N} nodes x {c2} cores, with the planner's {x['planner_tasks'][RUN_JOB_WORKER_HINT]:,} "
        f"tasks (hint {RUN_JOB_WORKER_HINT}) | pairs per task x unit-seconds per pair x rounds of "
        f"tasks over {N * c2} cores / {x['efficiency_2']:.2f} | "
        f"{fmt_h(x['wall_s_2core_planner_hint4'])} |",
        f"| scheduler CPU (graph in, results out: it relays both) | scheduler CPU during the "
        f"2-worker runs per pair ({x['scheduler_cpu_per_pair_us']:.1f} µs) x pairs | "
        f"{fmt_h(x['scheduler_cpu_s_pairs'])} |",
        f"| scheduler time (one scheduler, serial) | tasks x no-op round trip "
        f"{x['noop_ms_per_task']:.2f} ms per task (2 workers) | {fmt_h(x['scheduler_s_noop'])} |",
        f"| scheduler time, upper bound | tasks x job-derived overhead per task "
        f"({x['overhead_per_task_s']:.3f} s, 2 workers; includes idle tail and client writes) | "
        f"{fmt_h(x['scheduler_s_job'])} |",
        f"| graph sent through the scheduler | tasks x pickled unit "
        f"({graph['unit0_bytes'] / MB:.2f} MB: {x['unit_bytes_per_field']:.0f} B per field; "
        f"+ context {graph['context_bytes']:,} B once per worker) | {fmt_bytes(x['graph_bytes'])} |",
        f"| results gathered via the scheduler to the client | result Arrow bytes per pair "
        f"({x['result_bytes'] / x['pairs']:.0f} B) x pairs | {fmt_bytes(x['result_bytes'])} |",
        f"| client CPU (one process) | prepare + plan {x['client_plan_s_per_field_us']:.1f} µs "
        f"per field x fields + submit/consume/write {x['client_cpu_per_pair_us']:.1f} µs per "
        f"pair x pairs (1-worker runs) | {fmt_h(x['client_cpu_s'])} |",
        f"| serial floor on the wall | max(client CPU, scheduler CPU, scheduler time): one "
        f"client and one scheduler, whatever the node count | "
        f"{fmt_h(max(x['client_cpu_s'], x['scheduler_cpu_s_pairs'], x['scheduler_s_noop']))} |",
        f"| memory per worker (1 thread) | measured peak RSS, 2 workers (depends on fields "
        f"per unit, not on total fields) | {x['rss_worker'] / MB:,.0f} MB "
        f"({c16} workers per 16-core node: {c16 * x['rss_worker'] / GB:.1f} GB) |",
        f"| range requests at the measured field density | chunks read per pair "
        f"({x['chunks_per_pair']:.4f}) x pairs: one GET per chunk | "
        f"{fmt_n(x['requests_at_density'])} |",
        f"| range requests, sparse fields (no chunk shared) | {x['sparse_chunks_per_pair']:.2f} "
        f"chunks per pair (each field's own window, {len(graph['bands_read'])} bands) x pairs | "
        f"{fmt_n(x['requests_sparse'])} |",
    ]
    say("")
    say(f"## extrapolation: {F:,} fields x {S} scenes on {N} nodes (derived only from the "
        "figures above)")
    say("")
    for line in lines:
        say(line)
    say("")
    say("notes:")
    say(f"- tasks: the planner's units are (blocks of fields per grid) x (scene batches per "
        f"grid). A grid's fields form one block unless their windows exceed 12 M pixels; "
        f"scene batches never split a day, number at least ceil(2 x workers hint / grids) and "
        f"keep each unit's estimated cost under 30 s. run_job plans for {RUN_JOB_WORKER_HINT} "
        f"workers when given a scheduler address, whatever the cluster's size: here "
        f"{graph['tasks']} tasks; planner hints "
        + ", ".join(f"{h} -> {t}" for h, t in graph["tasks_by_worker_hint"].items())
        + f" tasks. The {x['tasks']:,} tasks of the first row assume the measured pairs per "
        "task; the next row is what the planner's rules give for the target.")
    say(f"- planner tasks: {x['tiles_at_measured_density']:,} tiles = {F:,} fields at the "
        f"measured {x['fields_per_tile']:,} fields per tile, one scene per day; the planner's "
        f"cost estimate for one scene of such a tile is {graph['planner_cost_per_scene_s']:.2f} s. "
        f"Hint {RUN_JOB_WORKER_HINT} is what run_job uses for a scheduler address; "
        f"{N * c2} and {N * c16} are the cores of {N} nodes.")
    say("- wall: unit-seconds per pair from the 1-worker run (no core contention) divided by "
        "all cores times the parallel efficiency measured at 2 workers (execution-phase "
        "speedup / 2). It assumes enough tasks to keep every core busy (see the planner's "
        "task count) and ignores cluster start; the serial floor (client, scheduler) is "
        "listed apart: the job cannot finish faster than it.")
    say("- 16-core nodes: an assumption that per-core throughput stays as measured on 2 "
        "cores; memory bandwidth and network per node are not measured here.")
    say("- scheduler: distributed's scheduler is one process and handles tasks serially; "
        "the no-op round trip is its per-task cost, the job-derived figure an upper bound. "
        "In the job its CPU follows bytes, not tasks: every unit carries its fields' WKB "
        "(pickled into each scene batch's unit) and every result table is gathered through "
        "the scheduler (the client does not gather directly from workers).")
    say("- memory: a unit holds all fields of its block and a batch of scenes; a worker's peak "
        "follows fields per unit (and the pixel cache of up to 4 field blocks), not the "
        "job's total fields.")
    say("- requests: the measured chunks per pair hold at the measured field density "
        f"({args.fields:,} fields per {args.size} x {args.size} px scene): denser fields share "
        "more chunks (fewer requests), sparser fields share fewer, up to the 'sparse' row "
        "(each field reads the chunks of its own window). One range GET per needed chunk, no "
        "header reads (measured elsewhere: tests/test_cluster_s3.py counts them); an upper "
        "bound at or above the measured density.")
    return lines


# --------------------------------------------------------------------------- main


def parse_configs(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        try:
            w, t = (int(v) for v in part.strip().lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"--configs: WxT,... got {text!r}") from None
        if w < 1 or t < 1:
            raise argparse.ArgumentTypeError(f"--configs: workers and threads >= 1: {part!r}")
        out.append((w, t))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", type=int, default=20000)
    ap.add_argument("--scenes", type=int, default=12)
    ap.add_argument("--size", type=int, default=5490, help="scene width/height in pixels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default="/work/bench_scaling",
                    help="sample + repository, reused by later runs with the same arguments")
    ap.add_argument("--configs", type=parse_configs, default=parse_configs(DEFAULT_CONFIGS),
                    help=f"workers x threads per configuration (default {DEFAULT_CONFIGS}); "
                    "the first with 1 slot is the speedup baseline")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per configuration")
    ap.add_argument("--noop-tasks", type=int, default=2000)
    ap.add_argument("--memory-limit", default="2GiB", help="per worker (dask worker flag)")
    ap.add_argument("--keep-pixel-cache", action="store_true",
                    help="do not drop the workers' cached field pixels before timed runs")
    ap.add_argument("--json-out", default=None,
                    help="every number as JSON (default <workdir>/bench_scaling.result.json)")
    args = ap.parse_args(argv)
    from pixelquery_batch.sample import max_fields_for_size

    if args.fields > max_fields_for_size(args.size):
        ap.error(f"--fields {args.fields} does not fit a {args.size} px scene")
    if args.repeats < 1 or args.noop_tasks < 1:
        ap.error("--repeats and --noop-tasks must be >= 1")
    if not any(w * t == 1 for w, t in args.configs):
        ap.error("--configs needs a 1x1 configuration (the speedup baseline)")
    args.cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ctx = say_context(f"# scaling of the per-field NDVI job: {args.fields:,} fields x {args.scenes} "
                      f"scenes x {args.size}^2 px on a separate cluster, configurations "
                      f"{', '.join(f'{w}x{t}' for w, t in args.configs)} (workers x threads), "
                      f"{args.repeats} timed runs each, seed {args.seed}")
    if args.size != 5490 or args.fields != 20000 or args.scenes != 12:
        say(f"# NOTE: not the medium job (20,000 fields x 12 scenes x 5490^2 px): "
            f"{args.fields:,} x {args.scenes} x {args.size}^2")
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    json_out = Path(args.json_out) if args.json_out else workdir / "bench_scaling.result.json"

    # ---------------------------------------------------------------- setup (untimed)
    info = setup_data(workdir, args)
    how = "reused (timings of the run that built it)" if info["reused"] else "this run"
    say(f"setup [{how}]: generate {info['generate_s']:.1f} s, ingest {info['ingest_s']:.1f} s; "
        f"{info['n_fields']:,} fields; workdir {workdir}")
    runs_dir = workdir / "runs"
    shutil.rmtree(runs_dir, ignore_errors=True)
    spec = write_spec(runs_dir / "scaling.yaml", repo=info["repo"], fields=info["fields_path"],
                      out_dir=runs_dir / "out")
    scenes = cogs_by_scene(info["cog_dir"])
    cogs = [Path(p[b]) for p in scenes.values() for b in ("red", "nir")]
    t0 = time.perf_counter()
    nbytes = warm_page_cache(cogs + data_files(Path(info["repo"])))
    res = resident_fraction(cogs)
    say(f"warm page cache (untimed): {nbytes / GB:.2f} GB (red/nir COGs of {len(scenes)} scenes "
        f"and the repository) in {time.perf_counter() - t0:.1f} s; resident "
        + ("unknown" if res is None else f"{res:.0%}"))

    graph = graph_size(spec)
    say(f"graph: prepare_job {graph['prepare_s']:.2f} s, plan_prepared(workers="
        f"{RUN_JOB_WORKER_HINT}) {graph['plan_s']:.2f} s -> {graph['tasks']} tasks, "
        f"{graph['pairs']:,} pairs; fields per task {sorted(set(graph['fields_per_task']))}, "
        f"scenes per task {sorted(set(graph['scenes_per_task']))}")
    say(f"graph: pickled unit 0 {graph['unit0_bytes']:,} B ({graph['unit0_bytes_per_field']:.0f} B "
        f"per field), all units {graph['units_bytes_total']:,} B (pickled in "
        f"{graph['pickle_units_s'] * 1e3:.0f} ms), JobContext {graph['context_bytes']:,} B; "
        f"planner tasks by workers hint: "
        + ", ".join(f"{h} -> {t}" for h, t in graph["tasks_by_worker_hint"].items()))
    say(f"graph: each field's own window touches {graph['chunks_per_field_window_mean']:.2f} "
        f"chunks per band on average ({graph['fields_with_pixels_window']:,} fields)")

    # ---------------------------------------------------------------- timed runs
    logs = workdir / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    cfgs = [Config(w, t) for w, t in args.configs]
    t_all = time.perf_counter()
    for cfg in cfgs:
        run_config(cfg, spec=spec, args=args, logs=logs)
    say(f"\nall configurations in {time.perf_counter() - t_all:.0f} s; cluster logs in {logs}")

    rows = summarise(cfgs, args.cores)
    print_summary(rows, args.repeats, args.cores)

    # result bytes per pair: the Arrow tables the units return (gathered via the scheduler)
    import pyarrow.parquet as pq

    stats_path = cfgs[0].runs[-1]["stats_path"]
    table = pq.read_table(stats_path)
    result_bytes_per_pair = table.nbytes / max(1, rows[0]["pairs"])
    say(f"results: {table.num_rows:,} rows, {table.nbytes / MB:.1f} MB in Arrow = "
        f"{result_bytes_per_pair:.0f} B per pair")

    x = extrapolate(rows, graph, result_bytes_per_pair, args.cores)
    table_md = print_extrapolation(x, graph, args)

    result = {"context": ctx, "args": {k: v for k, v in vars(args).items()},
              "setup": {k: info[k] for k in ("generate_s", "ingest_s", "reused", "n_fields")},
              "graph": graph, "configs": rows,
              "runs": {c.label: {"warmup": c.warmup, "timed": c.runs, "noop": c.noop}
                       for c in cfgs},
              "result_bytes_per_pair": result_bytes_per_pair,
              "extrapolation": x, "extrapolation_markdown": table_md}
    write_result(json_out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
