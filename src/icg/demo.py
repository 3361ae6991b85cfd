"""`icg demo`: the mini preset's covers for held-out items × contrasting real users, on one contact sheet.

Rows are items; columns are the reference cover, the rule-based cover (the explicit prompt → the plain
backbone, adapter off) and one cover per user. Every cover of a row starts from the same noise (seed + row),
so any difference between columns comes from the model, not from the seed.

Users: among the users of the pair split's *training* users with at least `min_positives` ratings ≥ 4, the one
whose positives lean most towards each genre (share of positives in the genre minus the genre's share of all
positives). Items: per genre of `ITEM_GENRES`, the held-out item (the mini CLIP's test split) with that genre
and the fewest others.

Each user cover is captioned with how the mini CLIP reads it (`cover_leans`): its zero-shot probability of
the column user's genre, and the change from the rule-based cover of the same item and noise — so a reader
sees whether a cover leans its user's way, not only that it differs.
"""

from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from PIL import Image, ImageDraw

from icg.atomic import atomic_path, write_text_atomic
from icg.data.covers.render import display_title, item_genres, render_cover
from icg.data.records import InteractionData
from icg.errors import ICGError

logger = logging.getLogger(__name__)

USER_GENRES = ("Children's", "Horror", "Romance")
ITEM_GENRES = ("Animation", "Horror", "Romance", "Sci-Fi")
CELL = 128  # contact-sheet cell side in pixels (covers are upscaled for viewing)


@dataclass(frozen=True)
class DemoUser:
    user_id: str
    genre: str
    lift: float  # share of the user's positives in `genre` minus the global share
    profile: str

    @property
    def label(self) -> str:
        return f"user {self.user_id}: {self.genre.lower()} {self.lift:+.0%}"


def contrasting_users(
    data: InteractionData, genres: tuple[str, ...] = USER_GENRES, min_positives: int = 20
) -> list[DemoUser]:
    """One distinct training-split user per genre, the one leaning most towards it."""
    from icg.data.pairs import PairConfig, build_pairs

    pairs, _ = build_pairs(data.interactions, PairConfig())
    train_users = set(pairs.loc[pairs["split"] == "train", "user_id"].astype(str))
    inter = data.interactions.assign(user_id=lambda f: f["user_id"].astype(str))
    positives = inter[(inter["signal"] >= 4) & inter["user_id"].isin(train_users)]
    item_genre = dict(
        zip(data.items["item_id"].astype(str), data.items["genres"].map(item_genres), strict=True)
    )
    has = {g: positives["item_id"].astype(str).map(lambda i, g=g: g in item_genre.get(i, ())) for g in genres}
    counts = positives.groupby("user_id").size()
    eligible = counts[counts >= min_positives].index
    profiles = dict(zip(data.users["user_id"].astype(str), data.users["profile"].astype(str), strict=True))
    chosen: list[DemoUser] = []
    for genre in genres:
        if genre not in {g for t in item_genre.values() for g in t}:
            raise ICGError(f"{data.name}: no item has genre '{genre}'")
        share = has[genre].groupby(positives["user_id"]).mean().loc[eligible]
        lift = (share - has[genre].mean()).sort_values(ascending=False, kind="stable")
        user = next(u for u in lift.index if u not in {c.user_id for c in chosen})
        chosen.append(DemoUser(str(user), genre, float(lift[user]), profiles.get(str(user), "")))
    return chosen


def held_out_items(items: pd.DataFrame, genres: tuple[str, ...] = ITEM_GENRES) -> pd.DataFrame:
    """Per genre, the test-split item carrying it with the fewest other genres (distinct, in order)."""
    from icg.data.splits import split_items

    split = split_items(len(items), 0, 0.1, 0.1)
    test = items.iloc[split.test]
    rows = []
    for genre in genres:
        match = [
            (len(item_genres(g)), i)
            for i, g in zip(test.index, test["genres"], strict=True)
            if genre in item_genres(g) and i not in rows
        ]
        if not match:
            raise ICGError(f"no held-out item with genre '{genre}'")
        rows.append(min(match)[1])  # the item most purely of that genre (fewest genres), then first
    return items.loc[rows]


def cover_leans(clip_dir: str, covers: list[Image.Image], genres: list[str]) -> torch.Tensor:
    """(N, G): each cover's zero-shot genre distribution under the mini CLIP over all `genres`."""
    import numpy as np
    from transformers import CLIPModel, CLIPProcessor

    from icg.evaluation.adapter_report import genre_probabilities

    clip, processor = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    pixels = torch.stack([torch.from_numpy(np.array(c.convert("RGB"))).permute(2, 0, 1) for c in covers])
    with torch.no_grad():
        return genre_probabilities(clip, processor, pixels.float() / 255, genres)


def lean_captions(clip_dir: str | None, rows: list, users: list[DemoUser], genres: list[str]) -> list:
    """Per row, a caption per column: '' for reference and rule-based, 'horror 21.0% (+4.0)' per user: the
    cover's P(user's genre) and its change (points) from the row's rule-based cover."""
    if clip_dir is None:
        return [[""] * (2 + len(users)) for _ in rows]
    covers = [c for _, _, row_covers in rows for c in row_covers]  # per row: rule-based, then users
    probs = cover_leans(clip_dir, covers, genres).view(len(rows), 1 + len(users), -1)
    out = []
    for r in range(len(rows)):
        captions = ["", ""]
        for u, user in enumerate(users):
            g = genres.index(user.genre)
            own, rule = float(probs[r, 1 + u, g]), float(probs[r, 0, g])
            change = round(100 * (own - rule), 1) + 0.0  # + 0.0: a change that rounds to zero prints "+0.0"
            captions.append(f"{user.genre.lower()} {100 * own:.1f}% ({change:+.1f})")
        out.append(captions)
    return out


def _reference(row: pd.Series, size: int) -> Image.Image:
    year = None if pd.isna(row["year"]) else int(row["year"])
    return render_cover(str(row["item_id"]), str(row["title"]), item_genres(row["genres"]), year, size)


def run_demo(data: InteractionData, out_dir: Path, preset: str = "mini", seed: int = 0) -> Path:
    """Generate the grid; write covers (PNG + JSON), contact_sheet.html and contact_sheet.png to `out_dir`."""
    from icg.generate import RunInfo, write_covers
    from icg.loading import load_cover_pipeline
    from icg.pipeline import CoverItem, CoverPipelineOutput, CoverUser
    from icg.presets import get_preset

    spec = get_preset(preset)
    users = contrasting_users(data)
    items = held_out_items(data.items)
    pipe = load_cover_pipeline(spec)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.default_size
    images, metadata, rows = [], [], []
    for n, (_, row) in enumerate(items.iterrows()):
        title = display_title(str(row["title"])) or str(row["title"])  # as the cover prints it
        item = CoverItem(title=title, image=_reference(row, size), item_id=str(row["item_id"]))
        common = {**spec.generation_config().to_kwargs(), "seed": seed + n}
        rule = pipe([item], None, adapter_scale=0.0, **common)  # explicit prompt → plain backbone
        personal = [pipe([item], [CoverUser(user_id=u.user_id)], **common) for u in users]
        for out in (rule, *personal):
            images += out.images
            metadata += out.metadata
        rows.append(
            (row, rule.metadata[0]["explicit_prompt"], [rule.images[0]] + [p.images[0] for p in personal])
        )
        logger.info("demo item %d/%d: %s", n + 1, len(items), row["title"])
    out_dir.mkdir(parents=True, exist_ok=True)
    info = RunInfo.from_spec(spec)  # the same record as `icg generate` writes
    write_covers(CoverPipelineOutput(images=images, metadata=metadata), out_dir / "covers", info)
    columns = ["reference cover", "rule-based (no adapter)"] + [u.label for u in users]
    genres = sorted({g for t in data.items["genres"].map(item_genres) for g in t})
    captions = lean_captions(spec.clip, rows, users, genres)
    sheet = contact_sheet_image(rows, columns, captions)
    with atomic_path(out_dir / "contact_sheet.png") as tmp:
        sheet.save(tmp, format="PNG")
    write_text_atomic(
        out_dir / "contact_sheet.html",
        _sheet_html(rows, columns, spec.adapter is None, spec.clip is not None),
    )
    leans = [
        {"item": str(row["title"]), **{u.user_id: c for u, c in zip(users, caps[2:], strict=True)}}
        for (row, _, _), caps in zip(rows, captions, strict=True)
    ]
    write_text_atomic(
        out_dir / "demo.json",
        json.dumps(
            {"preset": spec.name, "seed": seed, "users": [u.__dict__ for u in users], "cover_leans": leans},
            indent=2,
        ),
    )
    return out_dir / "contact_sheet.html"


def contact_sheet_image(
    rows: list[tuple[pd.Series, str, list[Image.Image]]],
    columns: list[str],
    captions: list[list[str]] | None = None,
) -> Image.Image:
    """One PNG: a header row of column names, then per item its reference + generated covers and its title;
    `captions` (per row, per column) go on a strip under each row's covers."""
    label_h, title_w = 30, 150
    cap_h = 14 if captions and any(any(c) for c in captions) else 0
    row_h = CELL + cap_h
    sheet = Image.new("RGB", (title_w + CELL * len(columns), label_h + row_h * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(columns):
        for k, text in enumerate(_wrap(name, 20)[:2]):
            draw.text((title_w + c * CELL + 4, 3 + 13 * k), text, fill="black")
    for r, (row, _, covers) in enumerate(rows):
        y = label_h + r * row_h
        for c, text in enumerate(captions[r] if cap_h else []):
            draw.text((title_w + c * CELL + 4, y + CELL + 1), text, fill="black")
        for k, text in enumerate(_wrap(display_title(str(row["title"])), 22)[:6]):
            draw.text((4, y + 6 + 13 * k), text, fill="black")
        reference = _reference(row, CELL)
        for c, cover in enumerate([reference, *covers]):
            sheet.paste(
                cover.convert("RGB").resize((CELL, CELL), Image.Resampling.NEAREST), (title_w + c * CELL, y)
            )
    return sheet


def _wrap(text: str, width: int) -> list[str]:
    """Greedy word wrap (Pillow's default font has no layout engine)."""
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = ""
        line = f"{line} {word}".strip()
    return [*lines, line] if line else lines


def _sheet_html(
    rows: list[tuple[pd.Series, str, list[Image.Image]]], columns: list[str], untrained: bool, leans: bool
) -> str:
    note = (
        "<p><b>The adapter is untrained</b> (issue: adapter training), so the user columns equal the "
        "rule-based column: same prompt, same noise, personal path off.</p>"
        if untrained
        else ""
    )
    prompts = "".join(
        f"<li><b>{html.escape(display_title(str(row['title'])))}</b>: {html.escape(prompt)}</li>"
        for row, prompt, _ in rows
    )
    return (
        "<!doctype html><meta charset=utf-8><title>ICG demo (mini preset)</title>"
        "<style>body{font-family:sans-serif;margin:2em}img{max-width:100%;image-rendering:pixelated}</style>"
        "<h1>ICG demo — mini preset</h1>"
        f"<p>Columns: {html.escape(' | '.join(columns))}. 64² covers shown at {CELL}².</p>{note}"
        + (
            "<p>Under each user cover: the mini CLIP's zero-shot probability (over all genres) that the "
            "cover shows the user's genre, and in brackets its change in points from the rule-based "
            "cover (same item, same noise). "
            "Positive = the cover leans the user's way.</p>"
            if leans
            else ""
        )
        + '<img src="contact_sheet.png" alt="contact sheet">'
        "<h2>Explicit prompts</h2><p>Written by the mini's tiny Qwen2.5-VL, which learned them from a "
        "<i>template teacher</i> (title, genres, palette words) — not from a pretrained MLLM.</p>"
        f"<ul>{prompts}</ul><p>Per-cover PNG + JSON sidecars: <a href=covers/index.html>covers/</a></p>"
    )
