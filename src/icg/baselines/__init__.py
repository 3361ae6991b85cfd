"""Baselines of paper §4.2, generated through the same CoverPipeline with ICG's adapter off (scale 0).

- Textual Inversion (Gal et al. 2022): a learned word per user, `pipe(items, [CoverUser(u)],
  adapter_scale=0.0, prompt_suffixes=[ti_suffix(u)])` inside `user_tokens(pipe, folder, [u])`.
- PMG (Shen et al. 2024): preference keywords from the user's history, `prompt_suffixes=[pmg_suffix(
  preference_keywords(data, u, train_item_ids(data)))]`; the mini writes them by a documented rule where the
  paper's PMG asks an LLM (`llm_preference_keywords` for the real preset).
- Rule-based: `pipe(items, None, adapter_scale=0.0)` (no module of its own).
"""

from icg.baselines.pmg import (
    llm_preference_keywords,
    pmg_suffix,
    preference_keywords,
    train_item_ids,
    user_history,
)
from icg.baselines.textual_inversion import (
    TextualInversionConfig,
    inversion_covers,
    load_user_tokens,
    ti_suffix,
    train_user_tokens,
    user_inversion_images,
    user_token,
    user_tokens,
)

__all__ = [
    "TextualInversionConfig",
    "inversion_covers",
    "llm_preference_keywords",
    "load_user_tokens",
    "pmg_suffix",
    "preference_keywords",
    "ti_suffix",
    "train_item_ids",
    "train_user_tokens",
    "user_history",
    "user_inversion_images",
    "user_token",
    "user_tokens",
]
