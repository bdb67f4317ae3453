"""Transformer tasks in sweep specs: the shape fields of [train], job ids."""
import pytest

from circuitry.orchestrator.jobs import _train_payload
from circuitry.orchestrator.spec import SpecError, parse_spec


def spec(train: str, root) -> str:
    return f'[sweep]\nname = "t"\nroot = "{root}"\nmetrics_port = -1\n\n[train]\n{train}\n'


def test_shape_fields_make_distinct_transformer_jobs(tmp_path):
    s = parse_spec(spec('task = "induction"\nregime = ["vanilla", "bimt"]\nsteps = 10\nd_model = [16, 32]\n'
                        'n_heads = 1', tmp_path))
    assert len(s.jobs) == 4 and len({j.id for j in s.jobs}) == 4
    assert {j.settings["d_model"] for j in s.jobs} == {16, 32}
    assert all("/d_model" in j.label for j in s.jobs)


def test_unset_shape_fields_leave_mlp_ids_as_they_were(tmp_path):
    s = parse_spec(spec('task = "independence"\nregime = "vanilla"\nsteps = 10', tmp_path))
    payload = _train_payload(s.jobs[0].settings, "v")
    assert not {"n_layers", "n_heads", "d_model", "d_head", "d_mlp", "model"} & set(payload)
    t = parse_spec(spec('task = "induction"\nregime = "vanilla"\nsteps = 10', tmp_path))
    assert _train_payload(t.jobs[0].settings, "v")["model"]["n_layers"] == 2  # the task's model is in its id


@pytest.mark.parametrize("train,needle", [
    ('task = "independence"\nregime = "vanilla"\nsteps = 10\nd_model = 8', "train.d_model: task independence trains an MLP"),
    ('task = ["independence", "induction"]\nregime = "vanilla"\nsteps = 10\nwidth = 8',
     "train.width: task induction trains a transformer"),
    ('task = "induction"\nregime = "vanilla"\nsteps = 10\nn_layers = 0', "train.n_layers"),
])
def test_shape_field_for_the_wrong_kind_of_task_is_one_line(train, needle, tmp_path):
    with pytest.raises(SpecError) as e:
        parse_spec(spec(train, tmp_path))
    assert needle in str(e.value) and "\n" not in str(e.value)
