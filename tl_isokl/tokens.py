"""Tokenisation and padding done one explicit way for every path (extraction, rollouts, KL, probes).

Why not `model.to_tokens`: its BOS handling depends on how TransformerLens re-loaded the tokenizer, and a
left-padded tensor without a mask silently scores wrong (tl4 brief §3). Here BOS is prepended by us, padding side
is explicit, and every batch carries its attention mask and position ids.
"""

from __future__ import annotations

import torch


def bos_id(model) -> int | None:
    tok = model.tokenizer
    return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id


def eos_ids(model) -> set[int]:
    """Ids that end a rollout: the tokenizer's EOS plus any listed in the generation config."""
    ids = set()
    if model.tokenizer.eos_token_id is not None:
        ids.add(int(model.tokenizer.eos_token_id))
    gen = getattr(getattr(model, "original_model", None), "generation_config", None)
    extra = getattr(gen, "eos_token_id", None)
    if isinstance(extra, int):
        ids.add(extra)
    elif isinstance(extra, (list, tuple)):
        ids.update(int(i) for i in extra)
    return ids


def pad_id(model) -> int:
    tok = model.tokenizer
    if tok.pad_token_id is not None:
        return int(tok.pad_token_id)
    return int(tok.eos_token_id if tok.eos_token_id is not None else 0)


def encode(model, text: str, *, bos: bool = True) -> list[int]:
    """Token ids of `text`, with the BOS id prepended once (not twice when a chat template already wrote it)."""
    tok = model.tokenizer
    ids = list(tok(text, add_special_tokens=False)["input_ids"])
    b = bos_id(model)
    if bos and b is not None and getattr(model.cfg, "default_prepend_bos", True) and (not ids or ids[0] != b):
        ids = [b] + ids
    return ids


def decode(model, ids: list[int]) -> str:
    return model.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def pad_batch(seqs: list[list[int]], pad: int, side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T] ids and attention mask for ragged sequences, padded on `side`."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', not {side!r}")
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        if side == "left":
            ids[i, T - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, T - len(s):] = 1
        else:
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
    return ids, mask


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip padding (what HF generate computes): 0 at each row's first real token."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)
