"""Blind human rating of generated covers (paper Table 2 protocol): study folder, web app, store, summary."""

from icg.rating.store import Rating, RatingStore
from icg.rating.study import Study, StudyImage, load_study, make_study
from icg.rating.summary import MethodSummary, summarize, t_interval

__all__ = [
    "MethodSummary",
    "Rating",
    "RatingStore",
    "Study",
    "StudyImage",
    "load_study",
    "make_study",
    "summarize",
    "t_interval",
]
