"""Small dataset folders written into tmp_path, byte for byte in each source's real layout (no network)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

ML1M_USERS = "1::F::1::10::48067\n2::M::56::12::70072\n3::M::25::99::55117\n"
ML1M_MOVIES = (
    "1::Toy Story (1995)::Animation|Children's|Comedy\n"
    "2::Misérables, Les (1995)::Drama|Musical\n"
    "3::Untitled::Drama\n"
)
ML1M_RATINGS = "1::1::5::978300760\n1::2::3::978302109\n2::2::4::978301968\n3::3::1::978301000\n"


@pytest.fixture
def ml1m_dir(tmp_path: Path) -> Path:
    """ml-1m: '::'-separated, no header, ISO-8859-1 (the é of Misérables is the single byte 0xE9)."""
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "users.dat").write_bytes(ML1M_USERS.encode("latin-1"))
    (folder / "movies.dat").write_bytes(ML1M_MOVIES.encode("latin-1"))
    (folder / "ratings.dat").write_bytes(ML1M_RATINGS.encode("latin-1"))
    return folder


@pytest.fixture
def ml25m_dir(tmp_path: Path) -> Path:
    """ml-25m style CSVs: titles with commas are quoted, one movie has no genres."""
    folder = tmp_path / "ml-25m"
    folder.mkdir()
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n"
        '11,"American President, The (1995)",Comedy|Drama|Romance\n'
        '12,"Dracula: Dead and Loving It (1995)",Comedy|Horror\n'
        "13,Babylon 5,(no genres listed)\n",
        encoding="utf-8",
    )
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,11,3.5,1112486027\n1,12,4.0,1112484676\n7,13,0.5,1094785740\n",
        encoding="utf-8",
    )
    return folder


PIXEL_ITEM_INFO = (
    "item_id,view_number,comment_number,thumbup_number,share_number,coin_number,favorite_number,"
    "barrage_number,title_en,title,description,tag\n"
    'i1,1000,5,300,2,1,4,9,"Cats, dogs and ""friends""",猫和狗,"a video, with commas",music|dance\n'
    'i2,50,0,7,0,0,0,0,,"原标题, with comma",,"video games, esports"\n'
    "i3,,1,2,0,0,0,0,Solo,单人,plain,vlog\n"
    "i4,8,0,1,0,0,0,0,Spaced tags,空格,,cooking  travel\n"
)
PIXEL_INTERACTIONS = (
    "item_id,user_id,timestamp\ni1,u1,1640966405\ni2,u1,1640966500\ni1,u2,1640967000\ni3,u3,1640968000\n"
)


@pytest.fixture
def pixelrec_dir(tmp_path: Path) -> Path:
    """PixelRec: Pixel200K.csv, item_info.csv with quoted titles, covers for i1 and i3 only."""
    folder = tmp_path / "pixelrec"
    (folder / "images").mkdir(parents=True)
    (folder / "item_info.csv").write_text(PIXEL_ITEM_INFO, encoding="utf-8")
    (folder / "Pixel200K.csv").write_text(PIXEL_INTERACTIONS, encoding="utf-8")
    for item in ("i1", "i3"):
        (folder / "images" / f"{item}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a real jpeg")
    (folder / "images" / "i2.png").write_bytes(b"wrong extension: not i2's cover")
    return folder


@pytest.fixture
def write_log_table() -> Callable[[pd.DataFrame, Path], Path]:
    """Write a frame as Parquet or CSV according to the path's suffix, returning the path."""

    def write(frame: pd.DataFrame, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".parquet":
            frame.to_parquet(path, index=False)
        else:
            frame.to_csv(path, index=False)
        return path

    return write
