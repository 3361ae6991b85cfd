"""Meta tokens: N learnable input embeddings appended after the image and title (paper §3.1).

How they enter Qwen2.5-VL without touching its code: N placeholder *text* token ids are appended to the
processor's `input_ids` (attention mask 1, `mm_token_type_ids` 0), so the model's own `get_rope_index`
gives them ordinary text M-RoPE positions (previous position + 1, + 2, … on all three axes) and its own
`masked_scatter` still puts the image features at the `<|image_pad|>` positions. The embeddings at the
placeholder positions are then overwritten with the learnable vectors, and `inputs_embeds` is passed
*together with* `input_ids` (the model only uses the ids for the image mask and the positions).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn

from icg.modules import has_values

IGNORE_INDEX = -100  # label value that cross-entropy skips


class MetaTokens(nn.Module):
    """N trainable vectors of the MLLM's hidden size, initialised like typical input embeddings.

    Kept in float32 whatever the backbone's dtype (they are the trained weights); cast at the splice.
    """

    def __init__(self, num_tokens: int, hidden_size: int) -> None:
        super().__init__()
        if num_tokens < 1:
            raise ValueError(f"num_meta_tokens must be >= 1, got {num_tokens}")
        self.weight = nn.Parameter(torch.zeros(num_tokens, hidden_size))  # (N, D)

    @property
    def num_tokens(self) -> int:
        return self.weight.shape[0]

    @torch.no_grad()
    def init_from_embeddings(self, table: torch.Tensor, seed: int = 0) -> MetaTokens:
        """Draw each vector from N(mean, std) of the embedding table per dimension (start in-distribution)."""
        table = table.detach().float().cpu()  # (V, D)
        mean, std = table.mean(0), table.std(0)  # (D,), (D,)
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn(self.weight.shape, generator=gen)  # (N, D)
        self.weight.copy_(mean + std * noise)
        return self

    def forward(self, batch_size: int) -> torch.Tensor:
        return self.weight.unsqueeze(0).expand(batch_size, -1, -1)  # (B, N, D)

    def fingerprint(self) -> str:
        """Short digest of the current values: cached contexts computed with other meta weights must miss."""
        if not has_values(self.weight):  # fake/meta weights (device checks) have no values to digest
            return "no-values"
        data = self.weight.detach().float().cpu().contiguous().numpy().tobytes()
        return hashlib.sha256(data).hexdigest()[:16]


@dataclass
class MetaSequence:
    """Processor outputs extended with meta placeholders (and optional answer text), left-padded."""

    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L)
    mm_token_type_ids: torch.Tensor  # (B, L)  0 text (meta included), 1 image, 2 video
    meta_index: torch.Tensor  # (B, N) positions of the meta tokens in each row
    labels: torch.Tensor | None  # (B, L) next-token targets, IGNORE_INDEX except on answer text


def append_meta_placeholders(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    mm_token_type_ids: torch.Tensor,
    num_meta: int,
    placeholder_id: int,
    pad_id: int,
    answers: list[list[int]] | None = None,
) -> MetaSequence:
    """Rebuild each row as [left pad][prompt][meta × N][answer] and left-pad again.

    The prompt comes from the processor (already left-padded, image tokens expanded). Answer tokens come after
    the meta tokens so the causal LM text can attend to them while C_ref (read at the meta positions) stays
    exactly what inference sees without an answer. Without answers every row ends in the meta tokens.
    """
    batch = input_ids.shape[0]
    if answers is not None and len(answers) != batch:
        raise ValueError(f"got {len(answers)} answers for {batch} prompts")
    device = input_ids.device  # the encoder builds this on the CPU (host-side layout), then moves it
    rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (ids, types, labels) per row
    for b in range(batch):
        keep = attention_mask[b].bool()
        prompt, types = input_ids[b][keep], mm_token_type_ids[b][keep]  # (P,), (P,)
        answer = torch.tensor(answers[b] if answers is not None else [], dtype=input_ids.dtype, device=device)
        meta = torch.full((num_meta,), placeholder_id, dtype=input_ids.dtype, device=device)
        ids = torch.cat([prompt, meta, answer])  # (P + N + A,)
        kinds = torch.cat(
            [types, torch.zeros(num_meta + len(answer), dtype=types.dtype, device=types.device)]
        )
        labels = torch.full_like(ids, IGNORE_INDEX)
        labels[len(prompt) + num_meta :] = answer
        rows.append((ids, kinds, labels))

    length = max(len(r[0]) for r in rows)
    out_ids = torch.full((batch, length), pad_id, dtype=input_ids.dtype, device=input_ids.device)
    out_mask = torch.zeros((batch, length), dtype=attention_mask.dtype, device=input_ids.device)
    out_types = torch.zeros((batch, length), dtype=mm_token_type_ids.dtype, device=input_ids.device)
    out_labels = torch.full((batch, length), IGNORE_INDEX, dtype=input_ids.dtype, device=input_ids.device)
    meta_index = torch.zeros((batch, num_meta), dtype=torch.long, device=input_ids.device)
    for b, (ids, kinds, labels) in enumerate(rows):
        start = length - len(ids)
        out_ids[b, start:], out_types[b, start:], out_labels[b, start:] = ids, kinds, labels
        out_mask[b, start:] = 1
        n_answer = len(answers[b]) if answers is not None else 0
        first_meta = length - n_answer - num_meta
        meta_index[b] = torch.arange(first_meta, first_meta + num_meta, device=input_ids.device)
    return MetaSequence(
        input_ids=out_ids,
        attention_mask=out_mask,
        mm_token_type_ids=out_types,
        meta_index=meta_index,
        labels=out_labels if answers is not None else None,
    )


def splice_meta(inputs_embeds: torch.Tensor, meta_index: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """Out-of-place overwrite of the placeholder embeddings by the meta vectors (autograd reaches `meta`)."""
    rows = torch.arange(inputs_embeds.shape[0], device=inputs_embeds.device).unsqueeze(1)  # (B, 1)
    return inputs_embeds.index_put((rows, meta_index), meta.to(inputs_embeds.dtype))  # (B, L, D)


def gather_meta(hidden: torch.Tensor, meta_index: torch.Tensor) -> torch.Tensor:
    """Hidden states at the meta positions: (B, L, D) → (B, N, D)."""
    rows = torch.arange(hidden.shape[0], device=hidden.device).unsqueeze(1)  # (B, 1)
    return hidden[rows, meta_index]  # (B, N, D)
