"""ContextEncoder: the MLLM box of the paper (§3.1) — explicit prompt P_exp and meta-token context C_ref.

One Qwen2.5-VL model and its processor serve both outputs: P_exp is greedy generation from
(system instruction, reference cover, title); C_ref is the last hidden state at N learnable meta tokens
appended after the image and title (see `meta_tokens.py` for how they are spliced in).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration
from transformers.utils import cached_file

from icg.context.cache import ContextCache, context_key
from icg.context.meta_tokens import (
    IGNORE_INDEX,
    MetaSequence,
    MetaTokens,
    append_meta_placeholders,
    gather_meta,
    splice_meta,
)
from icg.errors import ICGError
from icg.modules import DeviceDtypeMixin, has_values

logger = logging.getLogger(__name__)

SYSTEM_INSTRUCTION = (
    "Please generate a drawing prompt that aligns with the semantics of the specified reference cover and "
    "content title."
)
CONFIG_NAME = "icg_context.json"
META_WEIGHTS_NAME = "meta_tokens.safetensors"

ImageInput = Image.Image | str | Path | bytes


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE asks for no network (same truthy values as huggingface_hub)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def load_rgb(image: ImageInput, index: int) -> Image.Image:
    """Decode one reference cover to RGB, naming the bad item instead of failing deep in the processor."""
    name = f"images[{index}]"
    try:
        if isinstance(image, str | Path):
            name = f"images[{index}] ({image})"
            image = Image.open(image)
        elif isinstance(image, bytes):
            image = Image.open(io.BytesIO(image))
        elif not isinstance(image, Image.Image):
            raise ICGError(f"{name} is a {type(image).__name__}, expected a PIL image, a path or bytes")
        image.load()
        return image.convert("RGB")
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:  # PIL raises these for corrupt data
        raise ICGError(f"{name} is not a readable image: {err}") from err


@dataclass
class ContextBatch:
    """Everything one forward pass needs; built by `ContextEncoder.prepare`."""

    seq: MetaSequence
    pixel_values: torch.Tensor  # (num_patches, C·T·p·p)
    image_grid_thw: torch.Tensor  # (B, 3)
    position_ids: torch.Tensor  # (3, B, L) M-RoPE positions from the model's own get_rope_index


@dataclass
class ContextOutput:
    context: torch.Tensor  # (B, N, D) C_ref
    lm_loss: torch.Tensor | None  # next-token loss on the answer text, when answers were given


def folder_fingerprint(source: str) -> str:
    """Name, size and modification time of every file directly in a local folder, hashed ("" for a hub id):
    cheap even for a 16 GB MLLM, and it changes whenever the folder's files are written again."""
    folder = Path(source)
    if not folder.is_dir():
        return ""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        stat = path.stat()
        h.update(f"{path.name}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


class ContextEncoder(DeviceDtypeMixin, nn.Module):
    """Qwen2.5-VL + processor + meta tokens. The backbone is frozen unless `train_backbone=True`."""

    def __init__(
        self,
        model: Qwen2_5_VLForConditionalGeneration,
        processor: Any,
        num_meta_tokens: int = 1,
        *,
        model_id: str = "",
        train_backbone: bool = False,
        seed: int = 0,
        cache: ContextCache | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.processor = processor
        self.model_id = model_id
        self.files_fingerprint = ""  # of a local backbone folder's files, set by from_pretrained
        self.cache = cache  # used by encode_items when no cache is passed; None computes every time
        self.train_backbone = train_backbone
        self.model.requires_grad_(train_backbone)
        if not train_backbone:
            self.model.eval()
        table = model.get_input_embeddings().weight  # (V, D)
        self.meta_tokens = MetaTokens(num_meta_tokens, table.shape[1]).init_from_embeddings(table, seed)
        self.meta_tokens.to(table.device)
        tok = processor.tokenizer
        self.placeholder_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if self.placeholder_id in (model.config.image_token_id, model.config.video_token_id, None):
            raise ICGError(
                f"tokenizer has no usable pad/eos id for meta placeholders ({self.placeholder_id})"
            )
        self._special_tokens = [t for t in tok.get_added_vocab() if t.startswith("<|") and t.endswith("|>")]

    def train(self, mode: bool = True) -> ContextEncoder:
        """Keep a frozen backbone in eval mode (no dropout) while the meta tokens train."""
        super().train(mode)
        if not self.train_backbone:
            self.model.eval()
        return self

    # -- loading / saving ------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | Path,
        num_meta_tokens: int | None = None,
        torch_dtype: torch.dtype | str | None = None,
        local_files_only: bool | None = None,
        *,
        train_backbone: bool = False,
        seed: int = 0,
    ) -> ContextEncoder:
        """Load an MLLM checkpoint (dir or hub id) or a folder written by `save_pretrained` (+ meta tokens).

        `num_meta_tokens=None` takes the saved count, else 1 for a bare MLLM; `local_files_only=None` follows
        HF_HUB_OFFLINE.
        """
        offline = hub_offline() if local_files_only is None else local_files_only
        source = str(path_or_hub_id)
        if Path(source).is_dir():
            source = str(Path(source).resolve())
        config_file = cached_file(
            source,
            CONFIG_NAME,
            local_files_only=offline,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
        saved: dict[str, Any] | None = json.loads(Path(config_file).read_text()) if config_file else None
        mllm = source
        if saved is not None:
            if num_meta_tokens is not None and num_meta_tokens != saved["num_meta_tokens"]:
                raise ICGError(
                    f"{source} holds {saved['num_meta_tokens']} trained meta tokens, not {num_meta_tokens}"
                )
            num_meta_tokens = saved["num_meta_tokens"]
            mllm = source if saved["mllm"] == "." else saved["mllm"]
        kwargs: dict[str, Any] = {"local_files_only": offline}
        if torch_dtype is not None:
            kwargs["dtype"] = torch_dtype
        processor = AutoProcessor.from_pretrained(mllm, local_files_only=offline)
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(mllm, **kwargs)
        num_meta_tokens = 1 if num_meta_tokens is None else num_meta_tokens
        encoder = cls(
            model, processor, num_meta_tokens, model_id=mllm, train_backbone=train_backbone, seed=seed
        )
        encoder.files_fingerprint = folder_fingerprint(mllm)
        if saved is not None:
            weights_file = cached_file(source, META_WEIGHTS_NAME, local_files_only=offline)
            weight = load_file(weights_file)["meta_tokens"]  # (N, D)
            if weight.shape != encoder.meta_tokens.weight.shape:
                raise ICGError(
                    f"{weights_file}: meta tokens of shape {tuple(weight.shape)} do not fit an MLLM of "
                    f"hidden size {encoder.hidden_size}"
                )
            with torch.no_grad():
                encoder.meta_tokens.weight.copy_(weight)
        logger.info(
            "context encoder %s: %d meta tokens, hidden %d", mllm, num_meta_tokens, encoder.hidden_size
        )
        return encoder

    def save_pretrained(self, out_dir: str | Path, save_backbone: bool = True) -> Path:
        """Write meta tokens (safetensors) + `icg_context.json`, and the MLLM beside them unless
        `save_backbone=False`: then the JSON refers to `model_id` (a frozen backbone need not be copied).
        """
        out_dir = Path(out_dir)
        if not save_backbone and (self.train_backbone or not self.model_id):
            raise ICGError("save_backbone=False needs a frozen backbone with a model_id to refer to")
        out_dir.mkdir(parents=True, exist_ok=True)
        if save_backbone:
            self.model.save_pretrained(out_dir)
            self.processor.save_pretrained(out_dir)
        weight = self.meta_tokens.weight.detach().float().cpu().contiguous()  # (N, D)
        save_file({"meta_tokens": weight}, str(out_dir / META_WEIGHTS_NAME))
        config = {
            "num_meta_tokens": self.num_meta_tokens,
            "hidden_size": self.hidden_size,
            "mllm": "." if save_backbone else self.model_id,
            "system_instruction": SYSTEM_INSTRUCTION,
        }
        (out_dir / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        return out_dir

    # -- properties ------------------------------------------------------------------------------------------
    @property
    def num_meta_tokens(self) -> int:
        return self.meta_tokens.num_tokens

    @property
    def hidden_size(self) -> int:
        return self.meta_tokens.weight.shape[1]

    @property
    def device(self) -> torch.device:
        return self.meta_tokens.weight.device

    # -- inputs ----------------------------------------------------------------------------------------------
    def check_inputs(self, images: list[ImageInput], titles: list[str]) -> list[Image.Image]:
        """Validate a batch and decode its images; every failure names the offending item."""
        if len(images) != len(titles):
            raise ICGError(f"batch length mismatch: {len(images)} images but {len(titles)} titles")
        if not titles:
            raise ICGError("empty batch: give at least one image and title")
        for i, title in enumerate(titles):
            if not isinstance(title, str) or not title.strip():
                raise ICGError(f"titles[{i}] is empty or not a string: {title!r}")
            # a title holding e.g. "<|image_pad|>" would be read as a control token and break the image mask
            special = [t for t in self._special_tokens if t in title]
            if special:
                raise ICGError(f"titles[{i}] contains the special token(s) {special}: {title!r}")
        return [load_rgb(image, i) for i, image in enumerate(images)]

    def conversation(self, title: str) -> list[dict[str, Any]]:
        """Chat messages for one item: T_sys as system turn, then the reference cover and the title."""
        return [
            {"role": "system", "content": SYSTEM_INSTRUCTION},
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": f"Title: {title.strip()}"}],
            },
        ]

    def processor_batch(self, images: list[Image.Image], titles: list[str]) -> dict[str, torch.Tensor]:
        """Chat template + processor, left-padded (the layout generation, meta splicing and the explicit
        prompt's training loss all use). On the CPU by design: the token layout is host-side data work
        (boolean masks, per-row loops); `to_device` moves the finished batch once."""
        texts = [
            self.processor.apply_chat_template(
                self.conversation(t), tokenize=False, add_generation_prompt=True
            )
            for t in titles
        ]
        batch = self.processor(
            text=texts, images=images, padding=True, padding_side="left", return_tensors="pt"
        )
        if "mm_token_type_ids" not in batch:  # older processors: derive the modality of each token
            ids = batch["input_ids"]
            cfg = self.model.config
            batch["mm_token_type_ids"] = (ids == cfg.image_token_id).long() + 2 * (
                ids == cfg.video_token_id
            ).long()
        return batch

    def to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Every tensor of a host-side batch on the model's device (floating ones in the model's dtype are
        left to the model, which casts pixel values itself)."""
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def prepare(
        self, images: list[ImageInput], titles: list[str], text_targets: list[str] | None = None
    ) -> ContextBatch:
        """Tokenize, append meta placeholders (and answer text), and compute M-RoPE positions."""
        pil = self.check_inputs(images, titles)
        answers = None
        if text_targets is not None:
            if len(text_targets) != len(titles):
                raise ICGError(
                    f"batch length mismatch: {len(text_targets)} text targets for {len(titles)} items"
                )
            tok = self.processor.tokenizer
            for i, target in enumerate(text_targets):
                if not isinstance(target, str) or not target.strip():
                    raise ICGError(f"text_targets[{i}] is empty or not a string: {target!r}")
            answers = [
                tok(t.strip() + tok.eos_token, add_special_tokens=False)["input_ids"] for t in text_targets
            ]
        batch = self.processor_batch(pil, titles)
        seq = append_meta_placeholders(
            batch["input_ids"],
            batch["attention_mask"],
            batch["mm_token_type_ids"],
            self.num_meta_tokens,
            self.placeholder_id,
            self.placeholder_id,
            answers,
        )
        position_ids, _ = self.model.model.get_rope_index(
            seq.input_ids,
            seq.mm_token_type_ids,
            image_grid_thw=batch["image_grid_thw"],
            attention_mask=seq.attention_mask,
        )  # (3, B, L), computed on the CPU like the layout it reads
        device = self.device
        seq = MetaSequence(
            **{k: None if v is None else v.to(device) for k, v in dataclasses.asdict(seq).items()}
        )
        return ContextBatch(
            seq, batch["pixel_values"].to(device), batch["image_grid_thw"].to(device), position_ids.to(device)
        )

    # -- outputs ---------------------------------------------------------------------------------------------
    def forward(
        self, images: list[ImageInput], titles: list[str], text_targets: list[str] | None = None
    ) -> ContextOutput:
        """C_ref (B, N, D), plus the next-token loss on `text_targets` (answer text after the meta tokens)."""
        cb = self.prepare(images, titles, text_targets)
        seq = cb.seq
        embeds = self.model.get_input_embeddings()(seq.input_ids)  # (B, L, D)
        embeds = splice_meta(embeds, seq.meta_index, self.meta_tokens(len(titles)))  # (B, L, D)
        out = self.model.model(
            input_ids=seq.input_ids,  # only for the <|image_pad|> mask; embeddings come from inputs_embeds
            inputs_embeds=embeds,
            attention_mask=seq.attention_mask,
            position_ids=cb.position_ids,
            pixel_values=cb.pixel_values,
            image_grid_thw=cb.image_grid_thw,
            mm_token_type_ids=seq.mm_token_type_ids,
            use_cache=False,
        )
        hidden = out.last_hidden_state  # (B, L, D), after the final norm
        context = gather_meta(hidden, seq.meta_index)  # (B, N, D)
        bad = (~torch.isfinite(context)).flatten(1).any(1) if has_values(context) else None  # (B,)
        if bad is not None and bad.any():
            raise ICGError(f"non-finite C_ref for items {bad.nonzero().flatten().tolist()} (titles {titles})")
        lm_loss = None
        if seq.labels is not None:
            targets = seq.labels[:, 1:]  # (B, L-1) token t+1 is predicted at position t
            keep = targets != IGNORE_INDEX
            logits = self.model.lm_head(hidden[:, :-1][keep]).float()  # (T, V)
            lm_loss = F.cross_entropy(logits, targets[keep])
        return ContextOutput(context=context, lm_loss=lm_loss)

    def context_embeddings(self, images: list[ImageInput], titles: list[str]) -> torch.Tensor:
        """C_ref (B, N, D); differentiable w.r.t. the meta tokens (wrap in no_grad for inference)."""
        return self(images, titles).context

    @torch.no_grad()
    def explicit_prompt(
        self,
        images: list[ImageInput],
        titles: list[str],
        max_new_tokens: int = 77,
        do_sample: bool = False,
    ) -> list[str]:
        """P_exp = MLLM(I_ref, T_title, T_sys): batched (left-padded) generation; only the new text."""
        pil = self.check_inputs(images, titles)
        batch = self.to_device(self.processor_batch(pil, titles))
        generated = self.model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            pad_token_id=self.processor.tokenizer.pad_token_id,
        )  # (B, L + new)
        new_tokens = generated[:, batch["input_ids"].shape[1] :]
        texts = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        return [t.strip() for t in texts]

    def cache_model_id(self, max_new_tokens: int) -> str:
        """The "model id" part of cache keys: backbone id, its files (a local folder written again in place,
        e.g. a rebuilt tiny preset, must not be answered from the old entries), current meta weights and
        generation length."""
        files = f"|files={self.files_fingerprint}" if self.files_fingerprint else ""
        return f"{self.model_id}{files}|meta={self.meta_tokens.fingerprint()}|max_new_tokens={max_new_tokens}"

    @torch.no_grad()
    def encode_items(
        self,
        images: list[ImageInput],
        titles: list[str],
        cache: ContextCache | None = None,
        max_new_tokens: int = 77,
    ) -> tuple[list[str], torch.Tensor]:
        """(P_exp per item, C_ref (B, N, D) in float32); with a cache (`cache` or `self.cache`), each distinct
        item is computed at most once. Meant for a frozen backbone: keys cover the meta weights, not backbone
        updates.
        """
        pil = self.check_inputs(images, titles)
        cache = cache if cache is not None else self.cache
        if cache is None:
            return self.explicit_prompt(pil, titles, max_new_tokens), self.context_embeddings(
                pil, titles
            ).float()
        model_id = self.cache_model_id(max_new_tokens)
        keys = [
            context_key(t.strip(), im, model_id, self.num_meta_tokens)
            for t, im in zip(titles, pil, strict=True)
        ]
        found = {k: e for k in dict.fromkeys(keys) if (e := cache.get(k)) is not None}
        todo = [keys.index(k) for k in dict.fromkeys(keys) if k not in found]  # first row of each missing key
        if todo:
            todo_images, todo_titles = [pil[i] for i in todo], [titles[i] for i in todo]
            prompts = self.explicit_prompt(todo_images, todo_titles, max_new_tokens)
            contexts = self.context_embeddings(todo_images, todo_titles)  # (M, N, D)
            for i, prompt, ctx in zip(todo, prompts, contexts, strict=True):
                found[keys[i]] = cache.put(keys[i], prompt, ctx)
        prompts = [found[k].prompt for k in keys]
        context = torch.stack([found[k].context for k in keys]).to(self.device)  # (B, N, D)
        return prompts, context
