"""User encoder: a two-tower CTR model whose user tower gives U_pre, with a profile-only cold-start path."""

from icg.users.features import (
    FeatureVocab,
    UserFeatures,
    UserProfile,
    Vocab,
    age_bucket_labels,
    parse_profile_sentence,
)
from icg.users.taste_table import attach_taste_table, taste_table
from icg.users.train import train_user_encoder
from icg.users.two_tower import TwoTowerConfig, TwoTowerModel

__all__ = [
    "FeatureVocab",
    "TwoTowerConfig",
    "TwoTowerModel",
    "UserFeatures",
    "UserProfile",
    "Vocab",
    "age_bucket_labels",
    "attach_taste_table",
    "parse_profile_sentence",
    "taste_table",
    "train_user_encoder",
]
