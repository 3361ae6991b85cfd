"""Reference-cover renderer: deterministic synthetic covers whose look is driven by the item's primary genre.

`render_cover` draws one image in memory; `render_covers` writes a folder of PNGs (resumable);
`write_contact_sheet` writes an HTML index grouped by genre; `measure_genre_signal` checks that the covers
carry the genre (a colour-histogram probe).
"""

from icg.data.covers.contact_sheet import write_contact_sheet
from icg.data.covers.genre_probe import measure_genre_signal
from icg.data.covers.render import check_item_id, check_size, cover_filename, render_cover, render_covers
from icg.data.covers.styles import GENRE_STYLES, GenreStyle, style_for_genre

__all__ = [
    "GENRE_STYLES",
    "GenreStyle",
    "check_item_id",
    "check_size",
    "cover_filename",
    "measure_genre_signal",
    "render_cover",
    "render_covers",
    "style_for_genre",
    "write_contact_sheet",
]
