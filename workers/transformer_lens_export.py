"""`--export transformer-lens`: a `circuitry.transformer/1` checkpoint as a file TransformerLens
(3.9, the last release with HookedTransformer; `pip install circuitry[lens]`) loads:

    d = torch.load("model_transformer_lens.pt", weights_only=True)
    model = HookedTransformer(HookedTransformerConfig(**d["cfg"]))
    model.load_state_dict(d["state_dict"], strict=False)   # TL's own buffers (masks) stay its own

circuitry's weights already carry TransformerLens's names and shapes (workers.transformer), so the
state dict is the checkpoint's weights as they are; the config maps circuitry's fields onto
HookedTransformerConfig's (LayerNorm -> normalization_type "LN", eps 1e-5 as here; d_mlp 0 ->
attn_only; no positional embedding -> a zero W_pos). TransformerLens has no linear input map, so a
model of real-valued tokens (incontext) cannot be exported. Nothing here imports transformer_lens.
"""
from __future__ import annotations

from pathlib import Path

import torch

from circuitry.workers.outputs import write_files


class ExportError(ValueError):
    pass


def transformer_lens_config(model_cfg: dict) -> dict:
    """HookedTransformerConfig keyword arguments for a checkpoint's `model` dict."""
    if not model_cfg.get("d_vocab"):
        raise ExportError("TransformerLens embeds token ids only; this model reads real-valued tokens (d_vocab 0)")
    act = {"gelu": "gelu", "relu": "relu", "gelu_new": "gelu_new"}[model_cfg.get("activation", "gelu")]
    cfg = {"n_layers": model_cfg["n_layers"], "d_model": model_cfg["d_model"], "n_ctx": model_cfg["n_ctx"],
           "d_head": model_cfg["d_head"], "n_heads": model_cfg["n_heads"], "d_vocab": model_cfg["d_vocab"],
           "d_vocab_out": model_cfg["d_output"], "act_fn": act,
           "normalization_type": "LN" if model_cfg.get("layer_norm") else None, "eps": 1e-5,
           "attn_only": not model_cfg["d_mlp"], "positional_embedding_type": "standard",
           "default_prepend_bos": False, "tokenizer_prepends_bos": False}
    if model_cfg["d_mlp"]:
        cfg["d_mlp"] = model_cfg["d_mlp"]
    return cfg


def transformer_lens_state(ckpt: dict) -> dict:
    """{"cfg": HookedTransformerConfig kwargs, "state_dict": TransformerLens keys -> float32}."""
    model_cfg = ckpt["model"]
    cfg = transformer_lens_config(model_cfg)
    state = {k: v.detach().float().clone() for k, v in ckpt["weights"].items()}
    if "pos_embed.W_pos" not in state:
        state["pos_embed.W_pos"] = torch.zeros(model_cfg["n_ctx"], model_cfg["d_model"])
    return {"format": "circuitry.transformer_lens/1", "cfg": cfg, "state_dict": state}


def export_transformer_lens(ckpt: dict, path) -> Path:
    import io

    buf = io.BytesIO()
    torch.save(transformer_lens_state(ckpt), buf)
    path = Path(path)
    write_files({path.name: buf.getvalue()}, path.parent)
    return path
