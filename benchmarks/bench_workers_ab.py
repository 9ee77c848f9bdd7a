"""1 -> 2 workers, execution phase: versions of the engine side by side, rounds interleaved.

The A/B behind the figures the README marks "by hand": ``pqb run`` of the per-field job that
``bench_field_stats.py`` writes (its ``--workdir``: the sample, the repository and each
density's ``bench-d<N>-w1.yaml`` / ``-w2.yaml`` specs), with one worker thread pinned to
core 0 and with two worker threads, for each variant in turn, round after round, so that
every variant meets the same host phases. Each run's execution phase (first task start to
last task end) is read from its ``manifest.json``.

    python benchmarks/bench_workers_ab.py --workdir /tmp/bfs [--fields 20000] [--rounds 6]
        [--variant NAME=CHECKOUT[,ENV=VALUE...]] ...

A variant is a checkout of the project (its directory goes first on ``PYTHONPATH``; e.g. a
``git worktree`` of another commit) with optional environment variables; without
``--variant`` the script measures the checkout it lives in. The medians of each variant,
their ranges and the ratio of the medians are printed, with every round's ratio: ratios
are read within one invocation only (the host moves them by several per cent between
phases).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_common import host_events, say, say_context, say_host_events

HERE = Path(__file__).resolve().parent.parent


def _variant(text: str) -> tuple[str, Path, dict[str, str]]:
    name, _, rest = text.partition("=")
    path, *pairs = rest.split(",")
    if not name or not path:
        raise SystemExit(f"--variant {text!r}: expected NAME=CHECKOUT[,ENV=VALUE...]")
    env = dict(p.split("=", 1) for p in pairs)
    return name, Path(path).resolve(), env


def _run(spec: Path, checkout: Path, env: dict[str, str], pin: bool) -> tuple[float, float]:
    """(execution phase s, process wall s) of one ``pqb run``; a fresh output directory."""
    out = spec.parent / f"ab_{spec.stem}_out"
    shutil.rmtree(out, ignore_errors=True)
    doc = yaml.safe_load(spec.read_text())
    doc["outputs"]["dir"] = str(out)  # its own outputs: every run computes every pair
    run_spec = spec.parent / f"ab_{spec.name}"
    run_spec.write_text(yaml.safe_dump(doc, sort_keys=False))
    full_env = {**os.environ, "PYTHONPATH": str(checkout), **env}
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pixelquery_batch.cli", "run", str(run_spec), "--json"],
        env=full_env, capture_output=True, text=True, check=False,
        preexec_fn=(lambda: os.sched_setaffinity(0, {0})) if pin else None)
    wall = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"pqb run {run_spec} failed (rc {done.returncode}):\n{done.stderr[-2000:]}")
    manifest = json.loads(Path(json.loads(done.stdout)["manifest"]).read_text())
    return float(manifest["execution"]["wall_s"]), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True, help="bench_field_stats.py's --workdir")
    ap.add_argument("--fields", type=int, default=20000, help="density (its specs must exist)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--variant", action="append", type=_variant, default=[],
                    help="NAME=CHECKOUT[,ENV=VALUE...] (repeatable; default: this checkout)")
    args = ap.parse_args()
    variants = args.variant or [("this", HERE, {})]
    run_dir = Path(args.workdir).resolve() / "runs" / f"d{args.fields}"
    specs = {w: run_dir / f"bench-d{args.fields}-w{w}.yaml" for w in (1, 2)}
    for spec in specs.values():
        if not spec.exists():
            raise SystemExit(f"{spec} not found: run bench_field_stats.py --workdir "
                             f"{args.workdir} with --fields including {args.fields} first")
    say_context(f"# bench_workers_ab: 1 -> 2 workers at {args.fields:,} fields, "
                f"{args.rounds} interleaved rounds")
    for name, path, env in variants:
        say(f"# variant {name}: {path}" + (f" with {env}" if env else ""))
    before = host_events()
    got: dict[tuple[str, int], list[float]] = {(n, w): [] for n, _, _ in variants for w in (1, 2)}
    for r in range(args.rounds):
        for name, path, env in variants:
            for w in (1, 2):
                ex, wall = _run(specs[w], path, env, pin=w == 1)
                got[(name, w)].append(ex)
                say(f"round {r} {name} w{w}: execution {ex:.3f} s (pqb run {wall:.2f} s)")
    say_host_events(before, "the rounds")
    for name, _, _ in variants:
        one, two = got[(name, 1)], got[(name, 2)]
        m1, m2 = statistics.median(one), statistics.median(two)
        rounds = ", ".join(f"{a / b:.2f}" for a, b in zip(one, two, strict=True))
        say(f"{name}: 1 worker {m1:.3f} s [{min(one):.3f}-{max(one):.3f}], 2 workers {m2:.3f} s "
            f"[{min(two):.3f}-{max(two):.3f}], 1 -> 2 workers {m1 / m2:.3f}x (rounds {rounds})")


if __name__ == "__main__":
    main()
