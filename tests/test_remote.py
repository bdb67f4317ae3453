"""The Ray side's own behaviour, on the session's real local Ray."""
import time

import pytest


@pytest.mark.parametrize("keeping", [True, False])
def test_a_task_waiting_for_the_progress_actor_keeps_its_cpus(ray_local, keeping):
    """A task that waits for an actor call through `remote._get_keeping_cpus` keeps its CPUs
    while it waits. Blocked in `ray.get` on its main thread (the control, keeping=False), a task
    lends its CPUs back to Ray, which hands them to a queued task and, with no idle worker,
    starts a process for it (a chunked `exact` job on 1 worker lost 2.3 s so)."""
    ray = ray_local

    @ray.remote(num_cpus=0)
    class Probe:
        def free_cpus_after(self, seconds):
            time.sleep(seconds)  # the caller is waiting meanwhile; the resource view has caught up
            return ray.available_resources().get("CPU", 0.0)

    @ray.remote(num_cpus=2)  # the whole local Ray
    def task(probe, keeping):
        from circuitry.orchestrator.remote import _get_keeping_cpus

        ref = probe.free_cpus_after.remote(1.0)
        return _get_keeping_cpus(ref) if keeping else ray.get(ref)

    probe = Probe.remote()
    assert ray.get(probe.free_cpus_after.remote(0.5)) == 2.0  # nothing else holds a CPU
    free = ray.get(task.remote(probe, keeping))
    assert free == (0.0 if keeping else 2.0)
