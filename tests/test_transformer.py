import math

import pytest
import torch
import torch.nn.functional as F

from circuitry.workers.model import CheckpointError
from circuitry.workers.transformer import Transformer, TransformerConfig, load, save


def small_config(**changes) -> TransformerConfig:
    base = dict(n_layers=2, n_heads=2, d_model=8, d_head=3, d_mlp=12, n_ctx=6, d_vocab=5, d_input=0, d_output=5)
    return TransformerConfig(**{**base, **changes})


def reference_forward(ckpt: dict, x: torch.Tensor) -> torch.Tensor:
    """The forward pass written out from the checkpoint dict alone, one head and position at a time."""
    m, w = ckpt["model"], ckpt["weights"]
    resid = w["embed.W_E"][x] if m["d_vocab"] else x @ w["embed.W_in"] + w["embed.b_in"]
    n = x.shape[1]
    if m["positional"]:
        resid = resid + w["pos_embed.W_pos"][:n]

    def ln(name, t):
        return F.layer_norm(t, (m["d_model"],), w[f"{name}.w"], w[f"{name}.b"], 1e-5) if m["layer_norm"] else t

    act = {"gelu": F.gelu, "relu": F.relu, "gelu_new": lambda t: F.gelu(t, approximate="tanh")}[m["activation"]]
    for l in range(m["n_layers"]):
        a = f"blocks.{l}.attn."
        h_in = ln(f"blocks.{l}.ln1", resid)
        out = torch.zeros_like(resid) + w[a + "b_O"]
        for h in range(m["n_heads"]):
            q = h_in @ w[a + "W_Q"][h] + w[a + "b_Q"][h]
            k = h_in @ w[a + "W_K"][h] + w[a + "b_K"][h]
            v = h_in @ w[a + "W_V"][h] + w[a + "b_V"][h]
            for i in range(n):  # query position i sees keys 0..i (all keys when not causal)
                seen = i + 1 if m["causal"] else n
                scores = (k[:, :seen] @ q[:, i, :, None]).squeeze(-1) / math.sqrt(m["d_head"])
                z = (scores.softmax(-1)[:, :, None] * v[:, :seen]).sum(1)
                out[:, i] += z @ w[a + "W_O"][h]
        resid = resid + out
        if m["d_mlp"]:
            p = f"blocks.{l}.mlp."
            hidden = act(ln(f"blocks.{l}.ln2", resid) @ w[p + "W_in"] + w[p + "b_in"])
            resid = resid + hidden @ w[p + "W_out"] + w[p + "b_out"]
    resid = ln("ln_final", resid)
    return resid @ w["unembed.W_U"] + w["unembed.b_U"]


CONFIGS = [
    small_config(),
    small_config(d_mlp=0, activation="relu"),
    small_config(layer_norm=True, positional=False),
    small_config(d_vocab=0, d_input=2, d_output=2, n_heads=1, d_head=8, positional=False, activation="gelu_new"),
]


@pytest.mark.parametrize("cfg", CONFIGS + [small_config(causal=False)],
                         ids=["tokens", "attn-only", "layernorm", "linear-input", "not-causal"])
def test_shapes_and_forward_match_the_written_out_reference(cfg):
    torch.manual_seed(0)
    model = Transformer(cfg).double()
    x = torch.randint(0, cfg.d_vocab, (3, 6)) if cfg.d_vocab else torch.randn(3, 6, cfg.d_input, dtype=torch.float64)
    y = model(x)
    assert y.shape == (3, 6, cfg.d_output)
    a = model.blocks[1].attn
    assert a.W_Q.shape == (cfg.n_heads, cfg.d_model, cfg.d_head) and a.W_O.shape == (cfg.n_heads, cfg.d_head, cfg.d_model)
    ckpt = model.to_checkpoint("t", "vanilla", 0, {})
    weights64 = {k: v.double() for k, v in model.state_dict().items()}
    assert torch.allclose(reference_forward({**ckpt, "weights": weights64}, x), y, atol=1e-12)


@pytest.mark.parametrize("cfg", CONFIGS, ids=["tokens", "attn-only", "layernorm", "linear-input"])
def test_attention_is_causal(cfg):
    torch.manual_seed(1)
    model = Transformer(cfg)
    if cfg.d_vocab:
        x = torch.randint(0, cfg.d_vocab, (4, 6))
        x2 = x.clone()
        x2[:, 3:] = (x2[:, 3:] + 1) % cfg.d_vocab
    else:
        x = torch.randn(4, 6, cfg.d_input)
        x2 = x.clone()
        x2[:, 3:] += 1.0
    y, y2 = model(x), model(x2)
    assert torch.equal(y[:, :3], y2[:, :3])  # earlier positions never see later tokens
    assert not torch.allclose(y[:, 3:], y2[:, 3:])


def test_per_head_inputs_equal_the_shared_input():
    torch.manual_seed(2)
    cfg = small_config()
    attn = Transformer(cfg).blocks[0].attn
    x = torch.randn(2, 5, cfg.d_model)
    per_head = x[:, :, None].expand(-1, -1, cfg.n_heads, -1)
    assert torch.allclose(attn(per_head, per_head, per_head), attn(x), atol=1e-6)


def test_coordinates_follow_bimt_lines():
    cfg = small_config()
    c = Transformer(cfg).coordinates()
    assert [len(c[k]) for k in ("input", "resid", "attn", "mlp", "output")] == [5, 8, 6, 12, 5]
    assert torch.allclose(c["resid"], torch.linspace(1 / 16, 1 - 1 / 16, 8))


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    torch.manual_seed(3)
    cfg = small_config(layer_norm=True)
    model = Transformer(cfg)
    save(model.to_checkpoint("induction", "bimt", 4, {"steps": 10}), tmp_path / "model.pt")
    raw = torch.load(tmp_path / "model.pt", weights_only=True)  # plain torch, no project code
    assert raw["format"] == "circuitry.transformer/1" and raw["model"]["d_model"] == 8
    assert raw["weights"]["blocks.1.attn.W_Q"].shape == (2, 8, 3)
    x = torch.randint(0, 5, (2, 6))
    with torch.no_grad():
        assert torch.allclose(reference_forward(raw, x), model(x), atol=1e-5)
        again = Transformer.from_checkpoint(load(tmp_path / "model.pt"))
        assert torch.equal(again(x), model(x))


def test_load_rejects_other_formats(tmp_path):
    torch.save({"format": "circuitry.mlp/1"}, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="expected 'circuitry.transformer/1'"):
        load(tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load(tmp_path / "absent.pt")


def test_config_rejects_ambiguous_inputs():
    with pytest.raises(ValueError, match="exactly one of d_vocab"):
        small_config(d_input=2)


@pytest.mark.parametrize("cfg", CONFIGS + [small_config(layer_norm=True, d_mlp=0)],
                         ids=["tokens", "attn-only", "layernorm", "linear-input", "layernorm-attn-only"])
def test_the_checkpoint_checker_expects_the_models_own_shapes(cfg):
    """workers.model.transformer_shapes (the checker's, written out from the config) is the model's
    state_dict and coordinates, name for name and shape for shape."""
    from circuitry.workers.model import transformer_shapes

    model = Transformer(cfg)
    weights, coords = transformer_shapes(cfg)
    assert weights == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert coords == {k: tuple(v.shape) for k, v in model.coordinates().items()}
