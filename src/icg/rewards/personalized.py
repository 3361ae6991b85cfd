"""Personalized preference reward model (paper §3.4.1): CLIP, FC heads per input, 2 fusion transformer layers.

    t = CLIP_txt(title)   c = CLIP_txt(caption)   i = CLIP_vis(image)   u = CLIP_txt(user profile)
    tokens = [FC_t(t) ⊕ FC_c(c), FC_i(i), FC_u(u)] + slot embeddings          # (B, n_tokens, d)
    p = FC_per(concat(Transformer(tokens)))                                      # (B,)

Trained with −log σ(p_m − p_n) on preference pairs (`icg.training.reward_model`). FC_t and FC_c each give d/2
features so their concatenation is one d-wide token, as in the paper; when only one of them is switched on it
gives all d. FC_per is a 2-layer MLP, so even without the fusion transformer inputs can interact (a linear
FC_per would make the user term cancel in p_m − p_n, the two items of a pair share the user).

Table 6's variants are switches of this one class (`PersonalizedRewardConfig`): an input switched off has no
head and no token; `fusion_layers=0` sends the head tokens straight to FC_per.

Freezing: each CLIP tower is split before its last k layers. The *stem* (embeddings and the first L−k layers)
is frozen and its output can be cached per item/user once (`stem`); the *top* (last k layers, final LayerNorm,
projection) trains with the new modules (`top`). k = 0 freezes CLIP entirely: the stem then ends in the
L2-normalised CLIP features and the top is the identity.

Beyond the paper (issue 18), two switches make the model read the user's taste rather than only item quality:
`taste_genres` (a genre vocabulary) adds the *stated taste* parsed from the profile sentence
(`icg.data.taste.parse_taste`: "likes horror and sci-fi; dislikes romance" → a signed (G,) vector), added to
the user token through its own linear head; `interaction` adds a bilinear user × item term

    p = FC_per(concat(Transformer(tokens))) + ⟨P·u, Q·image token⟩ / √d   (the text token without image)

so a user's taste can flip which cover wins without passing through the fusion MLP; u is the stated taste
when the model reads it (else the user token). Both read only the
profile sentence, so every caller that passes profiles (the adapter trainer) works unchanged.

Reward protocol: `score(images, texts, users)`; images (B, 3, H, W) in [0, 1], differentiable (CLIP resize and
normalisation are the shared `icg.rewards.base.preprocess`); texts: one string per image holding the title
and the caption as `reward_text(title, caption)` ("title\\ncaption") — a model that reads only one of them
also accepts that text alone; users: profile sentences (B strings). Loaded with `from_pretrained` the model is
frozen (reward use); `set_trainable()` opens the last k CLIP layers and the new modules for training.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn
from transformers import CLIPModel, CLIPProcessor
from transformers.masking_utils import create_causal_mask

from icg.atomic import atomic_path, write_text_atomic
from icg.data.taste import parse_taste
from icg.json_config import JsonConfig
from icg.rewards.base import (
    Reward,
    RewardCheckpointError,
    RewardLoss,
    Users,
    load_strict,
    preprocess,
    read_state_file,
)
from icg.rewards.clip_score import image_spec_from_processor
from icg.rewards.fast import TextFeatureCache, TowerGraphs, current_tape

logger = logging.getLogger(__name__)

INPUTS: tuple[str, ...] = ("title", "caption", "image", "user")
TEXT_SEP = "\n"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CLIP_DIR = "clip"
_FORMAT = "icg.rewards.personalized/1"


def reward_text(title: str, caption: str) -> str:
    """The protocol's text for this reward: title and caption in one string (neither may hold a newline)."""
    if TEXT_SEP in title or TEXT_SEP in caption:
        raise ValueError("title and caption must not contain newlines (the newline separates them)")
    return f"{title}{TEXT_SEP}{caption}"


@dataclass(frozen=True)
class PersonalizedRewardConfig(JsonConfig):
    """Which inputs the model reads, the fusion depth and widths, and how many CLIP layers train (k)."""

    use_title: bool = True
    use_caption: bool = True
    use_image: bool = True
    use_user: bool = True
    fusion_layers: int = 2  # 0 = "w/o transformers" (Table 6)
    hidden_size: int = 128  # d: width of every token
    num_heads: int = 4
    dropout: float = 0.1
    trainable_clip_layers: int = 1  # k: last k layers of each CLIP tower train; 0 freezes CLIP
    # beyond the paper (issue 18): stated taste parsed from the profile over these genres; () = off
    taste_genres: tuple[str, ...] = ()
    interaction: bool = False  # bilinear user × item term beside FC_per
    # False: the user token is the stated taste alone, the profile sentence is not read by CLIP (its CLIP
    # feature is unique per user, so the fusion can memorise the training users instead of learning taste)
    user_text: bool = True
    # False: the user enters only through the interaction term, p = FC_per(items) + ⟨P·taste, Q·item⟩: the
    # fusion cannot memorise (user, item) labels, the user's part is a low-rank taste match
    fuse_user: bool = True

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("the reward model needs at least one input (title, caption, image or user)")
        object.__setattr__(self, "taste_genres", tuple(str(g) for g in self.taste_genres))  # JSON lists
        if self.taste_genres and not self.use_user:
            raise ValueError("taste_genres reads the user's profile: it needs use_user=True")
        if not self.fuse_user and not (self.interaction and self.taste_genres):
            raise ValueError("fuse_user=False reads the user only through interaction with taste_genres")
        if not self.user_text and not (self.use_user and self.taste_genres):
            raise ValueError(
                "user_text=False reads the user through the stated taste: set use_user and taste_genres"
            )
        items = self.use_title or self.use_caption or self.use_image
        if self.interaction and not (self.use_user and items):
            raise ValueError("interaction needs the user and at least one item input (title, caption, image)")
        for name in ("fusion_layers", "trainable_clip_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.hidden_size < 2 or self.num_heads < 1 or self.hidden_size % (2 * self.num_heads):
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of 2 * num_heads ({self.num_heads})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def inputs(self) -> tuple[str, ...]:
        """The switched-on inputs, in INPUTS order."""
        return tuple(n for n in INPUTS if getattr(self, f"use_{n}"))

    @property
    def features(self) -> tuple[str, ...]:
        """What `preference` reads: the inputs (the user's CLIP feature only with user_text), plus "taste"
        (the parsed stated taste) when switched on."""
        clip = tuple(n for n in self.inputs if n != "user" or self.user_text)
        return clip + (("taste",) if self.taste_genres else ())


@dataclass
class Encoded:
    """A frozen CLIP stem's output for N inputs: what the trainable top needs, nothing more."""

    hidden: Tensor  # (N, D) CLIP features when k = 0, else (N, T, W) hidden states entering layer L−k
    attention_mask: Tensor | None = None  # (N, T) text towers with k > 0
    eos_index: Tensor | None = None  # (N,) text towers with k > 0: the pooled (EOS) position
    max_eos: int | None = None  # host copy of an upper bound of eos_index: the trim length, no device sync

    def select(self, index: Tensor) -> Encoded:
        """Rows `index` (N',) of every field."""
        pick = [None if t is None else t[index] for t in (self.attention_mask, self.eos_index)]
        return Encoded(self.hidden[index], *pick, self.max_eos)

    @staticmethod
    def cat(parts: Sequence[Encoded]) -> Encoded:
        fields = zip(*[(p.hidden, p.attention_mask, p.eos_index) for p in parts], strict=True)
        bounds = [p.max_eos for p in parts]
        bound = None if None in bounds else max(bounds)
        return Encoded(*[None if f[0] is None else torch.cat(f) for f in fields], bound)


class PersonalizedRewardModel(Reward):
    """The paper's personalized preference reward: p(title, caption, image, user) → preference score."""

    name = "personalized"
    default_loss = RewardLoss("linear", scale=1.0)  # −p: scores are BT logits, O(1)

    def __init__(self, config: PersonalizedRewardConfig, clip: CLIPModel, processor: CLIPProcessor) -> None:
        super().__init__()
        self.config = config
        self.clip = clip
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.spec = image_spec_from_processor(processor.image_processor)
        self.needs_texts = config.use_title or config.use_caption
        k = config.trainable_clip_layers
        for tower in (clip.vision_model, clip.text_model):
            if k > len(tower.encoder.layers):
                raise ValueError(
                    f"trainable_clip_layers={k} but a CLIP tower has {len(tower.encoder.layers)}"
                )
        positions = clip.config.text_config.max_position_embeddings
        self.max_length = min(int(getattr(self.tokenizer, "model_max_length", positions)), positions)
        self.text_cache = TextFeatureCache()  # on with RewardSpeed.cache_texts (frozen use only)
        self.graphs = TowerGraphs(  # used with RewardSpeed.cuda_graphs (frozen use only)
            lambda pixels: self.image_top(self._stem_pixels(pixels)),
            lambda: [self.clip.visual_projection.weight, *self.clip.vision_model.parameters()],
        )

        d, feat = config.hidden_size, clip.config.projection_dim
        n_text = int(config.use_title) + int(config.use_caption)
        clip_inputs = [n for n in config.inputs if n != "user" or config.user_text]
        widths = {n: (d // n_text if n in ("title", "caption") else d) for n in clip_inputs}
        self.heads = nn.ModuleDict(
            {n: nn.Sequential(nn.Linear(feat, w), nn.LayerNorm(w)) for n, w in widths.items()}
        )
        self.n_tokens = int(n_text > 0) + int(config.use_image) + int(config.use_user and config.fuse_user)
        # beyond the paper: stated taste into the user token, and a bilinear user × item term
        taste_token = config.taste_genres and config.fuse_user
        self.taste_head = nn.Linear(len(config.taste_genres), d, bias=False) if taste_token else None
        # the interaction's user side: the stated taste when read (a low-dimensional input that carries to
        # unseen users; the CLIP profile feature is unique per user and lets the term memorise training users)
        width = len(config.taste_genres) or d
        self.user_proj = nn.Linear(width, d, bias=False) if config.interaction else None
        self.item_proj = nn.Linear(d, d, bias=False) if config.interaction else None
        self.slots = nn.Parameter(0.02 * torch.randn(self.n_tokens, d))  # which token is which
        self.fusion: nn.TransformerEncoder | None = None
        if config.fusion_layers > 0:
            layer = nn.TransformerEncoderLayer(
                d,
                config.num_heads,
                2 * d,
                config.dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            self.fusion = nn.TransformerEncoder(layer, config.fusion_layers, enable_nested_tensor=False)
        self.fc_per = nn.Sequential(
            nn.Linear(self.n_tokens * d, d), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(d, 1)
        )
        self.freeze()

    # ------------------------------------------------------------------ trainability
    def freeze(self) -> PersonalizedRewardModel:
        """Everything frozen and in eval mode: the reward used for feedback training."""
        self.requires_grad_(False)
        return self.eval()

    def trainable_clip_modules(self) -> list[nn.Module]:
        """The last k layers of both CLIP towers, their final LayerNorms and projections (none for k = 0)."""
        k = self.config.trainable_clip_layers
        if k == 0:
            return []
        vis, txt = self.clip.vision_model, self.clip.text_model
        return [
            *vis.encoder.layers[-k:], vis.post_layernorm, self.clip.visual_projection,
            *txt.encoder.layers[-k:], txt.final_layer_norm, self.clip.text_projection,
        ]  # fmt: skip

    def set_trainable(self) -> list[nn.Parameter]:
        """Open the last k CLIP layers and the new modules for training; return those parameters."""
        self.requires_grad_(False)
        new = (self.heads, self.fusion, self.fc_per, self.taste_head, self.user_proj, self.item_proj)
        for module in (*self.trainable_clip_modules(), *new):
            if module is not None:
                module.requires_grad_(True)
        self.slots.requires_grad_(True)
        return [p for p in self.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> PersonalizedRewardModel:
        """Frozen CLIP parts stay in eval mode (no dropout drift in what the cache holds)."""
        super().train(mode)
        self.clip.eval()
        for module in self.trainable_clip_modules():
            module.train(mode)
        return self

    # ------------------------------------------------------------------ CLIP stem / top
    @property
    def _k(self) -> int:
        return self.config.trainable_clip_layers

    def image_stem(self, images: Tensor) -> Encoded:
        """(B, 3, H, W) in [0, 1] → frozen-stem output; differentiable w.r.t. the images."""
        return self._stem_pixels(self._pixels(images))

    def _pixels(self, images: Tensor) -> Tensor:
        return preprocess(images, self.spec).to(self.clip.visual_projection.weight.dtype)  # (B, 3, S, S)

    def _stem_pixels(self, pixels: Tensor) -> Encoded:
        vis = self.clip.vision_model
        h = vis.pre_layrnorm(vis.embeddings(pixels))  # (B, T, W)
        layers = vis.encoder.layers
        for layer in layers[: len(layers) - self._k]:
            h = layer(h, None)
        return Encoded(self._image_out(h) if self._k == 0 else h)

    def _image_out(self, h: Tensor) -> Tensor:
        pooled = self.clip.vision_model.post_layernorm(h[:, 0])  # (B, W) CLS
        return F.normalize(self.clip.visual_projection(pooled).float(), dim=-1)  # (B, D)

    def image_top(self, enc: Encoded) -> Tensor:
        """Stem output → (B, D) unit CLIP image features through the last k (trainable) layers."""
        if self._k == 0:
            return enc.hidden
        h = enc.hidden
        for layer in self.clip.vision_model.encoder.layers[-self._k :]:
            h = layer(h, None)
        return self._image_out(h)

    def text_stem(self, texts: Sequence[str]) -> Encoded:
        """B strings → frozen-stem output (max-length padding: features never depend on the batch)."""
        tm = self.clip.text_model
        enc = self.tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )  # on the CPU: the EOS positions are host-side data
        legacy = tm.eos_token_id == 2  # transformers' legacy rule: EOS is the largest id
        ids = enc.input_ids  # (B, T)
        eos = ids.argmax(dim=-1) if legacy else (ids == tm.eos_token_id).int().argmax(dim=-1)  # (B,)
        device = tm.embeddings.token_embedding.weight.device  # the CPU when the text tower is offloaded
        ids, mask = ids.to(device), enc.attention_mask.to(device)
        h = tm.embeddings(input_ids=ids)  # (B, T, W)
        layers = tm.encoder.layers
        out = Encoded(h, mask, eos.to(device), int(eos.max()))
        eos = out.eos_index
        if len(layers) > self._k:
            out.hidden = self._text_layers(out, layers[: len(layers) - self._k], trim=self._k == 0)
        return Encoded(self._text_out(out.hidden, eos)) if self._k == 0 else out

    def _text_layers(self, enc: Encoded, layers: Sequence[nn.Module], trim: bool = True) -> Tensor:
        """Text layers under CLIP's causal + padding mask; `trim` drops positions after the last EOS (causal:
        they never reach a pooled position), `trim=False` keeps (B, T) so stems of two batches concatenate."""
        longest = enc.max_eos if enc.max_eos is not None else int(enc.eos_index.max())
        length = longest + 1 if trim else enc.hidden.shape[1]
        h, mask = enc.hidden[:, :length], enc.attention_mask[:, :length]
        # The 4th parameter (no KV cache) is `past_key_values` in transformers <= 5.17 and `cache` in 5.25:
        # passed by position, this call works on both (tests/rewards/test_personalized.py).
        causal = create_causal_mask(self.clip.text_model.config, h, mask, None)
        for layer in layers:
            h = layer(h, causal, is_causal=True)
        return h

    def _text_out(self, h: Tensor, eos: Tensor) -> Tensor:
        h = self.clip.text_model.final_layer_norm(h)
        pooled = h[torch.arange(h.shape[0], device=h.device), eos]  # (B, W)
        return F.normalize(self.clip.text_projection(pooled).float(), dim=-1)  # (B, D)

    def text_top(self, enc: Encoded) -> Tensor:
        """Stem output → (B, D) unit CLIP text features through the last k (trainable) layers."""
        if self._k == 0:
            return enc.hidden
        h = self._text_layers(enc, self.clip.text_model.encoder.layers[-self._k :])
        return self._text_out(h, enc.eos_index)

    def text_features(self, texts: Sequence[str]) -> Tensor:
        """B strings → (B, D) unit CLIP text features (stem then top); cached per string when the cache is
        on and the text tower is frozen (a reward model in training bypasses the cache)."""
        text = self.clip.text_model
        params = [*text.parameters(), *self.clip.text_projection.parameters()]
        device = self.clip.visual_projection.weight.device
        encode = lambda t: self.text_top(self.text_stem(t)).to(device)  # noqa: E731
        return self.text_cache.lookup(texts, encode, params, training=self.training)

    def text_tensors(self) -> list[Tensor]:
        text = self.clip.text_model
        return [*text.parameters(), *text.buffers(), *self.clip.text_projection.parameters()]

    def towers(self) -> list[nn.Module]:
        return [self.clip]  # heads, fusion and FC_per stay fp32

    def tower_slots(self) -> list[tuple[nn.Module, str, nn.Module]]:
        return [(self, "clip", self.clip)]

    def image_features(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) → (B, D) unit CLIP image features; once per `WeightedRewards` call when the tower is
        shared (the user-contrast reward scores the same covers under B users)."""
        tape = current_tape()
        compute = lambda: self.graphs(self._pixels(images))  # noqa: E731
        if tape is not None and id(self.clip) in tape.shared_towers:
            return tape.shared(("personal-image", id(self.clip), id(images)), (self.clip, images), compute)
        return compute()

    def warm_text_cache(self, texts: Sequence[str], users: Sequence[str] | None = None) -> None:
        titles, captions = self.split_texts(texts) if texts else (None, None)
        people = users if "user" in self.config.features else None
        for strings in (titles, captions, people):
            if strings:
                self.text_features(strings)

    def stem(self, name: str, inputs: Tensor | Sequence[str]) -> Encoded:
        """Frozen part for one feature: images for "image", profiles for "taste", strings for the others."""
        if name == "taste":
            return Encoded(self.taste(inputs))  # type: ignore[arg-type]
        return self.image_stem(inputs) if name == "image" else self.text_stem(inputs)  # type: ignore[arg-type]

    def top(self, name: str, enc: Encoded) -> Tensor:
        if name == "taste":
            return enc.hidden
        return self.image_top(enc) if name == "image" else self.text_top(enc)

    def taste(self, profiles: Sequence[str]) -> Tensor:
        """Profile sentences → (B, G) stated taste over `config.taste_genres`, on the model's device."""
        if not self.config.taste_genres:
            raise ValueError("this reward model reads no stated taste (config.taste_genres is empty)")
        return parse_taste(profiles, self.config.taste_genres).to(self.slots.device)

    # ------------------------------------------------------------------ fusion
    def preference(self, features: Mapping[str, Tensor]) -> Tensor:
        """CLIP features per used input, each (B, D) → scores (B,). Inputs switched off are ignored."""
        missing = [n for n in self.config.features if n not in features]
        if missing:
            raise ValueError(
                f"features for {missing} are missing; this model reads {list(self.config.features)}"
            )
        f = {n: self.heads[n](features[n].to(self.slots.dtype)) for n in self.heads}
        if self.taste_head is not None:
            taste = self.taste_head(features["taste"].to(self.slots.dtype))  # (B, d)
            f["user"] = f["user"] + taste if "user" in f else taste
        tokens: list[Tensor] = []
        text = [f[n] for n in ("title", "caption") if n in f]
        if text:
            tokens.append(torch.cat(text, dim=-1))  # title ⊕ caption → one d-wide token
        tokens += [f[n] for n in ("image", "user") if n in f and (n != "user" or self.config.fuse_user)]
        x = torch.stack(tokens, dim=1) + self.slots  # (B, n_tokens, d)
        if self.fusion is not None:
            x = self.fusion(x)
        score = self.fc_per(x.flatten(1)).squeeze(-1)  # (B,)
        if self.user_proj is not None and self.item_proj is not None:
            # the cover when the model sees it (what an adapter can change), else the text token
            item = f["image"] if "image" in f else tokens[0]  # (B, d)
            side = features["taste"].to(item.dtype) if self.config.taste_genres else f["user"]
            user, item = self.user_proj(side), self.item_proj(item)  # (B, d) each
            score = score + (user * item).sum(-1) / self.config.hidden_size**0.5
        return score

    def split_texts(self, texts: Sequence[str] | None) -> tuple[list[str] | None, list[str] | None]:
        """Protocol texts → (titles, captions) for the text inputs this model reads."""
        if not self.needs_texts:
            return None, None
        assert texts is not None  # check_inputs refused None already
        both = self.config.use_title and self.config.use_caption
        titles, captions = [], []
        for text in texts:
            if TEXT_SEP in text:
                title, caption = text.split(TEXT_SEP, 1)
            elif both:
                raise ValueError(
                    "this reward reads title and caption: pass texts built by reward_text(title, caption)"
                )
            else:
                title = caption = text
            titles.append(title)
            captions.append(caption)
        return (titles if self.config.use_title else None), (captions if self.config.use_caption else None)

    def _score(self, images: Tensor, texts: list[str] | None, users: Users) -> Tensor:
        if self.config.use_user and (users is None or isinstance(users, Tensor)):
            raise ValueError("the personalized reward needs users as B profile sentences (strings)")
        titles, captions = self.split_texts(texts)
        raw = {"title": titles, "caption": captions, "image": images, "user": users}
        features = {
            n: self.image_features(images) if n == "image" else self.text_features(raw[n])
            for n in self.config.features
            if n != "taste"
        }  # type: ignore[arg-type]
        if self.config.taste_genres:
            features["taste"] = self.taste(users)  # type: ignore[arg-type]
        return self.preference(features)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path) -> Path:
        """config.json + model.safetensors (new modules) + clip/ (CLIPModel + CLIPProcessor, last k tuned)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.clip.save_pretrained(directory / CLIP_DIR)
        self.processor.save_pretrained(directory / CLIP_DIR)
        state = {
            k: v.detach().contiguous().cpu()
            for k, v in self.state_dict().items()
            if not k.startswith("clip.")
        }
        with atomic_path(directory / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"format": _FORMAT})
        meta = {"format": _FORMAT, "config": self.config.to_dict(), "clip": CLIP_DIR}
        write_text_atomic(directory / CONFIG_NAME, json.dumps(meta, indent=2))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> PersonalizedRewardModel:
        """A saved reward model, frozen, in eval mode; a bad folder is a RewardCheckpointError naming it."""
        directory = Path(directory)
        meta_file = directory / CONFIG_NAME
        if not meta_file.is_file():
            raise RewardCheckpointError(f"{meta_file}: personalized reward config not found")
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if meta.get("format") != _FORMAT:
            raise RewardCheckpointError(
                f"{meta_file}: not a personalized reward model ({meta.get('format')!r})"
            )
        clip, processor = load_clip(directory / meta.get("clip", CLIP_DIR))
        model = cls(PersonalizedRewardConfig.from_dict(meta["config"]), clip, processor)
        state = read_state_file(directory / WEIGHTS_NAME, "personalized reward")
        own = {f"clip.{k}": v for k, v in clip.state_dict().items()}
        load_strict(model, {**own, **state}, directory / WEIGHTS_NAME, "personalized reward")  # type: ignore[arg-type]
        return model.freeze()


def load_clip(path: str | Path) -> tuple[CLIPModel, CLIPProcessor]:
    """CLIPModel + CLIPProcessor from a local transformers folder (e.g. the mini CLIP of `icg train clip`)."""
    path = Path(path)
    if not path.is_dir():
        raise RewardCheckpointError(f"{path}: CLIP folder not found (expected a transformers CLIP folder)")
    try:
        clip = CLIPModel.from_pretrained(str(path), local_files_only=True)
        processor = CLIPProcessor.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # any loader failure names the folder
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RewardCheckpointError(f"{path}: cannot load a CLIPModel + CLIPProcessor: {first}") from exc
    return clip.eval(), processor


def load_personalized_reward(path: str | Path, **kwargs: object) -> PersonalizedRewardModel:
    """`load_reward("personalized", path)` entry point (register with icg.rewards.register_reward)."""
    if kwargs:
        raise ValueError(f"the personalized reward takes no loader options, got {sorted(kwargs)}")
    return PersonalizedRewardModel.from_pretrained(path)
