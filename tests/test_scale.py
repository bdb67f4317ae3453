"""What sweeps of many tiny jobs rely on: per-job pictures on request, exact chunks of equal work
that prepare their problem once per worker process and still give the one-pass scores bit for bit
(on a GPU, to 1e-12)."""
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from circuitry.orchestrator import execute
from circuitry.orchestrator.spec import SpecError, parse_spec
from circuitry.workers.chunks import chunk_bounds, receiver_costs

SPEC = """
[sweep]
name = "tiny"
root = "{root}"
{extra}
[train]
task = "independence"
regime = "vanilla"
steps = 5
width = 4
[discover]
method = "exact"
threshold = 0.01
"""


@pytest.mark.parametrize("shape,n", [([2, 256, 256, 2], 4), ([4, 4, 4, 2], 3), ([64, 8, 10], 5), ([2, 3], 9)])
def test_chunk_bounds_cover_every_edge_at_receiver_cuts_with_equal_work(shape, n):
    bounds = chunk_bounds(shape, n)
    n_edges = sum(a * b for a, b in zip(shape, shape[1:]))
    assert bounds[0][0] == 0 and bounds[-1][1] == n_edges and len(bounds) <= n
    assert all(a < b for a, b in bounds) and all(b == c for (_, b), (c, _) in zip(bounds, bounds[1:]))
    # cut at receivers: every boundary is a whole number of senders into its matrix
    offsets = np.cumsum([0] + [a * b for a, b in zip(shape, shape[1:])])
    for _, b in bounds[:-1]:
        m = int(np.searchsorted(offsets, b, side="right")) - 1
        assert (b - offsets[m]) % shape[m] == 0
    cost = receiver_costs(shape)  # per receiver: an edge carries 1/senders of it
    work = [sum(cost[m] / shape[m] for m in (int(np.searchsorted(offsets, e, side="right")) - 1 for e in range(a, b)))
            for a, b in bounds]
    assert max(work) - min(work) <= 2 * max(cost) + 1e-6


def test_the_2_256_256_2_net_is_not_split_by_edge_count():
    """A third of its work is in the 512 edges into the first hidden layer: the first chunk is small."""
    assert chunk_bounds([2, 256, 256, 2], 4)[0][1] < 1000


def test_chunks_concatenate_to_the_one_pass_scores_and_prepare_once_per_process(tmp_path):
    from circuitry.workers.acdc import exact_scores
    from circuitry.workers.discover import prepare
    from circuitry.workers.graph import Graph

    spec = parse_spec(SPEC.format(root=tmp_path, extra=""))
    tj, dj = spec.train_jobs()[0], spec.discover_jobs()[0]
    dj = replace(dj, settings={**dj.settings, "device": "cpu"})  # bit for bit: the CPU on a GPU machine too
    _, ckpt = execute.execute_train(tj, pictures=False)
    bounds = chunk_bounds(list(ckpt["shape"]), 3)
    first = execute.execute_exact_chunk(dj, ckpt, *bounds[0])
    problem = execute.prepared_problem(dj, ckpt, torch.device("cpu"))
    rest = [execute.execute_exact_chunk(dj, ckpt, a, b) for a, b in bounds[1:]]
    # the later chunks of the job in this process scored the problem the first one prepared
    assert execute.prepared_problem(dj, ckpt, torch.device("cpu")) is problem
    assert first.started <= first.ended <= rest[0].started <= rest[0].ended <= rest[1].started
    assert [c.unreported_edges for c in [first, *rest]] == [0, 0, 0]  # no progress actor: nothing to report
    chunks = [first.scores] + [c.scores for c in rest]
    one, _ = exact_scores(prepare(ckpt).problem)
    assert len(np.concatenate(chunks)) == Graph.from_checkpoint(ckpt).n_edges
    assert np.concatenate(chunks).tolist() == one.numpy().tolist()
    # another job's chunk prepares its own problem, and the process keeps that one only
    other = replace(dj, id=dj.id + "x", settings={**dj.settings, "ablation": "zero"})
    execute.execute_exact_chunk(other, ckpt, *bounds[0])
    assert list(execute._PREPARED) == [(other.id, "cpu")]
    assert execute.prepared_problem(other, ckpt, torch.device("cpu")) is not problem


def test_every_edge_of_a_chunked_job_is_reported_once_before_its_done(tmp_path):
    """A chunk does not wait for the progress actor at its end: the edges it has not reported go
    back with its scores and the merge reports them before "done", so a dashboard's edge count is
    whole when the job is."""
    from circuitry.workers.graph import Graph

    spec = parse_spec(SPEC.format(root=tmp_path, extra="").replace("width = 4", "width = 16"))
    tj, dj = spec.train_jobs()[0], spec.discover_jobs()[0]
    _, ckpt = execute.execute_train(tj, pictures=False)
    sent = []

    def send(events, wait=False):  # what orchestrator.remote's sender hands the progress actor
        sent.extend(events)

    n = Graph.from_checkpoint(ckpt).n_edges
    assert n == 4 * 16 + 16 * 16 + 16 * 2
    chunks = [execute.execute_exact_chunk(dj, ckpt, a, b, send) for a, b in chunk_bounds(list(ckpt["shape"]), 3)]
    # each chunk announces its edges; what it scored it reports in 0.5 s batches (none or some,
    # as fast as the machine is) and hands the rest back unsent
    assert [e.name for e in sent if e.name != "edges"] == ["chunk"] * 3
    assert sum(e.value for e in sent if e.name == "chunk") == n
    by_chunks = sum(e.value for e in sent if e.name == "edges")
    assert by_chunks + sum(c.unreported_edges for c in chunks) == n
    sent.clear()
    execute.execute_exact_merge(dj, ckpt, chunks, send, pictures=False)
    kinds = [e.name for e in sent]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert by_chunks + sum(e.value for e in sent if e.name == "edges") == n  # every edge once, before "done"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU: torch.cuda.is_available() is False")
def test_chunks_on_the_gpu_give_the_cpu_scores(tmp_path):
    """A chunk job on a GPU worker ("auto") scores there, on the problem it prepared there, and
    its scores come back as the CPU's to 1e-12."""
    from circuitry.workers.acdc import exact_scores
    from circuitry.workers.discover import prepare

    spec = parse_spec(SPEC.format(root=tmp_path, extra="").replace("width = 4", "width = 64"))
    tj, dj = spec.train_jobs()[0], spec.discover_jobs()[0]
    _, ckpt = execute.execute_train(tj, pictures=False)
    chunks = [execute.execute_exact_chunk(dj, ckpt, a, b).scores for a, b in chunk_bounds(list(ckpt["shape"]), 3)]
    assert [k[1] for k in execute._PREPARED] == ["cuda"]
    one, _ = exact_scores(prepare(ckpt).problem)
    np.testing.assert_allclose(np.concatenate(chunks), one.numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("ablation,output", [("resample", None), ("mean", None), ("zero", 1)])
def test_discovery_problem_is_prepares_problem(tmp_path, ablation, output):
    """The chunks' problem (without the evaluation examples) is the one-pass discovery's, tensor for tensor."""
    from circuitry.workers.discovery_data import discovery_problem, prepare

    spec = parse_spec(SPEC.format(root=tmp_path, extra=""))
    _, ckpt = execute.execute_train(spec.train_jobs()[0], pictures=False)
    a = prepare(ckpt, ablation=ablation, output=output, seed=3).problem
    b = discovery_problem(ckpt, ablation=ablation, output=output, seed=3)
    assert a.n_examples == b.n_examples > 0
    for x, y in zip(a.clean + a.ablated, b.clean + b.ablated):
        assert torch.equal(x, y)
    assert torch.equal(a.metric.y_full, b.metric.y_full)


def test_pictures_false_leaves_the_drawings_out_and_keeps_every_figure(tmp_path):
    spec = parse_spec(SPEC.format(root=tmp_path, extra="pictures = false"))
    assert spec.pictures is False and parse_spec(SPEC.format(root=tmp_path, extra="")).pictures is True
    tj, dj = spec.train_jobs()[0], spec.discover_jobs()[0]
    train_on, ckpt = execute.execute_train(tj)
    train_off, _ = execute.execute_train(tj, pictures=False)
    assert "network.png" in train_on.files and list(train_off.files) == ["model.pt", "metrics.json"]
    assert set(train_off.record["figures"]) == set(train_on.record["figures"])
    for key in ("inference_per_second_batch1", "inference_per_second_batch1024"):
        assert math.isfinite(train_off.record["figures"][key]) and train_off.record["figures"][key] > 0
    found = execute.execute_discover(dj, ckpt, pictures=False)
    assert list(found.files) == ["circuit.parquet", "summary.json"]


def test_pictures_must_be_a_boolean(tmp_path):
    with pytest.raises(SpecError, match=r'^sweep.pictures: "no" is not true or false$'):
        parse_spec(SPEC.format(root=tmp_path, extra='pictures = "no"'))


def test_progress_batches_read_the_workers_memory_once_each(tmp_path):
    """A chunk of `exact` reports once a receiver: the events of a batch all arrive, in order, and
    only its last carries the resident memory (one read of /proc a batch, not one an event)."""
    spec = parse_spec(SPEC.format(root=tmp_path, extra=""))
    batches = []
    rep = execute.Reporter(lambda events, wait: batches.append(list(events)), spec.discover_jobs()[0], interval=3600)
    rep.emit("chunk", 8, flush=True)
    for _ in range(500):
        rep.edges(2)
    rep.flush()
    assert [len(b) for b in batches] == [1, 500]
    assert sum(e.value for e in batches[1]) == 1000 and {e.name for e in batches[1]} == {"edges"}
    assert [e.rss > 0 for e in batches[1]] == [False] * 499 + [True]
    assert batches[0][0][6] > 0  # a batch of one carries it too
