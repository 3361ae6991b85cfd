"""A rating study on disk: anonymized cover files plus a manifest that alone knows each cover's method.

Layout of a study folder::

    manifest.json    {"version": 1, "name", "seed", "images": [{id, file, method, item, user, caption}]}
    images/<id>.png  random hex ids; file names, URLs and PNG metadata never mention the method
    raters.json      {"version": 1, "raters": [{"id": "r01", "token": <32 hex>}, ...]}: one invite per rater

Blindness: every cover is re-encoded to one size (`size`², centre-cropped) and one format (PNG, no metadata),
and the covers of all methods are shuffled together *before* any file is written, so neither pixel size,
file order, modification time nor id order tells the methods apart.

Raters: only the holder of an invite token can rate, and a token gives one vote per cover (a re-vote
replaces it), so one person cannot pose as many raters. Tokens are secrets: `raters.json` is never served.

A `manifest.csv` with the columns ``id,file,method,item,user,caption`` is accepted instead of `manifest.json`
for studies assembled by hand. The manifest is read on the server only; the browser sees ids and nothing else.
"""

from __future__ import annotations

import csv
import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from PIL import Image, ImageOps

from icg.atomic import atomic_path, write_text_atomic
from icg.errors import DataError

MANIFEST_VERSION = 1
IMAGE_ID_PATTERN = r"^[0-9a-f]{8,64}$"
_ID_RE = re.compile(IMAGE_ID_PATTERN)
_CSV_COLUMNS = ("id", "file", "method", "item", "user", "caption")
TOKEN_PATTERN = r"^[0-9a-f]{32}$"
_TOKEN_RE = re.compile(TOKEN_PATTERN)
RATERS_FILE = "raters.json"
DEFAULT_RATERS = 10
DEFAULT_SIZE = 256


@dataclass(frozen=True)
class StudyImage:
    """One cover to rate. `file` is relative to the study folder."""

    id: str
    file: str
    method: str
    item: str = ""
    user: str = ""
    caption: str = ""  # shown to the rater (e.g. the movie title); must not depend on the method


@dataclass(frozen=True)
class Study:
    """A loaded study: its folder, a seed for per-rater shuffling and the images by id."""

    root: Path
    name: str
    seed: int
    images: tuple[StudyImage, ...]
    invites: Mapping[str, str] = field(default_factory=dict)  # invite token → rater id

    def rater_of(self, token: str) -> str | None:
        """The rater id an invite token belongs to, or None for an unknown token."""
        return self.invites.get(token) if isinstance(token, str) else None

    @cached_property
    def by_id(self) -> dict[str, StudyImage]:
        return {image.id: image for image in self.images}

    @property
    def methods(self) -> list[str]:
        return sorted({image.method for image in self.images})

    def path_of(self, image_id: str) -> Path | None:
        """The file of a manifest id, or None. Ids are looked up, never joined into a path."""
        image = self.by_id.get(image_id)
        return None if image is None else self.root / image.file

    @property
    def default_db(self) -> Path:
        return self.root / "ratings.sqlite"


def make_study(
    out_dir: str | Path,
    images_by_method: Mapping[str, Sequence[Image.Image]],
    *,
    items: Mapping[str, Sequence[str]] | None = None,
    users: Mapping[str, Sequence[str]] | None = None,
    captions: Mapping[str, Sequence[str]] | None = None,
    name: str = "icg-rating",
    seed: int | None = None,
    raters: int = DEFAULT_RATERS,
    size: int = DEFAULT_SIZE,
) -> Study:
    """Re-encode covers under random ids into `out_dir/images/`, write `manifest.json` and `raters` invites.

    `items`/`users` give, per method, the item and user of each image (same order as the images) so results
    can be paired across methods later; they default to the image's index. `captions` (e.g. the movie title)
    are shown to the rater under the cover and default to none. The manifest rows are shuffled so that neither
    file order nor id order reveals the method. Every cover is centre-cropped and resized to `size`² and
    re-encoded as PNG without metadata; all covers are shuffled together before the first file is written.
    """
    out = Path(out_dir)
    if (out / "manifest.json").exists() or (out / "manifest.csv").exists():
        raise DataError("a study already exists here; choose an empty folder", path=out)
    if not images_by_method or not any(images_by_method.values()):
        raise DataError("no images given", expected="a dict method -> list of PIL images")
    if not 8 <= size <= 2048:
        raise DataError(f"cover size {size}", expected="8 to 2048 pixels")
    if raters < 1:
        raise DataError(f"{raters} raters", expected="at least one rater invite")
    rng = secrets.SystemRandom()
    pending: list[tuple[Image.Image, str, str, str, str]] = []
    for method, images in images_by_method.items():
        if not method or not method.strip():
            raise DataError("empty method name", expected="a non-empty string per method")
        item_ids = _labels(items, method, len(images), "items")
        user_ids = _labels(users, method, len(images), "users")
        texts = _labels(captions, method, len(images), "captions", default="")
        pending += zip(images, [method] * len(images), item_ids, user_ids, texts, strict=True)
    rng.shuffle(pending)  # methods interleaved before the first write: file times and ids tell nothing
    rows: list[StudyImage] = []
    used: set[str] = set()
    for image, method, item, user, caption in pending:
        image_id = secrets.token_hex(8)
        while image_id in used:
            image_id = secrets.token_hex(8)
        used.add(image_id)
        file = f"images/{image_id}.png"
        cover = ImageOps.fit(image.convert("RGB"), (size, size), Image.Resampling.LANCZOS)
        with atomic_path(out / file) as tmp:
            cover.save(tmp, format="PNG")  # one size, one format, no text chunks: nothing but pixels
        rows.append(StudyImage(image_id, file, method, item, user, caption))
    study_seed = int(seed) if seed is not None else rng.randrange(2**31)
    payload = {
        "version": MANIFEST_VERSION,
        "name": name,
        "seed": study_seed,
        "images": [row.__dict__ for row in rows],
    }
    write_text_atomic(out / "manifest.json", json.dumps(payload, indent=2) + "\n")
    add_raters(out, raters)
    return load_study(out)


def add_raters(study_dir: str | Path, n: int) -> list[tuple[str, str]]:
    """Create `n` more invites (rater id, token) in `raters.json`; returns the new ones."""
    if n < 1:
        raise DataError(f"{n} raters", expected="at least one rater invite")
    path = Path(study_dir) / RATERS_FILE
    current = _read_raters(path) if path.is_file() else {}
    ids = set(current.values())
    start = len(current)
    width = max(2, len(str(start + n)))
    new: list[tuple[str, str]] = []
    for k in range(start + 1, start + n + 1):
        rater = f"r{k:0{width}d}"
        while rater in ids:
            rater += "x"
        ids.add(rater)
        new.append((rater, secrets.token_hex(16)))
    rows = [{"id": rater, "token": token} for token, rater in current.items()]
    rows += [{"id": rater, "token": token} for rater, token in new]
    write_text_atomic(path, json.dumps({"version": 1, "raters": rows}, indent=2) + "\n")
    return new


def _read_raters(path: Path) -> dict[str, str]:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"unreadable ({exc})", path=path) from None
    rows = payload.get("raters") if isinstance(payload, dict) else None
    if not isinstance(rows, list):
        raise DataError("bad rater invites", path=path, expected='an object with a "raters" list')
    invites: dict[str, str] = {}
    for row in rows:
        token = str(row.get("token", "")) if isinstance(row, dict) else ""
        rater = str(row.get("id", "")).strip() if isinstance(row, dict) else ""
        if not _TOKEN_RE.match(token) or not rater:
            raise DataError("bad invite row", path=path, expected="{id, token (32 hex characters)}")
        if token in invites or rater in invites.values():
            raise DataError(f"rater {rater!r} or its token listed twice", path=path)
        invites[token] = rater
    return invites


def _labels(
    labels: Mapping[str, Sequence[str]] | None, method: str, n: int, what: str, default: str | None = None
) -> list[str]:
    if labels is None or method not in labels:
        return [str(index) if default is None else default for index in range(n)]
    values = list(labels[method])
    if len(values) != n:
        raise DataError(f"{what}[{method!r}] has {len(values)} entries for {n} images")
    return [str(value) for value in values]


def load_study(study_dir: str | Path) -> Study:
    """Read and check `manifest.json` (or `manifest.csv`); each listed file must exist inside the folder."""
    root = Path(study_dir).resolve()
    if not root.is_dir():
        raise DataError("study folder not found", path=root)
    if (root / "manifest.json").is_file():
        name, seed, raw = _read_json(root / "manifest.json")
    elif (root / "manifest.csv").is_file():
        name, seed, raw = root.name, 0, _read_csv(root / "manifest.csv")
    else:
        raise DataError("no manifest", path=root, expected="manifest.json or manifest.csv")
    images: list[StudyImage] = []
    seen: set[str] = set()
    for index, row in enumerate(raw):
        image = _parse_row(row, index, root)
        if image.id in seen:
            raise DataError(f"image id {image.id!r} listed twice", path=root / "manifest")
        seen.add(image.id)
        images.append(image)
    if not images:
        raise DataError("the manifest lists no images", path=root)
    raters = root / RATERS_FILE
    invites = _read_raters(raters) if raters.is_file() else {}
    return Study(root=root, name=name, seed=seed, images=tuple(images), invites=invites)


def _read_json(path: Path) -> tuple[str, int, list[dict]]:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON ({exc})", path=path) from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("images"), list):
        raise DataError("bad manifest", path=path, expected='an object with an "images" list')
    if payload.get("version", MANIFEST_VERSION) != MANIFEST_VERSION:
        raise DataError(f"manifest version {payload.get('version')!r}", path=path, expected="version 1")
    seed = payload.get("seed", 0)
    if not isinstance(seed, int):
        raise DataError("seed must be an integer", path=path)
    return str(payload.get("name", path.parent.name)), seed, payload["images"]


def _read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in ("id", "file", "method") if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"missing columns {missing}", path=path, expected=f"columns {list(_CSV_COLUMNS)}")
        return list(reader)


def _reveals(file: str, method: str) -> bool:
    """Whether a file name gives the method away: as a whole token, or as a substring if it is distinctive."""
    name, key = file.lower(), method.lower()
    return key in re.split(r"[^0-9a-z]+", name) or (len(key) >= 4 and key in name)


def _parse_row(row: object, index: int, root: Path) -> StudyImage:
    where = root / f"manifest[images][{index}]"
    if not isinstance(row, dict):
        raise DataError("not an object", path=where)
    image_id, file, method = (str(row.get(key) or "").strip() for key in ("id", "file", "method"))
    if not _ID_RE.match(image_id):
        raise DataError(f"bad id {image_id!r}", path=where, expected="8-64 lowercase hex characters")
    if not method:
        raise DataError("empty method", path=where)
    if _reveals(file, method):
        raise DataError(f"file name {file!r} reveals the method", path=where, expected="an anonymized name")
    resolved = (root / file).resolve()
    if not resolved.is_relative_to(root) or not resolved.is_file():
        raise DataError(f"file {file!r} missing or outside the study folder", path=where)
    item, user, caption = (str(row.get(key) or "") for key in ("item", "user", "caption"))
    return StudyImage(image_id, file, method, item, user, caption)
