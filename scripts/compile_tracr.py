"""Compile tracr's RASP programs into circuitry.transformer/1 checkpoints: tasks/tracr_weights/*.pt.

    pip install tracr-pypi==1.0.0   # development only: pulls jax and dm-haiku
    python scripts/compile_tracr.py

Each file is a checkpoint circuitry's Transformer loads (workers.transformer) plus what the tracr
tasks (tasks.tracr) read: the token names of the input encoding, the residual stream's labels,
tracr's own outputs on every example input (`examples`, the test's expected values), and the
ground truth computed from the weights (`truth`: the components with nonzero weights and the
edges between them whose write and read weights overlap, in EAP-IG's names).

How tracr's model maps onto circuitry's (tracr/transformer/model.py and compiler/assemble.py):
no LayerNorm, ReLU MLPs, attention over every position (causal=False, no padding mask when no
pad token is given), softmax(q k / sqrt(key_size)); token_embed -> W_E, pos_embed -> W_pos
(its row 0, BOS's, is zero), query/key/value/linear split per head as TransformerLens does;
tracr's unembedding is the projection of the residual stream onto the output space's
directions, so W_U is that 0/1 matrix (categorical outputs: one column per output value in
the output encoder's order; numerical: the one output direction).
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch

from circuitry.workers.transformer import FORMAT, TransformerConfig, coordinates

OUT = Path(__file__).resolve().parent.parent / "tasks" / "tracr_weights"
BOS = "BOS"
MAX_SEQ_LEN = 5


def reverse_program():
    from tracr.rasp import rasp

    length = rasp.SelectorWidth(rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.TRUE)).named("length")
    opp_index = ((length - rasp.indices).named("opp_index") - 1).named("opp_index_minus_1")
    flip = rasp.Select(rasp.indices, opp_index, rasp.Comparison.EQ).named("flip")
    return rasp.Aggregate(flip, rasp.tokens).named("reverse")


def frac_prevs_program():
    from tracr.compiler import lib
    from tracr.rasp import rasp

    return lib.make_frac_prevs(rasp.tokens == "x").named("frac_prevs")


PROGRAMS = {
    # name: (program, vocabulary, example inputs (without BOS))
    "reverse": (reverse_program, [1, 2, 3], list(itertools.product([1, 2, 3], repeat=3))),
    "frac_prevs": (frac_prevs_program, ["w", "x", "y", "z"], list(itertools.product("wxyz", repeat=4))),
}


def _per_head(w: np.ndarray, n_heads: int) -> torch.Tensor:
    """[d_model, heads * d_head] -> [heads, d_model, d_head]."""
    d_model = w.shape[0]
    return torch.tensor(np.asarray(w)).reshape(d_model, n_heads, -1).permute(1, 0, 2).contiguous()


def unembedding(compiled, program) -> torch.Tensor:
    labels = compiled.residual_labels
    enc = compiled.output_encoder
    if hasattr(enc, "encoding_map"):  # categorical: one direction per output value
        values = sorted(enc.encoding_map, key=enc.encoding_map.get)
        names = [f"{program.label}:{v}" for v in values]
    else:  # numerical: one direction
        names = [program.label]
    W_U = torch.zeros(len(labels), len(names))
    for j, name in enumerate(names):
        W_U[labels.index(name), j] = 1.0
    return W_U


def to_checkpoint(name: str, compiled, program) -> tuple[dict, TransformerConfig]:
    p, mc = compiled.params, compiled.model_config
    W_E = torch.tensor(np.asarray(p["token_embed"]["embeddings"]))
    W_U = unembedding(compiled, program)
    cfg = TransformerConfig(n_layers=mc.num_layers, n_heads=mc.num_heads, d_model=W_E.shape[1], d_head=mc.key_size,
                            d_mlp=mc.mlp_hidden_size, n_ctx=p["pos_embed"]["embeddings"].shape[0],
                            d_vocab=W_E.shape[0], d_input=0, d_output=W_U.shape[1], activation="relu",
                            layer_norm=mc.layer_norm, positional=True, causal=mc.causal)
    t = lambda a: torch.tensor(np.asarray(a))  # noqa: E731
    w = {"embed.W_E": W_E, "pos_embed.W_pos": t(p["pos_embed"]["embeddings"])}
    h = cfg.n_heads
    for l in range(cfg.n_layers):
        pre = f"transformer/layer_{l}/"
        for k, part in (("Q", "query"), ("K", "key"), ("V", "value")):
            w[f"blocks.{l}.attn.W_{k}"] = _per_head(p[pre + f"attn/{part}"]["w"], h)
            w[f"blocks.{l}.attn.b_{k}"] = t(p[pre + f"attn/{part}"]["b"]).reshape(h, -1)
        w[f"blocks.{l}.attn.W_O"] = t(p[pre + "attn/linear"]["w"]).reshape(h, -1, cfg.d_model)
        w[f"blocks.{l}.attn.b_O"] = t(p[pre + "attn/linear"]["b"])
        w[f"blocks.{l}.mlp.W_in"] = t(p[pre + "mlp/linear_1"]["w"])
        w[f"blocks.{l}.mlp.b_in"] = t(p[pre + "mlp/linear_1"]["b"])
        w[f"blocks.{l}.mlp.W_out"] = t(p[pre + "mlp/linear_2"]["w"])
        w[f"blocks.{l}.mlp.b_out"] = t(p[pre + "mlp/linear_2"]["b"])
    w["unembed.W_U"] = W_U
    w["unembed.b_U"] = torch.zeros(cfg.d_output)
    w = {k: v.float().contiguous() for k, v in w.items()}
    from dataclasses import asdict

    ckpt = {"format": FORMAT, "task": f"tracr_{name}", "regime": "compiled", "seed": 0, "model": asdict(cfg),
            "weights": w, "coordinates": coordinates(cfg),
            "config": {"task": f"tracr_{name}", "regime": "compiled", "steps": 0, "seed": 0,
                       "compiler": "tracr-pypi 1.0.0", "max_seq_len": MAX_SEQ_LEN, "compiler_bos": BOS}}
    return ckpt, cfg


def ground_truth(w: dict, cfg: TransformerConfig, tol: float = 1e-6) -> tuple[list[str], list[list[str]]]:
    """Components with nonzero weights, and the edges sender -> receiver whose write and read
    weights compose (|W_write @ W_read| > tol), in EAP-IG's names."""
    writers = {"input": torch.cat([w["embed.W_E"], w["pos_embed.W_pos"]])}
    readers: dict[str, torch.Tensor] = {}
    layer_of = {"input": -1}
    for l in range(cfg.n_layers):
        a = f"blocks.{l}.attn."
        for h in range(cfg.n_heads):
            if w[a + "W_O"][h].abs().max() > tol:
                node = f"a{l}.h{h}"
                writers[node], layer_of[node] = w[a + "W_O"][h], l
                for x in "qkv":
                    readers[f"{node}<{x}>"] = w[a + f"W_{x.upper()}"][h]
        if w[f"blocks.{l}.mlp.W_out"].abs().max() > tol:
            node = f"m{l}"
            writers[node], layer_of[node] = w[f"blocks.{l}.mlp.W_out"], l + 0.5
            readers[node] = w[f"blocks.{l}.mlp.W_in"]
    readers["logits"] = w["unembed.W_U"]
    edges = []
    for r, read in readers.items():
        r_node = r.split("<")[0]
        r_layer = cfg.n_layers if r == "logits" else layer_of[r_node]
        for s, write in writers.items():
            if layer_of[s] < r_layer and (write @ read).abs().max() > tol:
                edges.append([s, r])
    nodes = sorted({s for s, _ in edges} | {r.split("<")[0] for _, r in edges})
    return nodes, edges


def compile_one(name: str) -> dict:
    from tracr.compiler import compiling

    make, vocab, examples = PROGRAMS[name]
    program = make()
    compiled = compiling.compile_rasp_to_model(program, vocab=set(vocab), max_seq_len=MAX_SEQ_LEN, compiler_bos=BOS)
    ckpt, cfg = to_checkpoint(name, compiled, program)
    enc = compiled.input_encoder.encoding_map
    tokens = torch.tensor([[enc[BOS]] + [enc[v] for v in ex] for ex in examples])
    expected = []
    for ex in examples:
        out = compiled.apply([BOS, *ex])
        # tracr's residual at the end, read through the unembedding: what circuitry's logits are
        final = torch.tensor(np.asarray(out.transformer_output))[0]
        expected.append(final @ ckpt["weights"]["unembed.W_U"])
    ckpt["examples"] = {"tokens": tokens, "expected": torch.stack(expected).float(),
                        "decoded": [list(map(str, compiled.apply([BOS, *ex]).decoded[1:])) for ex in examples]}
    ckpt["tokens"] = [str(k) for k in sorted(enc, key=enc.get)]
    ckpt["residual_labels"] = list(compiled.residual_labels)
    nodes, edges = ground_truth(ckpt["weights"], cfg)
    ckpt["truth"] = {"nodes": nodes, "edges": edges}
    return ckpt


def main() -> None:
    from circuitry.workers.transformer import save

    OUT.mkdir(parents=True, exist_ok=True)
    for name in PROGRAMS:
        ckpt = compile_one(name)
        save(ckpt, OUT / f"{name}.pt")
        print(f"{OUT / name}.pt: {ckpt['model']}, {len(ckpt['truth']['edges'])} ground-truth edges")


if __name__ == "__main__":
    main()
