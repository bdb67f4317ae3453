"""Orchestration overhead and exact-scoring fan-out.

0. How a result reaches the sweep folder, on a 2-node local Ray (ray.cluster_utils.Cluster: a head
   and a second node, separate raylets and object stores on this machine), every job on the
   second node: the task returns its record and files through the object store and the driver
   writes the folder (orchestrator.store: temp folder, fsync, rename), with and without the
   fsyncs (the transport alone). Per job: submit, wait, write; both alternate in rounds.
1. Per-job overhead of the Ray path (orchestrator.scheduler: Ray tasks, progress actor, ray.wait
   loop, jobs.parquet; MLflow off, it runs on its own thread) against calling the same job
   functions (orchestrator.execute) in a plain loop. Ray gets 1 CPU so both run the jobs one after
   another; workers are warmed up first. Goal: <= 20 ms a job.
2. `exact` on a wider model: one pass in this process, and through the scheduler as one task and
   fanned out in 4 chunks of equal estimated work (workers.chunks; each worker prepares the
   problem once for the job's chunks it runs) over a local Ray with 1 and with 2 CPUs; the same 4
   chunks on 1 and 2 plain processes (what the machine allows them side by side); all six runs
   interleaved, --rounds rounds. Chunk overhead: 4 chunks vs one task, both on 1 worker.
3. Scale (benchmarks/scale.py): a sweep of --scale-jobs tiny jobs (driver overhead, a job's fixed
   cost, jobs.parquet, driver memory, MLflow runs/s on SQLite and HTTP) and a simulated cluster
   whose results arrive at 200 jobs/s.

    python benchmarks/orchestration.py [--jobs 12] [--width 256] [--results 30] [--scale-jobs 2000]
    python benchmarks/orchestration.py --fanout-only --width 1024 [--rounds 8]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import ray  # noqa: E402
import torch  # noqa: E402

from circuitry.orchestrator import execute  # noqa: E402
from circuitry.orchestrator.ray_session import start_local_ray  # noqa: E402
from circuitry.orchestrator.scheduler import Scheduler  # noqa: E402
from circuitry.orchestrator.spec import parse_spec  # noqa: E402
from circuitry.orchestrator.store import JobResult, JobStore  # noqa: E402

from acdc import at_least_one  # noqa: E402  benchmarks/acdc.py, beside this file


def spec_text(root, name, seeds, steps, methods, width, chunk=0, tasks=("independence",)):
    return f"""
[sweep]
name = "{name}"
root = "{root}"
metrics_port = -1
[train]
task = {list(tasks)!r}
regime = "vanilla"
seed = {list(seeds)!r}
steps = {steps}
width = {width}
log_every = 10
[discover]
method = {list(methods)!r}
threshold = 0.01
[resources]
edge_chunk = {chunk}
""".replace("'", '"')


def run_sched(spec):
    t = time.perf_counter()
    out = Scheduler(spec, progress=False, record_mlflow=False, echo=lambda m: None).run()
    assert out.failed == 0, out.failures
    return time.perf_counter() - t, out


def plain_loop(spec):
    t = time.perf_counter()
    ckpts = {}
    store = JobStore(spec.sweep_dir)
    store.prepare()
    for j in spec.train_jobs():
        result, ckpts[j.id] = execute.execute_train(j)
        store.commit(j.id, result)
    for j in spec.discover_jobs():
        store.commit(j.id, execute.execute_discover(j, ckpts[j.model_id]))
    return time.perf_counter() - t


# ---------------------------------------------------------------- 0. the result path

@ray.remote(num_cpus=1, resources={"second": 1})
def _return_result(record, files):
    return JobResult(record, files)


def real_files() -> dict[str, bytes]:
    """The files of a real small train job (the workers' own bytes)."""
    from circuitry.workers.outputs import training_files
    from circuitry.workers.train import TrainConfig, train

    return training_files(train(TrainConfig(task="independence", regime="bimt", steps=20, width=6, log_every=10)))


def result_path(tmp: Path, n_jobs: int, rounds: int = 5):
    """Seconds per job without fsync (the transport alone) and as shipped, for a real small job's
    files and for 5 MB of files: the median over rounds of each round's mean (every round runs
    both one after the other)."""
    from ray.cluster_utils import Cluster

    sizes = {"small job (real files)": real_files(),
             "5 MB of files": {"model.pt": os.urandom(4 << 20), "circuit.parquet": os.urandom(1 << 20)}}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    cluster.add_node(num_cpus=1, resources={"second": 1})
    ray.init(address=cluster.address, logging_level="ERROR")
    rows = []
    try:
        for label, files in sizes.items():
            files_ref = ray.put(files)
            ray.get(_return_result.remote({"job_id": "warm"}, files_ref))  # a warm worker on node 2
            paths = {"no fsync": [], "fsync": []}
            for r in range(rounds):
                for path, times in paths.items():
                    out = tmp / f"{path}-{label[:5]}-{r}".replace(" ", "_").replace(",", "")
                    store = JobStore(out, fsync=path == "fsync")
                    store.prepare()
                    t = time.perf_counter()
                    for i in range(n_jobs):
                        jid = f"{r:04x}{i:012x}"
                        record = {"job_id": jid, "kind": "train"}
                        store.commit(jid, ray.get(_return_result.remote(record, files_ref)))
                    times.append((time.perf_counter() - t) / n_jobs)
            rows.append((label, sum(len(b) for b in files.values()),
                         *(statistics.median(times) for times in paths.values())))
    finally:
        ray.shutdown()
        cluster.shutdown()
    return rows


def overhead(tmp: Path, n_seeds: int):
    """Wall of both paths at n and 3n jobs: the per-job overhead is the slope of the difference
    (the sweep's fixed cost, folder/recorder/actor setup, is the rest)."""
    sizes = (n_seeds, 3 * n_seeds)
    ray_s, loop_s = {}, {}
    start_local_ray(1)
    try:
        run_sched(parse_spec(spec_text(tmp / "warm", "w", [1000], 5, ["acdc"], 4)))  # warm the worker
        for n in sizes:
            ray_s[n], _ = run_sched(parse_spec(spec_text(tmp / f"ray{n}", "o", list(range(n)), 5, ["acdc"], 4)))
    finally:
        ray.shutdown()
    torch.set_num_threads(1)
    plain_loop(parse_spec(spec_text(tmp / "warm2", "w", [1000], 5, ["acdc"], 4)))  # warm imports
    for n in sizes:
        loop_s[n] = plain_loop(parse_spec(spec_text(tmp / f"loop{n}", "o", list(range(n)), 5, ["acdc"], 4)))
    a, b = sizes
    per_job = ((ray_s[b] - loop_s[b]) - (ray_s[a] - loop_s[a])) / (2 * (b - a))
    fixed = (ray_s[a] - loop_s[a]) - per_job * 2 * a
    return [(2 * n, loop_s[n], ray_s[n]) for n in sizes], per_job, fixed


# interleaved rounds of the fan-out rows and of the machine check, unless --rounds says (a single
# run varies by ~10% on the 2-core machine even when idle)
REPEATS = 4


def _plain_chunk(args) -> tuple[float, float]:
    """One chunk of an `exact` job in a plain worker process (no Ray): the chunk tasks' own
    function (orchestrator.execute.execute_exact_chunk: the process's first chunk of the job
    prepares the problem, its later ones reuse it), without progress reporting. Returns the
    chunk's (start, end) wall clock."""
    from circuitry.workers.model import load_checkpoint

    path, job, start, stop = args
    torch.set_num_threads(1)  # as orchestrator.remote gives a 1-CPU task
    ckpt = load_checkpoint(path)  # before the chunk's clock starts: a Ray chunk's arrives loaded
    chunk = execute.execute_exact_chunk(job, ckpt, start, stop)
    return chunk.started, chunk.ended


def _warm(_) -> None:
    import circuitry.workers.acdc  # noqa: F401 - torch and the scorer imported before the measurement
    time.sleep(0.2)  # long enough that every process of the pool takes one


def plain_job(pool, path: Path, job, bounds: list[tuple[int, int]]) -> float:
    """Seconds of one `exact` job's chunks on a pool of plain processes, each taking the next chunk
    when it is free (as Ray hands them out), measured as the Ray job is: from the first chunk's
    start, its prepare included, to the last chunk's end. Each call is a new job (its own id), so
    the processes prepare again, as fresh Ray workers do."""
    job = replace(job, id=f"{time.monotonic_ns():016x}")
    spans = pool.map(_plain_chunk, [(str(path), job, a, b) for a, b in bounds], chunksize=1)
    return max(end for _, end in spans) - min(start for start, _ in spans)


def exact_fanout(tmp: Path, width: int, rounds: int = REPEATS):
    """`exact` on one two_moons model: one pass in this process; through the scheduler on a local
    Ray with 1 CPU (unchunked, and in 4 chunks) and with 2 CPUs (4 chunks); and the same 4 chunks
    on 1 and on 2 plain processes (no Ray, no scheduler: what the machine gives these chunks side
    by side, the ceiling for Ray's 2-worker ratio). The runs are interleaved, `rounds` rounds of all
    six: this 2-core VM's speed drifts by ~10% over minutes even idle, which runs minutes apart
    turned into differences of that size. Returns (edges, chunk, {row: [seconds of each round]});
    a Ray row's seconds are the job's own (prepare and scoring; chunked: from the first chunk's
    start, its prepare included, to the last chunk's end)."""
    import multiprocessing

    from circuitry.orchestrator.recorder import read_records
    from circuitry.workers.acdc import exact_scores
    from circuitry.workers.chunks import chunk_bounds
    from circuitry.workers.discover import prepare
    from circuitry.workers.model import load_checkpoint

    base = parse_spec(spec_text(tmp / "x", "x", [0], 20, [], width, tasks=("two_moons",)).replace(
        "[discover]\nmethod = []\nthreshold = 0.01\n", ""))
    start_local_ray(1)
    try:
        run_sched(base)
    finally:
        ray.shutdown()
    tj = base.train_jobs()[0]
    model_path = base.sweep_dir / "jobs" / tj.id / "model.pt"
    ckpt = load_checkpoint(model_path)
    n_edges = sum(w.numel() for w in ckpt["weights"])
    chunk = -(-n_edges // 4)
    bounds = chunk_bounds(list(ckpt["shape"]), -(-n_edges // chunk))  # the scheduler's cut for edge_chunk = chunk
    plain = parse_spec(spec_text(tmp / "plain", "x", [0], 20, ["exact"], width,
                                 tasks=("two_moons",))).discover_jobs()[0]  # the job the plain processes run
    torch.set_num_threads(1)
    runs: dict[str, list[float]] = {}

    def ray_job(label, edge_chunk):  # the same job in a fresh sweep folder (its model copied in)
        spec = parse_spec(spec_text(tmp / f"job-{time.monotonic_ns()}", "x", [0], 20, ["exact"], width,
                                    chunk=edge_chunk, tasks=("two_moons",)))
        (spec.sweep_dir / "jobs").mkdir(parents=True)
        shutil.copytree(base.sweep_dir / "jobs" / tj.id, spec.sweep_dir / "jobs" / tj.id)
        run_sched(spec)
        rec = next(r for r in read_records(spec.sweep_dir).values() if r["kind"] == "discover")
        runs.setdefault(label, []).append(rec["figures"]["discovery_seconds"])

    spawn = multiprocessing.get_context("spawn")
    pools = {n: spawn.Pool(n) for n in (1, 2)}
    try:
        for n, pool in pools.items():
            pool.map(_warm, range(n), chunksize=1)
        for _ in range(rounds):
            t = time.perf_counter()
            exact_scores(prepare(ckpt).problem)  # what the chunks do between them: prepare once, score every edge
            runs.setdefault("one pass, in process", []).append(time.perf_counter() - t)
            for cpus in (1, 2):
                start_local_ray(cpus)
                try:
                    # warm every worker (two models train at once), so none starts cold inside the measurement
                    run_sched(parse_spec(spec_text(tmp / f"w{cpus}-{time.monotonic_ns()}", "w", [1, 2], 5,
                                                   ["exact"], 4, chunk=10)))
                    if cpus == 1:
                        ray_job("Ray, 1 worker, one task", 0)
                    ray_job(f"Ray, {cpus} worker{'s' if cpus > 1 else ''}, 4 chunks", chunk)
                finally:
                    ray.shutdown()
            for n, pool in pools.items():
                runs.setdefault(f"plain, {n} process{'es' if n > 1 else ''}, 4 chunks", []).append(
                    plain_job(pool, model_path, plain, bounds))
    finally:
        for pool in pools.values():
            pool.terminate()
    return n_edges, chunk, runs


def speedup(runs: dict, one: str, two: str) -> tuple[float, float, float, float]:
    """How much faster `two` ran than `one`: best over best, then the median, lowest and highest of
    the rounds' own ratios (each round ran both within seconds of each other)."""
    paired = sorted(a / b for a, b in zip(runs[one], runs[two]))
    return min(runs[one]) / min(runs[two]), statistics.median(paired), paired[0], paired[-1]


@ray.remote
def _spin(n):
    x = 0
    for i in range(n):
        x += i
    return x


def parallelism() -> float:
    """What 2 workers buy on this machine now: time of 2 CPU-bound tasks on 2 workers over 1 task
    (1.0 = perfect parallelism; 2.0 = the cores are taken by something else)."""
    start_local_ray(2)
    try:
        ray.get([_spin.remote(10) for _ in range(2)])
        best = float("inf")
        for _ in range(REPEATS):  # Ray's own processes are busy for a while after it starts: the best
            t = time.perf_counter()
            ray.get(_spin.remote(5_000_000))
            one = time.perf_counter() - t
            t = time.perf_counter()
            ray.get([_spin.remote(5_000_000) for _ in range(2)])
            best = min(best, (time.perf_counter() - t) / one)
        return best
    finally:
        ray.shutdown()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=12, help="jobs in the overhead test (half train, half acdc)")
    ap.add_argument("--width", type=int, default=256, help="hidden width of the exact-scoring model")
    ap.add_argument("--results", type=int, default=30, help="jobs per round in the result-path comparison")
    ap.add_argument("--scale-jobs", type=int, default=2000, help="tiny jobs in the scale row (0: skip it)")
    ap.add_argument("--rounds", type=at_least_one, default=REPEATS, help="interleaved rounds of the fan-out rows")
    ap.add_argument("--fanout-only", action="store_true", help="only the exact fan-out rows (2.)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="circuitry-bench-"))
    try:
        if not args.fanout_only:
            print("how a result reaches the sweep folder (2-node local Ray, jobs on the second node; ms per job)")
            print("| files | bytes | driver writes, no fsync | as shipped (fsync) | fsync / no fsync |")
            print("| --- | --- | --- | --- | --- |")
            for label, nbytes, nosync_s, new_s in result_path(tmp, args.results):
                print(f"| {label} | {nbytes} | {1000 * nosync_s:.1f} | {1000 * new_s:.1f} | {new_s / nosync_s:.2f}x |")
            print()
            rows, per_job, fixed = overhead(tmp, max(1, args.jobs // 2))
            print("per-job overhead (tiny train + acdc jobs; Ray on 1 CPU vs the same functions in a plain loop)")
            print("| jobs | plain loop s | Ray sweep s | (Ray - loop) / job, ms |")
            print("| --- | --- | --- | --- |")
            for n, loop_s, ray_s in rows:
                print(f"| {n} | {loop_s:.2f} | {ray_s:.2f} | {1000 * (ray_s - loop_s) / n:.1f} |")
            print(f"marginal overhead per job: {1000 * per_job:.1f} ms (goal <= 20); "
                  f"fixed cost per sweep: {fixed:.2f} s")
        n_edges, chunk, runs = exact_fanout(tmp, args.width, args.rounds)
        print(f"\nexact scoring, two_moons width {args.width}: {n_edges} edges, chunks of {chunk} "
              f"({args.rounds} interleaved rounds)")
        print("| run | best s | median s |")
        print("| --- | --- | --- |")
        for row, seconds in runs.items():
            print(f"| {row} | {min(seconds):.2f} | {statistics.median(seconds):.2f} |")
        for what, one, two in (("Ray", "Ray, 1 worker, 4 chunks", "Ray, 2 workers, 4 chunks"),
                               ("plain processes", "plain, 1 process, 4 chunks", "plain, 2 processes, 4 chunks")):
            best, med, lo, hi = speedup(runs, one, two)
            print(f"2 {what} / 1 (4 chunks each): {best:.2f}x best over best, {med:.2f}x median of the rounds "
                  f"({lo:.2f}-{hi:.2f}x){' (goal >= 1.8)' if what == 'Ray' else ''}")
        one, four = min(runs["Ray, 1 worker, one task"]), min(runs["Ray, 1 worker, 4 chunks"])
        print(f"chunk overhead (1 worker, 4 chunks / one task - 1): {100 * (four / one - 1):.0f}% (goal < 5%); "
              f"machine check: 2 CPU-bound tasks on 2 workers took {parallelism():.2f}x one task "
              "(1.0 = two free cores)")
        if args.scale_jobs and not args.fanout_only:
            from scale import print_rows  # benchmarks/scale.py, beside this file

            print_rows(args.scale_jobs, mlflow_runs=min(100, args.scale_jobs))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
