"""Prometheus metrics of a running sweep, served while it runs (on 127.0.0.1 unless
sweep.metrics_host / --metrics-host / CIRCUITRY_METRICS_HOST say otherwise), and the terminal
progress line. A sweep is a batch job: its final figures would never be scraped if the endpoint
closed with the last job, so it stays up `sweep.metrics_linger` seconds more (default 10 s, two
scrape intervals of deploy/prometheus/prometheus.yml), and, where `sweep.pushgateway` /
--pushgateway names a Prometheus Pushgateway, the final figures are pushed there too (grouping
key job="circuitry", sweep=<name>; Prometheus's documented pattern for batch jobs). Fed by the driver: job state changes it sees itself, progress events workers send
through the Ray progress actor (orchestrator.remote.ProgressActor).

Exported (names follow Prometheus conventions):
    circuitry_sweep_jobs{sweep}                       jobs in the expanded spec
    circuitry_jobs{kind,state}                        jobs now in a state: queued, running,
                                                      finished, failed, skipped, cached
    circuitry_job_events_total{kind,event}            submitted, started, finished, failed, retried
    circuitry_job_retries_total{kind}                 attempts after the first (worker death or
                                                      a transient error)
    circuitry_train_steps_total{task}                 optimizer steps
    circuitry_train_examples_total{task}              examples processed (steps x batch)
    circuitry_edges_evaluated_total{method}           edges scored by discovery (rate() = edges/s)
    circuitry_job_duration_seconds{kind}              histogram of job wall time in the worker
    circuitry_job_peak_memory_bytes{kind}             largest peak memory of a job of that kind
    circuitry_worker_rss_bytes{worker}                resident memory of each worker process
"""
from __future__ import annotations

import errno
import sys
import time
from collections import defaultdict

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

STATES = ("queued", "running", "finished", "failed", "skipped", "cached")
KINDS = ("train", "discover")


class SweepMetrics:
    def __init__(self, sweep: str, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.sweep = sweep
        self.total = Gauge("circuitry_sweep_jobs", "Jobs in the expanded sweep spec", ["sweep"], registry=r)
        self.jobs = Gauge("circuitry_jobs", "Jobs now in each state", ["kind", "state"], registry=r)
        self.events = Counter("circuitry_job_events", "Job state transitions", ["kind", "event"], registry=r)
        self.retries = Counter("circuitry_job_retries", "Job attempts after the first", ["kind"], registry=r)
        self.steps = Counter("circuitry_train_steps", "Training steps done", ["task"], registry=r)
        self.examples = Counter("circuitry_train_examples", "Training examples processed", ["task"], registry=r)
        self.edges = Counter("circuitry_edges_evaluated", "Edges scored by circuit discovery", ["method"], registry=r)
        self.duration = Histogram("circuitry_job_duration_seconds", "Job wall time in the worker", ["kind"],
                                  buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
                                  registry=r)
        self.peak = Gauge("circuitry_job_peak_memory_bytes", "Largest peak memory of a job", ["kind"], registry=r)
        self.rss = Gauge("circuitry_worker_rss_bytes", "Resident memory of a worker process", ["worker"], registry=r)
        self.counts: dict[tuple[str, str], int] = defaultdict(int)
        for k in KINDS:
            for s in STATES:
                self.jobs.labels(k, s).set(0)
            self.retries.labels(k)
            self.peak.labels(k).set(0)
        self._peak: dict[str, int] = defaultdict(int)
        self.edges_done = 0
        self.server = None
        self.port = None

    # ------------------------------------------------------------ state
    def set_total(self, n: int) -> None:
        self.total.labels(self.sweep).set(n)

    def move(self, kind: str, old: str | None, new: str, n: int = 1) -> None:
        if old:
            self.counts[(kind, old)] -= n
            self.jobs.labels(kind, old).set(self.counts[(kind, old)])
        self.counts[(kind, new)] += n
        self.jobs.labels(kind, new).set(self.counts[(kind, new)])
        event = {"queued": "submitted", "running": "started"}.get(new, new)
        if new != "cached":
            self.events.labels(kind, event).inc(n)

    def retried(self, kind: str) -> None:
        self.retries.labels(kind).inc()
        self.events.labels(kind, "retried").inc()

    def finished(self, kind: str, seconds: float, peak_bytes: int) -> None:
        self.duration.labels(kind).observe(seconds)
        if peak_bytes and peak_bytes > self._peak[kind]:
            self._peak[kind] = peak_bytes
            self.peak.labels(kind).set(peak_bytes)

    def train_progress(self, task: str, steps: int = 0, examples: int = 0) -> None:
        self.steps.labels(task).inc(steps)
        self.examples.labels(task).inc(examples)

    def edges_evaluated(self, method: str, n: int) -> None:
        self.edges.labels(method).inc(n)
        self.edges_done += n

    def worker_rss(self, pid: int, rss: int) -> None:
        if rss:
            self.rss.labels(str(pid)).set(rss)

    # ------------------------------------------------------------ endpoint
    def serve(self, port: int, host: str = "127.0.0.1") -> int | None:
        """Serve /metrics on host:port (0 = any free port); returns the port, or None when the
        port is taken (the sweep runs on without an endpoint, after a one-line warning)."""
        if port < 0:
            return None
        try:
            self.server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            why = "port in use, e.g. by another sweep's driver" if e.errno == errno.EADDRINUSE else e.strerror
            print(f"warning: metrics endpoint {host}:{port} not started ({why}); this sweep runs without "
                  "one; choose another port with --metrics-port N or sweep.metrics_port (0 = any free port)",
                  file=sys.stderr, flush=True)
            return None
        self.port = self.server.server_port
        return self.port

    def linger(self, seconds: float, echo=None) -> None:
        """Keep serving the final figures for `seconds` (Ctrl-C ends it early)."""
        if self.server is None or seconds <= 0:
            return
        if echo:
            echo(f"metrics: the final figures stay scrapeable for {seconds:.1f} s (sweep.metrics_linger; "
                 "Ctrl-C ends it now)")
        try:
            time.sleep(seconds)
        except KeyboardInterrupt:
            pass

    def push(self, gateway: str) -> str | None:
        """Push the current figures to a Pushgateway (replacing this sweep's group there); returns
        None, or the one-line reason it failed (the sweep's results do not depend on it)."""
        from prometheus_client import push_to_gateway

        try:
            push_to_gateway(gateway, job="circuitry", grouping_key={"sweep": self.sweep}, registry=self.registry,
                            timeout=10)
        except Exception as e:  # noqa: BLE001 - unreachable, refused, bad address: all non-fatal
            return f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        return None

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class ProgressBar:
    """The sweep's live line. On a terminal a tqdm bar over the jobs done (cached ones count from
    the start) with jobs/s and ETA, then running, failed and cached counts, edges/s and the MLflow
    runs not yet logged; per-job lines scroll above it (tqdm.write). Elsewhere (logs, Ray Jobs)
    one line per finished job, `[done/total] ...`, which `circuitry status` reads back."""

    def __init__(self, total: int, enabled: bool = True, stream=None, width: int = 24, cached: int = 0,
                 backlog=None):
        self.total, self.enabled, self.width, self.cached = total, enabled, width, cached
        self.backlog = backlog or (lambda: 0)
        self.stream = stream or sys.stderr
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.samples: list[tuple[float, int]] = []
        self.t0 = time.monotonic()
        self.last_draw = 0.0
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=cached, file=self.stream, unit="job", dynamic_ncols=True,
                            bar_format="{l_bar}{bar:%d}| {n_fmt}/{total_fmt} jobs [{elapsed}<{remaining}, "
                                       "{rate_fmt}] {postfix}" % width)

    def rate(self, edges_done: int) -> float:
        now = time.monotonic()
        self.samples.append((now, edges_done))
        self.samples = [s for s in self.samples if now - s[0] <= 10] or self.samples[-1:]
        t0, e0 = self.samples[0]
        return (edges_done - e0) / (now - t0) if now > t0 else 0.0

    def counts(self, done: int, failed: int, running: int, edges_done: int) -> str:
        rate = self.rate(edges_done)
        r = f"{rate / 1000:.1f}k" if rate >= 1000 else f"{rate:.0f}"
        behind = self.backlog()
        mlflow = f"  MLflow {behind} to log" if behind else ""
        return f"{running} running  {failed} failed  {self.cached} cached  {r} edges/s{mlflow}"

    def line(self, done: int, failed: int, running: int, edges_done: int) -> str:
        """The whole line as text (what a terminal shows, drawn by tqdm there)."""
        ran, elapsed = done - self.cached, max(time.monotonic() - self.t0, 1e-9)
        jobs_rate = ran / elapsed
        left = self.total - done - failed
        eta = time.strftime("%H:%M:%S", time.gmtime(left / jobs_rate)) if jobs_rate > 0 else "?"
        fill = int((done / self.total if self.total else 1.0) * self.width)
        return (f"[{'#' * fill}{'.' * (self.width - fill)}] {done}/{self.total} jobs  {jobs_rate:.2f} jobs/s  "
                f"ETA {eta}  {self.counts(done, failed, running, edges_done)}")

    def draw(self, done: int, failed: int, running: int, edges_done: int, force: bool = False) -> None:
        if self.bar is None:
            return
        now = time.monotonic()
        if not force and now - self.last_draw < 0.2:
            return
        self.last_draw = now
        self.bar.n = done
        self.bar.set_postfix_str(self.counts(done, failed, running, edges_done), refresh=False)
        self.bar.refresh()

    def note(self, text: str, done: int, failed: int, running: int, edges_done: int) -> None:
        """A finished or failed job: a line of its own (above the bar on a terminal)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
            self.draw(done, failed, running, edges_done, force=True)
        else:
            self.stream.write(f"[{done}/{self.total}] {text}\n")
            self.stream.flush()

    def end(self, done: int, failed: int, running: int, edges_done: int) -> None:
        if self.bar is not None:
            self.draw(done, failed, running, edges_done, force=True)
            self.bar.close()