"""An MLP whose neurons have coordinates (BIMT's BioMLP), and its checkpoint format.

Layer l has n_l neurons at fixed positions; a neuron swap moves the neuron (its weights and bias),
never the positions. Weights are stored in position order, so `weights[l][j, i]` is the edge from
position i of layer l to position j of layer l+1, exactly as in `circuitry.mlp/1` (docs/formats.md).
"""
from __future__ import annotations

import io
import math
from dataclasses import MISSING, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from circuitry.workers.cost import CostTerm, add_cost_grad, total_cost

FORMAT = "circuitry.mlp/1"
L0 = 0.1  # distance between adjacent layers in the connection cost (BIMT's l0)


def line_coordinates(n: int) -> torch.Tensor:
    """BIMT's 1-D layout: n neurons at linspace(1/2n, 1-1/2n)."""
    return torch.linspace(1 / (2 * n), 1 - 1 / (2 * n), n)


def sheet_shape(n: int) -> tuple[int, int]:
    """The most nearly square (rows, cols) grid with rows * cols == n, rows <= cols (200 -> 10x20)."""
    rows = int(math.isqrt(n))
    while n % rows:
        rows -= 1
    return rows, n // rows


def sheet_coordinates(rows: int, cols: int) -> torch.Tensor:
    """A 2-D sheet in the unit square, row-major positions, cell centres as in the 1-D layout."""
    y = line_coordinates(rows) if rows > 1 else torch.tensor([0.5])
    x = line_coordinates(cols) if cols > 1 else torch.tensor([0.5])
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return torch.stack([xx.flatten(), yy.flatten()], 1)


def ring_coordinates(n: int) -> torch.Tensor:
    """BIMT's MNIST output ring: n neurons at angles (i + 1/2) 2pi/n on a circle of radius 1/4
    around the centre of the unit square."""
    theta = torch.linspace(1 / (2 * n), 1 - 1 / (2 * n), n, dtype=torch.float64) * 2 * math.pi
    return (0.5 + torch.stack([theta.cos(), theta.sin()], 1) / 4).float()


def folded_line_coordinates(n: int, fold: int) -> torch.Tensor:
    """BIMT's `in_fold`: n neurons in `fold` blocks that share n/fold positions (block f's neuron i
    sits where block 0's neuron i sits), e.g. token a's and token b's embedding dimension i."""
    return line_coordinates(n // fold).repeat(fold)


def wire_lengths(dst: torch.Tensor, src: torch.Tensor, metric: str = "euclidean") -> torch.Tensor:
    """|x_dst - x_src| for every (dst, src) pair: [n_dst, n_src]; on 2-D sheets Euclidean, or
    Manhattan (|dx| + |dy|, BIMT's MNIST notebook)."""
    if dst.dim() == 1:
        return (dst[:, None] - src[None, :]).abs()
    if metric == "manhattan":
        return (dst[:, None, :] - src[None, :, :]).abs().sum(-1)
    return torch.cdist(dst, src)


class CoordMLP(nn.Module):
    """SiLU MLP with neuron coordinates, optional token embedding, and input/output permutations."""

    def __init__(
        self,
        shape: list[int],
        coordinates: list[torch.Tensor] | None = None,
        l0: float = L0,
        vocab: int | None = None,
        embed_dim: int | None = None,
        distance: str = "euclidean",
        in_fold: int = 1,
    ):
        super().__init__()
        if shape[0] % in_fold:
            raise ValueError(f"in_fold {in_fold} does not divide the input layer's {shape[0]} neurons")
        self.shape = list(shape)
        self.l0 = float(l0)
        self.distance = distance
        self.in_fold = int(in_fold)  # swaps move the input layer's folds together (workers.swap)
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(shape[:-1], shape[1:]))
        coordinates = coordinates or [line_coordinates(n) for n in shape]
        for l, c in enumerate(coordinates):
            self.register_buffer(f"coord{l}", c.float().clone())
        for l in range(len(self.linears)):
            dist = wire_lengths(coordinates[l + 1].double(), coordinates[l].double(), distance)
            self.register_buffer(f"dist{l}", dist.float())
            # swaps compare costs in float64 (workers.swap); kept here so they need no conversion
            self.register_buffer(f"dist64_{l}", dist, persistent=False)
        self.register_buffer("in_perm", torch.arange(shape[0]))
        self.register_buffer("out_perm", torch.arange(shape[-1]))
        self.embedding = None
        if vocab is not None:
            self.embedding = nn.Parameter(torch.randn(vocab, embed_dim))

    @property
    def coordinates(self) -> list[torch.Tensor]:
        return [getattr(self, f"coord{l}") for l in range(len(self.shape))]

    @property
    def distances(self) -> list[torch.Tensor]:
        """Wire length of every edge of linear layer l, [n_{l+1}, n_l]."""
        return [getattr(self, f"dist{l}") for l in range(len(self.linears))]

    @property
    def distances64(self) -> list[torch.Tensor]:
        return [getattr(self, f"dist64_{l}") for l in range(len(self.linears))]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs as the layer-0 feature vector (concatenated embeddings for token tasks)."""
        if self.embedding is not None:
            return self.embedding[x].flatten(1)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)[:, self.in_perm]
        for l, linear in enumerate(self.linears):
            h = linear(h)
            if l < len(self.linears) - 1:
                h = F.silu(h)
        y = torch.empty_like(h)
        y[:, self.out_perm] = h
        return y

    def cost_terms(self, weight_factor: float = 1.0, penalize_bias: bool = True, norm: str = "sum",
                   last_layer_distance: bool = True) -> list[CostTerm]:
        """BIMT's connection cost (workers.cost): |w| * (weight_factor * wire length + l0) summed (or
        averaged, per tensor, as BIMT's modular addition and MNIST notebooks) over each layer, plus
        |b| * l0 where asked and |embedding| * l0. weight_factor 0 is plain L1 (times l0);
        last_layer_distance False drops the last layer's wire length."""
        if norm not in ("sum", "mean"):
            raise ValueError(f"cost norm {norm!r} is not sum or mean")
        scale = (lambda p: 1.0 / p.numel()) if norm == "mean" else (lambda p: 1.0)  # noqa: E731
        last = len(self.linears) - 1
        terms = []
        for l, (linear, dist) in enumerate(zip(self.linears, self.distances)):
            wf = weight_factor if (l < last or last_layer_distance) else 0.0
            terms.append(CostTerm(linear.weight, self.l0 + wf * dist if wf else self.l0, scale(linear.weight)))
            if penalize_bias:
                terms.append(CostTerm(linear.bias, self.l0, scale(linear.bias)))
        if self.embedding is not None:
            terms.append(CostTerm(self.embedding, self.l0, scale(self.embedding)))
        return terms

    def connection_cost(self, weight_factor: float = 1.0, penalize_bias: bool = True, norm: str = "sum",
                        last_layer_distance: bool = True) -> torch.Tensor:
        return total_cost(self.cost_terms(weight_factor, penalize_bias, norm, last_layer_distance))

    def add_connection_cost_grad(self, lam: float, weight_factor: float = 1.0, penalize_bias: bool = True,
                                 norm: str = "sum", last_layer_distance: bool = True) -> None:
        """Add the gradient of lam * connection_cost(...) to .grad, without building its graph."""
        add_cost_grad(self.cost_terms(weight_factor, penalize_bias, norm, last_layer_distance), lam)

    def to_checkpoint(self, task: str, regime: str, seed: int, config: dict) -> dict:
        ckpt = {
            "format": FORMAT,
            "task": task,
            "regime": regime,
            "seed": int(seed),
            "shape": list(self.shape),
            "activation": "silu",
            "weights": [l.weight.detach().cpu().clone() for l in self.linears],
            "biases": [l.bias.detach().cpu().clone() for l in self.linears],
            "in_perm": self.in_perm.cpu().clone(),
            "out_perm": self.out_perm.cpu().clone(),
            "coordinates": [c.cpu().clone() for c in self.coordinates],
            "l0": self.l0,
            "config": dict(config),
        }
        if self.embedding is not None:
            ckpt["embedding"] = self.embedding.detach().cpu().clone()
        return ckpt

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> "CoordMLP":
        emb = ckpt.get("embedding")
        config = ckpt.get("config") or {}
        model = cls(
            ckpt["shape"],
            coordinates=list(ckpt["coordinates"]),
            l0=ckpt["l0"],
            vocab=None if emb is None else emb.shape[0],
            embed_dim=None if emb is None else emb.shape[1],
            distance=config.get("distance", "euclidean"),  # checkpoints before it was recorded: Euclidean
            in_fold=config.get("in_fold", 1),
        )
        with torch.no_grad():
            for linear, w, b in zip(model.linears, ckpt["weights"], ckpt["biases"]):
                linear.weight.copy_(w)
                linear.bias.copy_(b)
            model.in_perm.copy_(ckpt["in_perm"])
            model.out_perm.copy_(ckpt["out_perm"])
            if emb is not None:
                model.embedding.copy_(emb)
        return model


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not `circuitry.mlp/1`."""


REQUIRED_KEYS = ("format", "task", "shape", "weights", "biases", "in_perm", "out_perm", "coordinates", "l0")
# every checkpoint format circuitry writes, and the keys it must have (workers.transformer: the transformer's)
TRANSFORMER_FORMAT = "circuitry.transformer/1"
FORMATS = {FORMAT: REQUIRED_KEYS,
           TRANSFORMER_FORMAT: ("format", "task", "model", "weights", "coordinates", "config")}
MAX_LAYER = 1 << 16  # neurons in one layer: a checkpoint claiming more is refused before anything is built
MAX_WEIGHTS = 1 << 28


def _tensor(x, shape: tuple | None, what: str, floating: bool = True) -> torch.Tensor:
    """`x` as a tensor of `shape` (None: any 2-D with rows `shape`...), finite where floating; or a
    CheckpointError naming `what` and what was expected."""
    if not isinstance(x, torch.Tensor):
        raise CheckpointError(f"{what} is a {type(x).__name__}, not a tensor")
    if floating and not x.dtype.is_floating_point:
        raise CheckpointError(f"{what} has dtype {x.dtype}, expected a floating-point tensor")
    if not floating and (x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool):
        raise CheckpointError(f"{what} has dtype {x.dtype}, expected an integer tensor")
    if shape is not None and tuple(x.shape) != tuple(shape):
        raise CheckpointError(f"{what} has shape {list(x.shape)}, expected {list(shape)}")
    if floating and not torch.isfinite(x).all():
        raise CheckpointError(f"{what} holds NaN or infinite values")
    return x


def _check_format(ckpt, path, formats: tuple[str, ...]) -> None:
    expected = " or ".join(repr(f) for f in formats)
    if not isinstance(ckpt, dict) or ckpt.get("format") not in formats:
        got = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: format is {got!r}, expected {expected}")
    missing = [k for k in FORMATS[ckpt["format"]] if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: {ckpt['format']} checkpoint lacks {', '.join(missing)}")


def check_checkpoint(ckpt, path) -> dict:
    """Every field of a checkpoint (either format; its format and keys already checked) against
    its shape: types, dtypes, sizes, finite values; CheckpointError (one line naming the file)
    on the first that is wrong, alike for both formats."""
    check = _check_transformer if ckpt["format"] == TRANSFORMER_FORMAT else _check_mlp
    try:
        check(ckpt)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}; expected a checkpoint `circuitry train` wrote") from None
    return ckpt


def _check_task(ckpt) -> None:
    from circuitry.tasks import TASKS

    if not isinstance(ckpt["task"], str) or ckpt["task"] not in TASKS:
        raise CheckpointError(f"task {str(ckpt['task'])[:100]!r} is not one of {', '.join(TASKS)}")


def _check_config(ckpt) -> None:
    if not isinstance(ckpt.get("config") or {}, dict):
        raise CheckpointError("config is not a table")


def _check_mlp(ckpt) -> None:
    """A `circuitry.mlp/1` checkpoint's fields against its `shape`."""
    shape = ckpt["shape"]
    if (not isinstance(shape, (list, tuple)) or len(shape) < 2 or len(shape) > 64
            or not all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_LAYER for n in shape)
            or sum(a * b for a, b in zip(shape[:-1], shape[1:])) > MAX_WEIGHTS):
        raise CheckpointError(f"shape {str(shape)[:100]} is not a list of 2-64 layer widths in 1..{MAX_LAYER}")
    layers = len(shape) - 1
    _check_task(ckpt)
    for key, n in (("weights", layers), ("biases", layers), ("coordinates", layers + 1)):
        if not isinstance(ckpt[key], (list, tuple)) or len(ckpt[key]) != n:
            raise CheckpointError(f"{key} is not a list of {n} tensors")
    for l in range(layers):
        _tensor(ckpt["weights"][l], (shape[l + 1], shape[l]), f"weights[{l}]")
        _tensor(ckpt["biases"][l], (shape[l + 1],), f"biases[{l}]")
    for l, c in enumerate(ckpt["coordinates"]):
        _tensor(c, None, f"coordinates[{l}]")
        if c.dim() not in (1, 2) or c.shape[0] != shape[l] or (c.dim() == 2 and not 1 <= c.shape[1] <= 3):
            raise CheckpointError(f"coordinates[{l}] has shape {list(c.shape)}, expected [{shape[l]}] or "
                                  f"[{shape[l]}, 2]")
    for key, n in (("in_perm", shape[0]), ("out_perm", shape[-1])):
        perm = _tensor(ckpt[key], (n,), key, floating=False)
        if not torch.equal(perm.sort().values, torch.arange(n, dtype=perm.dtype)):
            raise CheckpointError(f"{key} is not a permutation of 0..{n - 1}")
    if isinstance(ckpt["l0"], bool) or not isinstance(ckpt["l0"], (int, float)) or not math.isfinite(ckpt["l0"]):
        raise CheckpointError(f"l0 {ckpt['l0']!r} is not a finite number")
    emb = ckpt.get("embedding")
    if emb is not None:
        _tensor(emb, None, "embedding")
        if emb.dim() != 2 or emb.numel() == 0 or shape[0] % emb.shape[1]:
            raise CheckpointError(f"embedding has shape {list(emb.shape)}, which does not feed {shape[0]} inputs")
    _check_config(ckpt)


MAX_TRANSFORMER_LAYERS = 64


def _transformer_config(model):
    """The TransformerConfig a checkpoint's `model` table names, each field of its type and size."""
    from circuitry.tasks.sequence import TransformerConfig

    names = [f.name for f in fields(TransformerConfig)]
    if not isinstance(model, dict) or not set(model) <= set(names):
        raise CheckpointError(f"model is not a table of TransformerConfig fields ({', '.join(names)})")
    for f in fields(TransformerConfig):
        if f.name not in model:
            if f.default is MISSING:
                raise CheckpointError(f"model lacks {f.name}")
            continue
        kind, value = int if f.default is MISSING else type(f.default), model[f.name]
        if type(value) is not kind or (kind is int and not 0 <= value <= MAX_LAYER):
            expected = f"an integer in 0..{MAX_LAYER}" if kind is int else f"a {kind.__name__}"
            raise CheckpointError(f"model.{f.name} {str(value)[:100]!r} is not {expected}")
    try:
        cfg = TransformerConfig(**model)
    except ValueError as e:
        raise CheckpointError(f"model: {e}") from None
    if cfg.n_layers > MAX_TRANSFORMER_LAYERS:
        raise CheckpointError(f"model.n_layers {cfg.n_layers} is more than {MAX_TRANSFORMER_LAYERS}")
    return cfg


def transformer_shapes(c) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """The parameter shapes (state_dict names) of a workers.transformer.Transformer of config `c`,
    and its coordinates' shapes, written out from the config as that module's doc lists them (a
    test holds them to the model's own); here, without building one, so that this module and
    workers.transformer do not import each other."""
    d, h, e = c.d_model, c.n_heads, c.d_head
    ln = lambda name: {f"{name}.w": (d,), f"{name}.b": (d,)}  # noqa: E731
    weights = {"embed.W_E": (c.d_vocab, d)} if c.d_vocab else {"embed.W_in": (c.d_input, d), "embed.b_in": (d,)}
    if c.positional:
        weights["pos_embed.W_pos"] = (c.n_ctx, d)
    for l in range(c.n_layers):
        b = f"blocks.{l}"
        if c.layer_norm:
            weights.update(ln(f"{b}.ln1"))
        weights.update({f"{b}.attn.{w}": (h, d, e) for w in ("W_Q", "W_K", "W_V")})
        weights.update({f"{b}.attn.{w}": (h, e) for w in ("b_Q", "b_K", "b_V")})
        weights.update({f"{b}.attn.W_O": (h, e, d), f"{b}.attn.b_O": (d,)})
        if c.d_mlp:
            if c.layer_norm:
                weights.update(ln(f"{b}.ln2"))
            weights.update({f"{b}.mlp.W_in": (d, c.d_mlp), f"{b}.mlp.b_in": (c.d_mlp,),
                            f"{b}.mlp.W_out": (c.d_mlp, d), f"{b}.mlp.b_out": (d,)})
    if c.layer_norm:
        weights.update(ln("ln_final"))
    weights.update({"unembed.W_U": (d, c.d_output), "unembed.b_U": (c.d_output,)})
    coords = {"input": (c.d_in,), "resid": (d,), "attn": (h * e,), "mlp": (c.d_mlp,), "output": (c.d_output,)}
    return weights, coords


def _check_transformer(ckpt) -> None:
    """A `circuitry.transformer/1` checkpoint's fields against its `model` table: the weights a
    workers.transformer.Transformer of that config has (names and shapes), finite, and its
    neuron coordinates."""
    _check_task(ckpt)
    weights, coords = transformer_shapes(_transformer_config(ckpt["model"]))
    if sum(math.prod(shape) for shape in weights.values()) > MAX_WEIGHTS:
        raise CheckpointError(f"model has more than {MAX_WEIGHTS} weights")
    for key, want in (("weights", weights), ("coordinates", coords)):
        got = ckpt[key]
        if not isinstance(got, dict):
            raise CheckpointError(f"{key} is not a table of name -> tensor")
        missing, extra = [k for k in want if k not in got], [str(k)[:100] for k in got if k not in want]
        if missing:
            raise CheckpointError(f"{key} lack {', '.join(missing[:3])}, which the model table's config has")
        if extra:
            raise CheckpointError(f"{key} hold {', '.join(extra[:3])}, which the model table's config has not")
        for name, shape in want.items():
            _tensor(got[name], shape, f"{key}[{name}]")
    _check_config(ckpt)


def checkpoint_from_bytes(data: bytes, path, formats: tuple[str, ...] = tuple(FORMATS)) -> dict:
    """A checked checkpoint from model.pt's bytes (`weights_only=True`: no code runs): its format
    and keys, then every field (check_checkpoint)."""
    try:
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, or pickled code
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}); expected "
                              f"{' or '.join(repr(f) for f in formats)}") from None
    _check_format(ckpt, path, formats)
    return check_checkpoint(ckpt, path)


def load_checkpoint(path: str | Path, formats: tuple[str, ...] = tuple(FORMATS)) -> dict:
    """Load and check a circuitry checkpoint (`circuitry.mlp/1`, or `circuitry.transformer/1`) with
    `weights_only=True` (no code runs); `formats` narrows what is accepted."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file; train one with `circuitry train --out DIR`")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    return checkpoint_from_bytes(data, path, formats)


def checkpoint_bytes(ckpt: dict) -> bytes:
    """model.pt's bytes, exactly what save_checkpoint writes."""
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    return buf.getvalue()


def save_checkpoint(ckpt: dict, path: str | Path) -> None:
    """Write atomically: a reader never sees a half-written model.pt."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(checkpoint_bytes(ckpt))
    tmp.replace(path)
