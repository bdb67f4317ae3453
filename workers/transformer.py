"""A decoder-only transformer whose neurons have coordinates (BIMT's BioTransformer), and its
checkpoint format `circuitry.transformer/1`.

Weights follow TransformerLens's names, shapes and einsum conventions, so a researcher who knows
`HookedTransformer` can read them (and `state_dict()` keys are TransformerLens's keys):

    model.embed.W_E            [d_vocab, d_model]     token inputs (config.d_vocab > 0), or
    model.embed.W_in, .b_in    [d_input, d_model], [d_model]   a linear map of real-valued tokens
                                                      (config.d_vocab == 0; BIMT's in-context model)
    model.pos_embed.W_pos      [n_ctx, d_model]       when config.positional
    model.blocks[l].ln1.w, .b  [d_model]              when config.layer_norm (pre-LN), also ln2
    model.blocks[l].attn.W_Q, W_K, W_V   [n_heads, d_model, d_head]
    model.blocks[l].attn.b_Q, b_K, b_V   [n_heads, d_head]
    model.blocks[l].attn.W_O   [n_heads, d_head, d_model]
    model.blocks[l].attn.b_O   [d_model]
    model.blocks[l].mlp.W_in   [d_model, d_mlp],  .b_in [d_mlp]   when config.d_mlp > 0
    model.blocks[l].mlp.W_out  [d_mlp, d_model],  .b_out [d_model]
    model.ln_final.w, .b       [d_model]              when config.layer_norm
    model.unembed.W_U          [d_model, d_output],  .b_U [d_output]

A block is `x = x + attn(ln1(x)); x = x + mlp(ln2(x))` (no LN: the identity), attention is causal
(unless config.causal is False, as tracr's compiled models) and scaled by 1/sqrt(d_head). The
config is tasks.sequence.TransformerConfig, re-exported here. `Attention.forward` also takes separate query, key and value inputs
([batch, pos, d_model], or [batch, pos, n_heads, d_model] per head) for path patching.

Neuron coordinates (BIMT, `incontext_3.4.ipynb`): every layer of neurons is a 1-D line in [0, 1],
n neurons at linspace(1/2n, 1 - 1/2n) (workers.model.line_coordinates). The layers, bottom up:

    input      d_vocab (token ids) or d_input neurons
    resid      d_model; every residual-stream layer shares one layout (a swap permutes them all)
    attn       n_heads * d_head per block, head h's neuron i at index h * d_head + i; q, k and v
               neuron i of a head share that coordinate (BIMT's `out_fold=3`)
    mlp        d_mlp per block
    output     d_output

`model.coordinates()` returns them. Swaps (workers.transformer_swap) move neurons, never positions.

Checkpoint `circuitry.transformer/1` (`save`, `load`; a plain dict, `torch.load(weights_only=True)`):

    format       "circuitry.transformer/1"
    task, regime str;  seed int
    model        dict: the TransformerConfig's fields
    weights      dict: parameter name (TransformerLens's state_dict key, e.g. "blocks.0.attn.W_Q")
                 -> float32 tensor
    coordinates  dict: "input", "resid", "attn", "mlp", "output" -> 1-D float32 tensor
    config       dict: the training settings (workers.train), as the MLP checkpoint's
"""
from __future__ import annotations

import math
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from circuitry.tasks.sequence import TransformerConfig  # noqa: F401 (re-exported: the model's config)
from circuitry.workers.model import TRANSFORMER_FORMAT as FORMAT
from circuitry.workers.model import line_coordinates, load_checkpoint, save_checkpoint

LN_EPS = 1e-5


def _uniform(*shape: int, fan_in: int) -> nn.Parameter:
    """nn.Linear's initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as BIMT's BioLinear."""
    bound = 1 / math.sqrt(fan_in)
    return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))


class LayerNorm(nn.Module):
    def __init__(self, d_model: int):
        super().__init__()
        self.w = nn.Parameter(torch.ones(d_model))
        self.b = nn.Parameter(torch.zeros(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.w.shape, self.w, self.b, LN_EPS)


class Embed(nn.Module):
    """Token embedding W_E, or BIMT's linear input map W_in, b_in for real-valued tokens."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        if cfg.d_vocab:
            self.W_E = nn.Parameter(torch.randn(cfg.d_vocab, cfg.d_model))  # nn.Embedding's N(0, 1)
        else:
            self.W_in = _uniform(cfg.d_input, cfg.d_model, fan_in=cfg.d_input)
            self.b_in = _uniform(cfg.d_model, fan_in=cfg.d_input)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "W_E"):
            return self.W_E[x]
        return x @ self.W_in + self.b_in


class PosEmbed(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.W_pos = nn.Parameter(torch.randn(cfg.n_ctx, cfg.d_model) / math.sqrt(cfg.d_model))

    def forward(self, n_pos: int) -> torch.Tensor:
        return self.W_pos[:n_pos]


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        h, d, e = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q, self.W_K, self.W_V = (_uniform(h, d, e, fan_in=d) for _ in range(3))
        self.b_Q, self.b_K, self.b_V = (_uniform(h, e, fan_in=d) for _ in range(3))
        self.W_O = _uniform(h, e, d, fan_in=h * e)
        self.b_O = _uniform(d, fan_in=h * e)
        self.scale = 1 / math.sqrt(e)
        self.causal = cfg.causal

    @staticmethod
    def _project(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """[batch, pos, d_model] (shared by heads) or [batch, pos, head, d_model] -> [batch, pos, head, d_head]."""
        if x.dim() == 3:
            return torch.einsum("bpd,hde->bphe", x, W) + b
        return torch.einsum("bphd,hde->bphe", x, W) + b

    def pattern(self, q_input: torch.Tensor, k_input: torch.Tensor) -> torch.Tensor:
        """Attention probabilities [batch, head, query_pos, key_pos] (causal unless cfg.causal is False)."""
        q = self._project(q_input, self.W_Q, self.b_Q)
        k = self._project(k_input, self.W_K, self.b_K)
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) * self.scale
        if not self.causal:
            return scores.softmax(-1)
        n = scores.shape[-1]
        future = torch.ones(n, n, dtype=torch.bool, device=scores.device).triu(1)
        return scores.masked_fill(future, float("-inf")).softmax(-1)

    def z(self, q_input: torch.Tensor, k_input: torch.Tensor | None = None,
          v_input: torch.Tensor | None = None) -> torch.Tensor:
        """Each head's mixed values [batch, pos, head, d_head] (TransformerLens's hook_z)."""
        k_input = q_input if k_input is None else k_input
        v_input = q_input if v_input is None else v_input
        v = self._project(v_input, self.W_V, self.b_V)
        return torch.einsum("bhqk,bkhe->bqhe", self.pattern(q_input, k_input), v)

    def forward(self, q_input: torch.Tensor, k_input: torch.Tensor | None = None,
                v_input: torch.Tensor | None = None) -> torch.Tensor:
        return torch.einsum("bqhe,hed->bqd", self.z(q_input, k_input, v_input), self.W_O) + self.b_O


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.W_in = _uniform(cfg.d_model, cfg.d_mlp, fan_in=cfg.d_model)
        self.b_in = _uniform(cfg.d_mlp, fan_in=cfg.d_model)
        self.W_out = _uniform(cfg.d_mlp, cfg.d_model, fan_in=cfg.d_mlp)
        self.b_out = _uniform(cfg.d_model, fan_in=cfg.d_mlp)
        self.act = {"gelu": F.gelu, "relu": F.relu, "gelu_new": partial(F.gelu, approximate="tanh")}[cfg.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x @ self.W_in + self.b_in) @ self.W_out + self.b_out


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.ln1 = LayerNorm(cfg.d_model) if cfg.layer_norm else None
        self.attn = Attention(cfg)
        self.ln2 = LayerNorm(cfg.d_model) if cfg.layer_norm and cfg.d_mlp else None
        self.mlp = MLP(cfg) if cfg.d_mlp else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x if self.ln1 is None else self.ln1(x))
        if self.mlp is not None:
            x = x + self.mlp(x if self.ln2 is None else self.ln2(x))
        return x


class Unembed(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.W_U = _uniform(cfg.d_model, cfg.d_output, fan_in=cfg.d_model)
        self.b_U = _uniform(cfg.d_output, fan_in=cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.W_U + self.b_U


def is_weight_matrix(name: str) -> bool:
    """A parameter (state_dict) name of a weight matrix: W_E / W_in, W_Q, W_K, W_V, W_O, the MLPs'
    W_in and W_out, W_U; not W_pos (no neuron sends it), biases or LayerNorms. What pruning and the
    `weights_above` counts count."""
    return name.rsplit(".", 1)[-1].startswith("W_") and not name.endswith("W_pos")


def coordinates(c: TransformerConfig) -> dict[str, torch.Tensor]:
    """Each neuron layer's 1-D positions in [0, 1] (the module docstring's layers)."""
    return {"input": line_coordinates(c.d_in), "resid": line_coordinates(c.d_model),
            "attn": line_coordinates(c.n_heads * c.d_head),
            "mlp": line_coordinates(c.d_mlp) if c.d_mlp else torch.zeros(0),
            "output": line_coordinates(c.d_output)}


class Transformer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = Embed(cfg)
        self.pos_embed = PosEmbed(cfg) if cfg.positional else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_final = LayerNorm(cfg.d_model) if cfg.layer_norm else None
        self.unembed = Unembed(cfg)

    def residual_input(self, x: torch.Tensor) -> torch.Tensor:
        """The residual stream before block 0: token (or linear) embedding + position embedding."""
        resid = self.embed(x)
        if self.pos_embed is not None:
            resid = resid + self.pos_embed(resid.shape[1])
        return resid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: long [batch, pos] token ids, or float [batch, pos, d_input]; -> [batch, pos, d_output]."""
        if x.shape[1] > self.cfg.n_ctx:
            raise ValueError(f"sequence length {x.shape[1]} exceeds n_ctx {self.cfg.n_ctx}")
        resid = self.residual_input(x)
        for block in self.blocks:
            resid = block(resid)
        if self.ln_final is not None:
            resid = self.ln_final(resid)
        return self.unembed(resid)

    def coordinates(self) -> dict[str, torch.Tensor]:
        return coordinates(self.cfg)

    def to_checkpoint(self, task: str, regime: str, seed: int, config: dict) -> dict:
        return {
            "format": FORMAT,
            "task": task,
            "regime": regime,
            "seed": int(seed),
            "model": asdict(self.cfg),
            "weights": {k: v.detach().cpu().float().clone() for k, v in self.state_dict().items()},
            "coordinates": self.coordinates(),
            "config": dict(config),
        }

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> "Transformer":
        model = cls(TransformerConfig(**ckpt["model"]))
        model.load_state_dict(ckpt["weights"])
        return model


def save(ckpt: dict, path: str | Path) -> None:
    """Write a checkpoint dict (Transformer.to_checkpoint) atomically."""
    save_checkpoint(ckpt, path)


def load(path: str | Path) -> dict:
    """Load and check a `circuitry.transformer/1` checkpoint with weights_only=True (no code runs);
    `Transformer.from_checkpoint(load(path))` is the model. (workers.model.load_checkpoint reads
    either format.)"""
    return load_checkpoint(path, (FORMAT,))
