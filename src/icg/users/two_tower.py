"""Two-tower CTR model whose user tower produces U_pre, the user embedding that conditions cover generation.

User tower: id + age bucket + gender + occupation embeddings → MLP → U_pre (B, D_u).
Item tower: id embedding + mean genre embedding + mean title-word embedding → MLP → (B, D_u).
Score: dot product, read as a click/like logit.

During training each user id is replaced by `<unk>` with probability `user_id_dropout` (and each profile field
with `profile_dropout`), so the profile-only path that serves cold-start users is trained on every batch.
The per-user profile table and the per-item genre/title tables are buffers, saved with the weights, so a known
user id alone is enough to encode that user.

Cold start from stated taste (issue 18): the model may also keep `user_taste`, each known user's signed genre
taste from their *training* ratings (`icg.users.taste_table`). A user with no known id whose profile states a
taste ("loves horror and sci-fi") gets, in the id slot of the user tower, a softmax-weighted mixture of the id
embeddings of the `taste_top_k` known users whose stored taste is nearest by cosine (softmax of cosine /
`taste_temperature`); age, gender and occupation stay as parsed. A known id ignores stated taste: its own id
embedding already says more. Encoders saved before the table existed load as before and ignore stated taste
with a logged warning (`attach_taste_table` adds a table to them).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from icg.atomic import atomic_path, write_text_atomic
from icg.errors import DataError
from icg.json_config import JsonConfig
from icg.modules import DeviceDtypeMixin
from icg.users.features import FeatureVocab, UserFeatures, UserProfile

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
VOCAB_NAME = "vocab.json"
TASTE_KEY = "user_taste"  # the taste table's tensor in model.safetensors (when the model has one)
EMBED_INIT_STD = 0.1

ProfileLike = UserProfile | str | None


@dataclass(frozen=True)
class TwoTowerConfig(JsonConfig):
    """Architecture as data: vocabulary sizes (from `FeatureVocab.sizes()`) and layer sizes."""

    json_sort_keys = True  # its files were always written with sorted keys

    n_users: int
    n_age_buckets: int
    n_genders: int
    n_occupations: int
    n_items: int
    n_genres: int
    n_title_words: int
    max_genres: int = 6
    max_title_tokens: int = 12
    user_id_dim: int = 32
    profile_dim: int = 8
    item_id_dim: int = 32
    genre_dim: int = 16
    title_dim: int = 16
    hidden_dim: int = 128
    output_dim: int = 64
    dropout: float = 0.1
    user_id_dropout: float = 0.15
    profile_dropout: float = 0.05
    taste_top_k: int = 16  # known users mixed for a stated taste
    taste_temperature: float = 0.1  # softmax temperature over their cosine similarity

    def __post_init__(self) -> None:
        if not (
            isinstance(self.taste_temperature, int | float) and 0.0 < self.taste_temperature < float("inf")
        ):
            raise ValueError(f"TwoTowerConfig.taste_temperature must be > 0, got {self.taste_temperature!r}")
        for f in dataclasses.fields(self):
            if f.name == "taste_temperature":
                continue
            value = getattr(self, f.name)
            if f.type == "int" and (not isinstance(value, int) or value < 1):
                raise ValueError(f"TwoTowerConfig.{f.name} must be a positive integer, got {value!r}")
            if f.type == "float" and not (isinstance(value, int | float) and 0.0 <= value < 1.0):
                raise ValueError(f"TwoTowerConfig.{f.name} must be in [0, 1), got {value!r}")

    @classmethod
    def for_vocab(cls, vocab: FeatureVocab, **dims: object) -> TwoTowerConfig:
        """A config whose vocabulary sizes match `vocab`; `dims` sets layer sizes and dropouts."""
        return cls(**vocab.sizes(), **dims)


def _mlp(in_dim: int, config: TwoTowerConfig) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, config.hidden_dim),
        nn.ReLU(),
        nn.Dropout(config.dropout),
        nn.Linear(config.hidden_dim, config.output_dim),
    )


class TwoTowerModel(DeviceDtypeMixin, nn.Module):
    """User and item towers; `vocab` maps string ids and profiles to indices for `encode_users`."""

    def __init__(self, config: TwoTowerConfig, vocab: FeatureVocab | None = None) -> None:
        super().__init__()
        if vocab is not None and vocab.sizes() != {k: getattr(config, k) for k in vocab.sizes()}:
            raise ValueError(f"vocabulary sizes {vocab.sizes()} do not match the config")
        self.config = config
        self.vocab = vocab
        c = config
        self.user_id = nn.Embedding(c.n_users, c.user_id_dim)
        self.age = nn.Embedding(c.n_age_buckets, c.profile_dim)
        self.gender = nn.Embedding(c.n_genders, c.profile_dim)
        self.occupation = nn.Embedding(c.n_occupations, c.profile_dim)
        self.user_mlp = _mlp(c.user_id_dim + 3 * c.profile_dim, c)
        self.item_id = nn.Embedding(c.n_items, c.item_id_dim)
        self.genres = nn.EmbeddingBag(c.n_genres + 1, c.genre_dim, mode="mean", padding_idx=c.n_genres)
        self.title = nn.EmbeddingBag(
            c.n_title_words + 1, c.title_dim, mode="mean", padding_idx=c.n_title_words
        )
        self.item_mlp = _mlp(c.item_id_dim + c.genre_dim + c.title_dim, c)
        for emb in (
            self.user_id,
            self.age,
            self.gender,
            self.occupation,
            self.item_id,
            self.genres,
            self.title,
        ):
            nn.init.normal_(emb.weight, std=EMBED_INIT_STD)
        with torch.no_grad():
            self.genres.weight[c.n_genres].zero_()
            self.title.weight[c.n_title_words].zero_()
        # initialisation: buffers built on the CPU, moved with the module by `.to(device)`
        self.register_buffer("user_profiles", torch.zeros(c.n_users, 3, dtype=torch.long))
        self.register_buffer(
            "item_genres", torch.full((c.n_items, c.max_genres), c.n_genres, dtype=torch.long)
        )
        self.register_buffer(
            "item_titles", torch.full((c.n_items, c.max_title_tokens), c.n_title_words, dtype=torch.long)
        )
        # not in state_dict (training checkpoints stay as they were); save_pretrained writes it when present
        self.register_buffer("user_taste", torch.zeros(c.n_users, c.n_genres), persistent=False)
        self.taste_users = 0  # known users with a stored taste, counted on the host by set_taste_table

    def set_tables(
        self, user_profiles: torch.Tensor, item_genres: torch.Tensor, item_titles: torch.Tensor
    ) -> None:
        """Install the per-user profile and per-item genre/title index tables (from `FeatureVocab`)."""
        for name, value in (
            ("user_profiles", user_profiles),
            ("item_genres", item_genres),
            ("item_titles", item_titles),
        ):
            buffer = getattr(self, name)
            if tuple(value.shape) != tuple(buffer.shape):
                raise ValueError(f"{name} must have shape {tuple(buffer.shape)}, got {tuple(value.shape)}")
            buffer.copy_(torch.as_tensor(value, dtype=torch.long))

    def set_taste_table(self, table: torch.Tensor) -> None:
        """Install each known user's signed genre taste (n_users, n_genres), from `icg.users.taste_table`."""
        if tuple(table.shape) != tuple(self.user_taste.shape):
            raise ValueError(
                f"user_taste must have shape {tuple(self.user_taste.shape)}, got {tuple(table.shape)}"
            )
        if not torch.isfinite(torch.as_tensor(table)).all():
            raise ValueError("user_taste must be finite")
        table = torch.as_tensor(table, dtype=self.user_taste.dtype)
        self.taste_users = int((table[1:].norm(dim=-1) > 0).sum())  # known users with a taste (<unk> is none)
        if self.taste_users == 0:
            raise ValueError("the taste table holds no user with a stated taste")
        self.user_taste.copy_(table)

    @property
    def has_taste_table(self) -> bool:
        """Whether a taste table was set (one always holds at least one user's taste)."""
        return self.taste_users > 0

    def taste_neighbours(self, taste: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Known users nearest to stated tastes (B, G) → (weights (B, k), user indices (B, k)).

        Cosine between the stated and each stored taste, top `taste_top_k` (users with no stored taste are
        never picked), softmax of cosine / `taste_temperature`; weights of a row sum to 1."""
        if not self.has_taste_table:
            raise ValueError("this user encoder has no taste table; attach one with attach_taste_table")
        table = self.user_taste.float()  # (N, G)
        norms = table.norm(dim=-1)  # (N,)
        valid = norms > 0
        valid[0] = False  # <unk> is nobody's taste
        stated = nn.functional.normalize(taste.float(), dim=-1)  # (B, G)
        cosine = stated @ (table / norms.clamp_min(1e-12)[:, None]).T  # (B, N)
        cosine = cosine.masked_fill(~valid, float("-inf"))
        top, index = cosine.topk(min(self.config.taste_top_k, self.taste_users), dim=-1)  # (B, k)
        return torch.softmax(top / self.config.taste_temperature, dim=-1), index

    def stated_id_embedding(self, taste: torch.Tensor) -> torch.Tensor:
        """The id slot for stated tastes (B, G): the neighbours' id embeddings, mixed → (B, user_id_dim)."""
        weights, index = self.taste_neighbours(taste)  # (B, k) each
        neighbours = self.user_id(index)  # (B, k, user_id_dim)
        return (weights.to(neighbours.dtype)[..., None] * neighbours).sum(dim=1)

    # --- towers ---------------------------------------------------------------------------------------
    def features_for_users(self, user_idx: torch.Tensor) -> UserFeatures:
        """Features of known users from the stored profile table; user_idx (B,)."""
        profile = self.user_profiles[user_idx]  # (B, 3)
        return UserFeatures(user_idx, profile[:, 0], profile[:, 1], profile[:, 2])

    def _drop(self, index: torch.Tensor, p: float) -> torch.Tensor:
        """Replace entries by <unk> (0) with probability p, in training only."""
        if not self.training or p == 0.0:
            return index
        keep = torch.rand(index.shape, device=index.device) >= p
        return index * keep

    def user_tower(self, features: UserFeatures) -> torch.Tensor:
        """U_pre for a batch of users → (B, D_u); `<unk>` ids with a stated taste get the neighbours' mix."""
        c = self.config
        user_emb = self.user_id(self._drop(features.user, c.user_id_dropout))  # (B, user_id_dim)
        if features.taste is not None and self.has_taste_table:
            stated = (features.user == 0) & (features.taste != 0).any(dim=-1)  # (B,)
            # every row's mix, kept where a taste is stated: no data-dependent shape, no host sync
            mixed = self.stated_id_embedding(features.taste)  # (B, user_id_dim)
            user_emb = torch.where(stated[:, None], mixed.to(user_emb.dtype), user_emb)
        parts = [
            user_emb,
            self.age(self._drop(features.age, c.profile_dropout)),  # (B, profile_dim)
            self.gender(self._drop(features.gender, c.profile_dropout)),
            self.occupation(self._drop(features.occupation, c.profile_dropout)),
        ]
        return self.user_mlp(torch.cat(parts, dim=-1))  # (B, D_u)

    def item_tower(self, item_idx: torch.Tensor) -> torch.Tensor:
        """Item embeddings for indices of any shape (...) → (..., D_u)."""
        flat = item_idx.reshape(-1)  # (N,)
        parts = [
            self.item_id(flat),  # (N, item_id_dim)
            self.genres(self.item_genres[flat]),  # (N, genre_dim)
            self.title(self.item_titles[flat]),  # (N, title_dim)
        ]
        out = self.item_mlp(torch.cat(parts, dim=-1))  # (N, D_u)
        return out.reshape(*item_idx.shape, -1)

    def forward(self, features: UserFeatures, item_idx: torch.Tensor) -> torch.Tensor:
        """CTR logits for users (B,) against items (B,) or (B, K) → (B,) or (B, K)."""
        users = self.user_tower(features)  # (B, D_u)
        items = self.item_tower(item_idx)  # (B, D_u) or (B, K, D_u)
        if items.dim() == 3:
            return torch.einsum("bd,bkd->bk", users, items)  # (B, K)
        return (users * items).sum(-1)  # (B,)

    # --- inference ------------------------------------------------------------------------------------
    def require_vocab(self) -> FeatureVocab:
        """The feature vocabulary, or a ValueError saying how to get a model that has one."""
        if self.vocab is None:
            raise ValueError("this TwoTowerModel has no vocabulary; build it with one or use from_pretrained")
        return self.vocab

    def _profile(self, profile: ProfileLike | dict) -> UserProfile | None:
        if profile is None or isinstance(profile, UserProfile):
            return profile
        if isinstance(profile, str):
            return self.require_vocab().parse_profile_sentence(profile)
        if isinstance(profile, dict):
            unknown = set(profile) - {"age", "gender", "occupation"}
            if unknown:
                raise ValueError(f"profile keys must be age/gender/occupation, got {sorted(unknown)}")
            return UserProfile(**profile)
        raise ValueError(
            f"a profile must be a UserProfile, a sentence, a dict or None, got {type(profile).__name__}"
        )

    def user_features(
        self,
        user_ids: Sequence[str | None] | None,
        profiles: Sequence[ProfileLike | dict] | None = None,
        *,
        strict: bool = True,
    ) -> UserFeatures:
        """Index features for string ids and/or profiles (see `encode_users` for the rules)."""
        vocab = self.require_vocab()
        if user_ids is None and profiles is None:
            raise ValueError("give user_ids, profiles or both")
        if isinstance(user_ids, str) or isinstance(profiles, str):
            raise ValueError("user_ids and profiles must be sequences (wrap a single value in a list)")
        n = len(user_ids) if user_ids is not None else len(profiles)
        ids = list(user_ids) if user_ids is not None else [None] * n
        profs = list(profiles) if profiles is not None else [None] * n
        if len(ids) != len(profs):
            raise ValueError(f"got {len(ids)} user ids but {len(profs)} profiles")
        rows: list[tuple[int, int, int, int, int]] = []  # id, age, gender, occupation, profile parsed
        texts: list[str] = []  # stated taste of cold-start rows ("" for the others)
        for user_id, raw_profile in zip(ids, profs, strict=True):
            profile = self._profile(raw_profile)
            idx = 0
            if user_id is not None:
                idx = vocab.users.index(str(user_id))
                if idx == 0:
                    if strict:
                        raise ValueError(
                            f"unknown user id '{user_id}' (pass strict=False to encode from the profile)"
                        )
                    logger.warning(
                        "unknown user id '%s': encoding from profile features only (cold start)", user_id
                    )
            texts.append(raw_profile if idx == 0 and isinstance(raw_profile, str) else "")
            parsed = profile is not None
            rows.append((idx, *(vocab.profile_indices(profile) if parsed else (0, 0, 0)), int(parsed)))
        # built on the host, completed on the model's device: a known user's profile row is read from the
        # stored table there (no host round trip per user)
        table = torch.tensor(rows, dtype=torch.long, device=self.user_profiles.device).reshape(-1, 5)
        profile = torch.where(table[:, 4:].bool(), table[:, 1:4], self.user_profiles[table[:, 0]])  # (B, 3)
        return UserFeatures(
            table[:, 0], profile[:, 0], profile[:, 1], profile[:, 2], taste=self._stated(texts)
        )

    def _stated(self, texts: list[str]) -> torch.Tensor | None:
        """Stated taste rows (B, G) when the model has a taste table; without one, warn and ignore it."""
        if not any(texts):
            return None
        taste = self.require_vocab().stated_taste(texts).to(self.user_taste.device)  # (B, G)
        if self.has_taste_table:
            return taste
        if bool((taste != 0).any()):
            logger.warning(
                "this user encoder was saved without a taste table, so the stated genre taste in a profile "
                "is ignored (only age, gender and occupation are used); add one with "
                "icg.users.attach_taste_table(model, data) and save it again"
            )
        return None

    @torch.no_grad()
    def encode_users(
        self,
        user_ids: Sequence[str | None] | None,
        profiles: Sequence[ProfileLike | dict] | None = None,
        *,
        strict: bool = True,
    ) -> torch.Tensor:
        """U_pre for users given by id and/or profile → (B, D_u), in eval mode (no dropout).

        - A known id uses its trained id embedding; its profile comes from `profiles[i]` when given, else from
          the stored training profile.
        - A None id is a cold-start user: profile features only (a profile may be a `UserProfile`, a dict or a
          sentence such as "a 24-year-old male technician"; None means nothing is known). A sentence that
          states a genre taste ("loves horror and sci-fi") fills the id slot with the taste neighbours'
          mixture when the model has a taste table (see the module doc); a known id ignores stated taste.
        - An id not in the vocabulary raises ValueError naming it when `strict`, else logs a warning and is
          encoded as cold start.
        """
        features = self.user_features(user_ids, profiles, strict=strict)
        was_training = self.training
        self.eval()
        try:
            return self.user_tower(features)  # (B, D_u)
        finally:
            self.train(was_training)

    # --- persistence ----------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write model.safetensors, config.json and vocab.json (each atomically) into `directory`."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        if self.has_taste_table:
            state[TASTE_KEY] = self.user_taste.detach().float().cpu().contiguous()
        with atomic_path(folder / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"format": "icg.users.two_tower/1"})
        write_text_atomic(folder / CONFIG_NAME, self.config.to_json())
        self.require_vocab().save(folder / VOCAB_NAME)
        return folder

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> TwoTowerModel:
        """Load what `save_pretrained` wrote; a missing, corrupt or mismatched file: DataError naming it."""
        folder = Path(directory)
        if not folder.is_dir():
            raise DataError(
                "folder not found", path=folder, expected=f"{CONFIG_NAME}, {WEIGHTS_NAME}, {VOCAB_NAME}"
            )
        config_file, weights_file = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        for file in (config_file, weights_file):
            if not file.is_file():
                raise DataError("file not found", path=file, expected="a folder written by save_pretrained")
        try:
            config = TwoTowerConfig.from_json(config_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError, TypeError) as exc:
            raise DataError(f"invalid two-tower config: {exc}", path=config_file) from exc
        vocab = FeatureVocab.load(folder / VOCAB_NAME)
        try:
            model = cls(config, vocab)
        except ValueError as exc:
            raise DataError(f"does not match {CONFIG_NAME}: {exc}", path=folder / VOCAB_NAME) from exc
        try:
            state = load_file(str(weights_file))
        except (SafetensorError, OSError, ValueError) as exc:
            raise DataError(f"cannot read weights: {exc}", path=weights_file) from exc
        taste = state.pop(TASTE_KEY, None)  # absent in encoders saved before issue 18's cold start
        expected = model.state_dict()
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or unexpected:
            raise DataError(
                f"weights do not match the config: missing {missing}, unexpected {unexpected}",
                path=weights_file,
            )
        wrong = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
        if wrong:
            shapes = {k: (tuple(state[k].shape), tuple(expected[k].shape)) for k in wrong}
            raise DataError(f"tensor shapes (file, config) differ: {shapes}", path=weights_file)
        model.load_state_dict(state)
        if taste is not None:
            try:
                model.set_taste_table(taste)
            except ValueError as exc:
                raise DataError(f"invalid taste table: {exc}", path=weights_file) from exc
        return model.to(device).eval()
