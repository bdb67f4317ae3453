"""The Prometheus endpoint, scraped over HTTP while a sweep runs on a real local Ray."""
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from circuitry.orchestrator.metrics import ProgressBar, SweepMetrics
from circuitry.orchestrator.scheduler import Scheduler
from circuitry.orchestrator.spec import parse_spec

pytestmark = pytest.mark.slow

SPEC = """
[sweep]
name = "m"
root = "{root}"
metrics_port = 0
metrics_linger = 1.5

[train]
task = ["independence", "two_moons"]
regime = "bimt"
seed = [0, 1]
steps = 1500
width = 8
log_every = 50

[discover]
method = ["exact", "acdc"]
threshold = 0.01

[resources]
edge_chunk = 50
"""


def scrape(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = s.name + "".join(f"|{k}={v}" for k, v in sorted(s.labels.items()))
            out[key] = s.value
    return out


def total(sample, prefix):
    return sum(v for k, v in sample.items() if k.split("|")[0] == prefix)


def scrape_until_closed(sched):
    """Run the sweep in a thread and scrape its endpoint every 0.2 s, as Prometheus would, until
    the endpoint closes; returns (outcome, samples, lines echoed)."""
    said = []
    sched.echo = said.append
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("out", sched.run()))
    t.start()
    samples = []
    deadline = time.monotonic() + 120
    while t.is_alive() and time.monotonic() < deadline:
        if sched.metrics.port:
            try:
                samples.append(scrape(sched.metrics.port))
            except OSError:
                pass  # not up yet, or closed after the sweep
        time.sleep(0.2)
    t.join()
    return result["out"], samples, said


def assert_final_counts(sample, n_jobs, n_cached):
    """What a dashboard shows at the end: every job finished or cached, each submitted once."""
    jobs = {s: sum(v for k, v in sample.items() if k.startswith("circuitry_jobs|") and k.endswith(f"state={s}"))
            for s in ("queued", "running", "finished", "failed", "skipped", "cached")}
    assert jobs["finished"] + jobs["cached"] == n_jobs == sample["circuitry_sweep_jobs|sweep=m"]
    assert jobs == {"queued": 0, "running": 0, "finished": n_jobs - n_cached, "failed": 0, "skipped": 0,
                    "cached": n_cached}
    events = {e: sum(v for k, v in sample.items() if k.startswith("circuitry_job_events_total|") and f"event={e}" in k)
              for e in ("submitted", "started", "finished")}
    assert events == {"submitted": n_jobs - n_cached, "started": n_jobs - n_cached, "finished": n_jobs - n_cached}


def test_metrics_rise_during_sweep(ray_local, tmp_path):
    spec = parse_spec(SPEC.format(root=tmp_path))
    sched = Scheduler(spec, echo=lambda m: None, progress=False, record_mlflow=False)
    out, samples, said = scrape_until_closed(sched)
    assert out.finished == len(spec.jobs)
    # the endpoint outlived the sweep (sweep.metrics_linger): the last scrape has the final counts,
    # and discover jobs (queued while their model trains) were submitted once each
    assert_final_counts(samples[-1], len(spec.jobs), 0)
    assert any("stay scrapeable for" in line for line in said)
    by_kind = {k: samples[-1][f"circuitry_job_events_total|event=submitted|kind={k}"] for k in ("train", "discover")}
    assert by_kind == {"train": 4, "discover": 8}
    assert len(samples) >= 3
    steps = [total(s, "circuitry_train_steps_total") for s in samples]
    assert steps == sorted(steps) and steps[-1] > steps[0]  # counters only rise, and they did
    assert any(0 < x < 4 * 1500 for x in steps)  # seen mid-sweep
    examples = [total(s, "circuitry_train_examples_total") for s in samples]
    assert examples[-1] > examples[0]
    assert any(s.get("circuitry_jobs|kind=train|state=running", 0) > 0 for s in samples)
    assert any(s.get("circuitry_jobs|kind=train|state=queued", 0) > 0 for s in samples)
    last = samples[-1]
    assert last["circuitry_sweep_jobs|sweep=m"] == len(spec.jobs)
    assert "circuitry_job_duration_seconds_bucket|kind=train|le=+Inf" in last
    assert any(k.startswith("circuitry_worker_rss_bytes") and v > 0 for k, v in last.items())
    # after the sweep, the registry holds the final figures
    final = {s.name + "".join(f"|{k}={v}" for k, v in sorted(s.labels.items())): s.value
             for fam in sched.metrics.registry.collect() for s in fam.samples}
    assert total(final, "circuitry_train_steps_total") == 4 * 1500
    assert total(final, "circuitry_edges_evaluated_total") >= 4 * (8 * 8 + 4 * 8 + 8 * 2)  # exact scored every edge
    assert final["circuitry_jobs|kind=discover|state=finished"] == 8
    assert final["circuitry_job_peak_memory_bytes|kind=train"] > 0
    # the endpoint is gone after the sweep
    with pytest.raises(OSError):
        scrape(sched.metrics.port)

    # the same sweep again: nothing runs, and the last scrape says all of it was cached
    again, samples, _ = scrape_until_closed(Scheduler(spec, progress=False, record_mlflow=False))
    assert (again.finished, again.cached) == (0, len(spec.jobs)) and samples
    assert_final_counts(samples[-1], len(spec.jobs), len(spec.jobs))


def test_metrics_names_follow_conventions():
    m = SweepMetrics("x")
    names = {s.name for fam in m.registry.collect() for s in fam.samples}
    m.train_progress("independence", 10, 1000)
    m.edges_evaluated("exact", 5)
    m.finished("train", 1.5, 1 << 20)
    names = {s.name for fam in m.registry.collect() for s in fam.samples}
    for n in names:
        assert n.startswith("circuitry_")
    assert {"circuitry_train_steps_total", "circuitry_train_examples_total", "circuitry_edges_evaluated_total",
            "circuitry_job_retries_total", "circuitry_job_duration_seconds_bucket",
            "circuitry_job_peak_memory_bytes", "circuitry_jobs"} <= names


def test_progress_line():
    bar = ProgressBar(10, enabled=True, cached=2, backlog=lambda: 4)
    line = bar.line(3, 1, 2, 0)
    assert "3/10 jobs" in line and "1 failed" in line and "edges/s" in line
    assert "2 cached" in line and "2 running" in line and "jobs/s" in line and "ETA" in line
    assert "MLflow 4 to log" in line


def test_progress_bar_on_a_terminal_keeps_job_lines_above_it():
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    bar = ProgressBar(5, enabled=True, stream=out, cached=1)
    bar.note("finished a (0.1 s)", 2, 0, 1, 0)
    bar.end(5, 0, 0, 0)
    text = out.getvalue()
    assert "finished a (0.1 s)\n" in text and "5/5 jobs" in text and "1 cached" in text
