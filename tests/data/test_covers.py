"""Reference-cover renderer: determinism, genre looks, files on disk, contact sheet, genre probe."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from icg.data.covers import (
    GENRE_STYLES,
    measure_genre_signal,
    render_cover,
    render_covers,
    style_for_genre,
    write_contact_sheet,
)
from icg.data.covers.motifs import PAINTERS
from icg.data.covers.render import display_title, fit_title, get_font

ML100K_GENRES = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western", "unknown",
)  # fmt: skip


def png_bytes(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float64)


def items_table(rows: list[tuple[str, str, tuple[str, ...], int | None]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": [r[0] for r in rows],
            "title": [r[1] for r in rows],
            "year": pd.array([r[3] for r in rows], dtype="Int64"),
            "genres": [r[2] for r in rows],
            "cover_path": None,
        }
    )


# ------------------------------------------------------------------------------------------ determinism
def test_same_arguments_give_identical_png_bytes() -> None:
    a = render_cover("42", "Heat", ["Action", "Crime"], 1995, size=96)
    b = render_cover("42", "Heat", ["Action", "Crime"], 1995, size=96)
    assert a.mode == "RGB" and a.size == (96, 96)
    assert png_bytes(a) == png_bytes(b)


def test_variant_and_item_change_the_image() -> None:
    base = pixels(render_cover("42", "Heat", ["Action"], size=64))
    other_variant = pixels(render_cover("42", "Heat", ["Action"], size=64, variant=1))
    other_item = pixels(render_cover("43", "Heat", ["Action"], size=64))
    assert np.abs(base - other_variant).mean() > 3.0
    assert np.abs(base - other_item).mean() > 3.0


def test_secondary_genre_and_title_vary_the_cover() -> None:
    plain = pixels(render_cover("7", "Heat", ["Drama"], size=64))
    assert np.abs(plain - pixels(render_cover("7", "Heat", ["Drama", "Horror"], size=64))).mean() > 1.0
    assert np.abs(plain - pixels(render_cover("7", "Casino", ["Drama"], size=64))).mean() > 1.0


@pytest.mark.parametrize("size", [63, 513, 0, -64, 128.0, True, "128"])
def test_size_outside_range_is_refused(size: object) -> None:
    with pytest.raises(ValueError, match="size"):
        render_cover("1", "Title", ["Drama"], size=size)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [64, 512])
def test_size_bounds_are_rendered_at_that_size(size: int) -> None:
    assert render_cover("1", "A Title", ["Drama"], 2000, size=size).size == (size, size)


def test_negative_variant_is_refused() -> None:
    with pytest.raises(ValueError, match="variant"):
        render_cover("1", "Title", ["Drama"], variant=-1)


# ----------------------------------------------------------------------------------------------- styles
def test_every_ml100k_genre_has_its_own_style_and_painter() -> None:
    names = {style_for_genre(g).name for g in ML100K_GENRES}
    assert names == set(ML100K_GENRES)
    assert all(style.motif in PAINTERS for style in GENRE_STYLES.values())
    assert style_for_genre("sci-fi") is GENRE_STYLES["Sci-Fi"]
    assert style_for_genre("Children") is GENRE_STYLES["Children's"]


def test_unlisted_genre_gets_a_stable_hashed_style() -> None:
    a, b = style_for_genre("Vlog"), style_for_genre("Gaming")
    assert a.name == "Vlog" and a.motif in PAINTERS
    assert a.background != b.background
    style_for_genre.cache_clear()
    assert style_for_genre("Vlog") == a
    assert render_cover("1", "A clip", ["Vlog"], size=64).size == (64, 64)


def test_genres_have_distinct_mean_palettes() -> None:
    """Average 4×4 layout of four covers per genre: every pair of genres differs clearly."""
    signature = {}
    for genre in ML100K_GENRES:
        covers = [render_cover(f"{genre}-{k}", f"Title {k}", [genre], None, 64) for k in range(4)]
        small = [pixels(c.resize((4, 4), Image.Resampling.BOX)) for c in covers]
        signature[genre] = np.mean(small, axis=0)  # (4, 4, 3)
    rms = {
        (a, b): float(np.sqrt(((signature[a] - signature[b]) ** 2).sum(-1).mean()))
        for a, b in itertools.combinations(ML100K_GENRES, 2)
    }
    closest = min(rms, key=rms.get)
    assert rms[closest] > 25.0, f"{closest} look alike: {rms[closest]:.1f}"
    horror, kids = signature["Horror"].reshape(-1, 3).mean(0), signature["Children's"].reshape(-1, 3).mean(0)
    assert horror.mean() < 90 < 180 < kids.mean()  # dark vs pastel
    assert horror[0] > 2 * horror[2]  # blood red


def test_empty_genres_and_title_still_render() -> None:
    img = render_cover("267", "", [], None, size=64)
    assert pixels(img).std() > 5.0
    assert png_bytes(img) == png_bytes(render_cover("267", "", ["unknown"], None, size=64))
    assert png_bytes(render_cover("3", "Scream", "Horror", size=64)) == png_bytes(
        render_cover("3", "Scream", ["Horror"], size=64)
    )


# ------------------------------------------------------------------------------------------------- type
def test_title_is_fitted_to_the_width() -> None:
    text = "Dr. Strangelove or: How I Learned to Stop Worrying and Love the Bomb Supercalifragilistic"
    font, lines = fit_title(text, "sans", 200.0, 90.0, 40, 12)
    assert len(lines) >= 2
    assert all(font.getlength(line) <= 200.0 for line in lines)
    assert get_font("sans", 12).getlength("x") > 0


def test_display_title_moves_trailing_article() -> None:
    assert display_title("Shawshank Redemption, The") == "The Shawshank Redemption"
    assert (
        display_title("Cité des enfants perdus, La (City of Lost Children, The)")
        == "La Cité des enfants perdus"
    )
    assert display_title("Seven (Se7en)") == "Seven"
    assert display_title("Heat") == "Heat"


# --------------------------------------------------------------------------------------------- on disk
def test_render_covers_writes_resumes_and_rerenders_broken(tmp_path: Path) -> None:
    items = items_table([(str(i), f"Movie {i}", ("Comedy", "Romance"), 1990 + i) for i in range(5)])
    out = tmp_path / "covers"
    first = render_covers(items, out, size=64, progress=False)
    assert list(first.columns[:4]) == ["item_id", "title", "primary_genre", "path"]
    assert first["rendered"].all() and (first["primary_genre"] == "Comedy").all()
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == [f"{i}.png" for i in range(5)]
    assert all(Image.open(f).size == (64, 64) for f in files)
    stamps = {f.name: (f.stat().st_ino, f.stat().st_mtime_ns) for f in files}

    (out / "3.png").write_bytes((out / "3.png").read_bytes()[:40])  # truncated by a crash elsewhere
    (out / "4.png").unlink()
    second = render_covers(items, out, size=64, progress=False)
    assert second.loc[second["rendered"], "item_id"].tolist() == ["3", "4"]
    for name in ("0.png", "1.png", "2.png"):
        f = out / name
        assert (f.stat().st_ino, f.stat().st_mtime_ns) == stamps[name]
    assert Image.open(out / "3.png").size == (64, 64)
    assert not list(out.glob(".*"))  # no temp files left

    bigger = render_covers(items, out, size=96, limit=2, progress=False)
    assert len(bigger) == 2 and bigger["rendered"].all()
    variants = render_covers(items, out, size=64, limit=1, variant=2, progress=False)
    assert Path(variants["path"][0]).name == "0.v2.png"


@pytest.mark.parametrize("bad_id", ["../evil", "a/b", "a\\b", "..", ".hidden", "", "x\x00y"])
def test_unsafe_item_ids_are_refused_before_writing(tmp_path: Path, bad_id: str) -> None:
    items = items_table([("1", "Fine", ("Drama",), None), (bad_id, "Evil", ("Horror",), None)])
    with pytest.raises(ValueError, match="file name"):
        render_covers(items, tmp_path / "out", size=64, progress=False)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    assert not (tmp_path / "evil.png").exists()


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    items = items_table([("1", "A", ("Drama",), None), ("1", "B", ("Drama",), None)])
    with pytest.raises(ValueError, match="duplicate"):
        render_covers(items, tmp_path, size=64, progress=False)


def test_contact_sheet_has_one_section_per_genre_and_escapes_titles(tmp_path: Path) -> None:
    rows = [("1", "<script>alert(1)</script>", ("Horror",), 1980), ("2", "Toy Story", ("Animation",), 1995),
            ("3", "Babe", ("Children's", "Comedy"), 1995), ("4", "Scream", ("Horror",), 1996)]  # fmt: skip
    rendered = render_covers(items_table(rows), tmp_path / "covers", size=64, progress=False)
    page = write_contact_sheet(rendered, tmp_path / "covers", title="ml-100k & <friends>")
    text = page.read_text(encoding="utf-8")
    assert page == tmp_path / "covers" / "index.html"
    assert text.count("<section") == 3
    assert "Horror <span>(2)</span>" in text and "Children&#x27;s <span>(1)</span>" in text
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "ml-100k &amp; &lt;friends&gt;" in text
    assert 'src="1.png"' in text and str(tmp_path) not in text


# ------------------------------------------------------------------------------------------ genre probe
def test_genre_probe_beats_chance_on_synthetic_items() -> None:
    rows = [(f"{g[:3]}{k}", f"{g} story {k}", (g, "Drama") if k % 3 == 0 else (g,), 1970 + k)
            for g in ("Horror", "Comedy", "Sci-Fi") for k in range(20)]  # fmt: skip
    rows.append(("rare", "Lonely Western", ("Western",), 1960))  # below min_count: dropped
    result = measure_genre_signal(items_table(rows), size=64, seed=0, test_fraction=0.25, min_count=10)
    assert result["n_classes"] == 3 and result["dropped_genres"] == {"Western": 1}
    assert result["n_train"] + result["n_test"] == 60
    assert result["uniform_chance"] == pytest.approx(1 / 3)
    assert result["accuracy"] >= result["chance"] + 0.4


def test_genre_probe_validates_input() -> None:
    rows = [(str(k), "t", ("Drama",), None) for k in range(12)]
    with pytest.raises(ValueError, match="2 genres"):
        measure_genre_signal(items_table(rows))
    with pytest.raises(ValueError, match="test_fraction"):
        measure_genre_signal(items_table(rows), test_fraction=1.5)


def test_pillow_bundled_font_is_a_working_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Machines without DejaVu still render (with Pillow's own font), deterministically."""
    import icg.data.covers.render as render_module

    args = ("9", "A Fallback Font Title", ["Western"], 1950, 96)
    found = render_cover(*args)
    get_font.cache_clear()
    with monkeypatch.context() as patch:
        patch.setattr(render_module, "font_file", lambda kind: None)
        a, b = render_cover(*args), render_cover(*args)
    get_font.cache_clear()
    assert png_bytes(a) == png_bytes(b)
    if render_module.font_file("serif") is not None:  # DejaVu on this machine: the fallback really was used
        assert np.abs(pixels(a) - pixels(found)).max() > 0
    assert png_bytes(render_cover(*args)) == png_bytes(found)
