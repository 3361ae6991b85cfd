"""One set of input rules for the CLI and the API: same checks, same messages.

Each check returns the cleaned value or raises `InputError`, which names the field (`seed`, `steps`, `title`,
`profile`, `image`, ...), says what is wrong, and carries a machine-readable `kind`. The CLI prints it as
`--seed: must be ...` (exit code 2); the API answers 422/413/415 with
`{"loc": ["body", field], "msg", "type"}` and the same `msg`. Image files are read here too, so a bad file
at any boundary is one line naming the file.
"""

from __future__ import annotations

import io
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

import PIL.Image

from icg.errors import ICGError

MAX_SEED = 2**31 - 1  # covers use seed + k; every seed stays well inside torch's int64 generator seed
MAX_TITLE_CHARS = 200
MAX_PROFILE_CHARS = 300
MAX_USER_SCALE = 10.0  # personalization strength (user_scale) accepted by the CLI and the API
TEXT_PATTERN = r"^[^\x00-\x1f\x7f]+$"  # printable: no control characters (as in the API's OpenAPI schema)
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class InputError(ICGError):
    """A value given by the user breaks a rule; `field` names it, `msg` says how, `kind` classifies it."""

    def __init__(self, field: str, msg: str, kind: str = "value_error", status: int = 422) -> None:
        self.field = field
        self.msg = msg
        self.kind = kind
        self.status = status  # the HTTP status the API answers with
        super().__init__(f"--{field.replace('_', '-')}: {msg}")


def check_seed(value: Any, field: str = "seed") -> int:
    """An integer seed in [0, MAX_SEED]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(field, f"must be an integer, got {_short(value)}", "int_type")
    if not 0 <= value <= MAX_SEED:
        raise InputError(field, f"must be between 0 and {MAX_SEED}, got {_short(value)}", "out_of_range")
    return value


def check_steps(value: Any, max_steps: int | None = None, field: str = "steps") -> int | None:
    """None (the preset's default) or a step count in [1, max_steps]; 0 is refused, never replaced."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(field, f"must be an integer, got {_short(value)}", "int_type")
    if value < 1:
        raise InputError(field, f"must be at least 1, got {_short(value)}", "greater_than_equal")
    if max_steps is not None and value > max_steps:
        raise InputError(field, f"at most {max_steps} steps, got {_short(value)}", "less_than_equal")
    return value


def check_user_scale(value: Any, field: str = "user_scale") -> float:
    """The personalization strength in [0, MAX_USER_SCALE]: 0 = the context-only cover, 1 = as trained;
    beyond the cap the user tokens already hold nearly all of the personal path's attention."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(field, f"must be a number, got {_short(value)}", "float_type")
    if not math.isfinite(value) or value < 0 or value > MAX_USER_SCALE:
        raise InputError(field, f"must be in [0, {MAX_USER_SCALE:g}], got {_short(value)}", "value_error")
    return float(value)


def check_text(value: Any, field: str, max_chars: int) -> str:
    """Non-empty printable text of at most `max_chars` characters, stripped of surrounding spaces."""
    if not isinstance(value, str):
        raise InputError(field, f"must be text, got {type(value).__name__}", "string_type")
    if _CONTROL.search(value):
        raise InputError(field, "must not contain control characters", "string_pattern_mismatch")
    text = value.strip()
    if not text:
        raise InputError(field, "must not be empty", "string_too_short")
    if len(value) > max_chars:
        raise InputError(field, f"at most {max_chars} characters, got {len(value)}", "string_too_long")
    return text


def check_title(value: Any, field: str = "title") -> str:
    return check_text(value, field, MAX_TITLE_CHARS)


PROFILE_HINT = "try 'a 24-year-old male technician' or 'loves horror and sci-fi'"


def check_profile(value: Any, vocab: Any | None = None, field: str = "profile") -> str:
    """A profile sentence; with the user encoder's `vocab`, one it can read: an age, gender or occupation,
    or a stated genre taste ("loves horror and sci-fi": a cold-start user may say what they like instead)."""
    text = check_text(value, field, MAX_PROFILE_CHARS)
    if vocab is not None:
        try:
            parsed = vocab.parse_profile_sentence(text)
        except ValueError as exc:
            raise InputError(field, str(exc), "unparsed_profile") from None
        if parsed.age is None and parsed.gender is None and parsed.occupation is None:
            stated = getattr(vocab, "stated_taste", None)
            if stated is None or not bool((stated([text]) != 0).any()):
                raise InputError(
                    field,
                    f"no age, gender, occupation or genre taste recognised ({PROFILE_HINT})",
                    "unparsed_profile",
                )
    return text


def check_unique(names: list[str], field: str) -> list[str]:
    """Names given by a repeatable option, each at most once."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InputError(field, f"'{_short(name)}' is given twice", "duplicate")
        seen.add(name)
    return names


def decode_image(
    data: bytes, *, max_bytes: int | None = None, max_pixels: int | None = None, field: str = "image"
) -> PIL.Image.Image:
    """An RGB image from bytes: too large (bytes or pixels) → status 413, not an image we read → 415.

    The pixel count is read from the header and refused before any pixel is decoded.
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise InputError(field, f"image is larger than {max_bytes} bytes", "too_large", 413)
    if not data:
        raise InputError(field, "image is empty", "unsupported_media", 415)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(io.BytesIO(data)) as image:
                if image.format not in IMAGE_FORMATS:
                    accepted = ", ".join(IMAGE_FORMATS)
                    msg = f"{image.format} images are not accepted; send one of {accepted}"
                    raise InputError(field, msg, "unsupported_media", 415)
                width, height = image.size
                if max_pixels is not None and width * height > max_pixels:
                    msg = f"image has {width}x{height} pixels (limit {max_pixels})"
                    raise InputError(field, msg, "too_large", 413)
                image.load()
                return image.convert("RGB")
    except InputError:
        raise
    except (PIL.Image.DecompressionBombWarning, PIL.Image.DecompressionBombError):
        raise InputError(field, "image has too many pixels (decompression bomb)", "too_large", 413) from None
    except PIL.UnidentifiedImageError:
        raise InputError(field, "not an image (unknown file format)", "unsupported_media", 415) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # a known format, but truncated or corrupt
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(field, f"not a readable image ({reason})", "unsupported_media", 415) from None


def read_image(path: str | Path, *, max_pixels: int | None = None) -> PIL.Image.Image:
    """An RGB image from a file, or an ICGError naming the file and saying why it is not one."""
    file = Path(path)
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise ICGError(f"{file}: image file not found") from None
    except OSError as exc:
        raise ICGError(f"{file}: cannot read ({exc.strerror or exc})") from None
    try:
        return decode_image(data, max_pixels=max_pixels)
    except InputError as exc:
        raise ICGError(f"{file}: {exc.msg}") from None


def check_out_dir(path: str | Path, option: str = "--out") -> Path:
    """A folder we may write into, checked before any work is done (nothing is created here).

    Refuses a path that is a file, lies under a file, or whose nearest existing folder is not writable.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ICGError(f"{option} {out}: exists and is not a folder")
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ICGError(f"{option} {out}: {existing} is a file, not a folder")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise ICGError(f"{option} {out}: {existing} is not writable")
    return out


def os_error_line(exc: OSError) -> str:
    """One line for an OSError at a file boundary: the file, then the system's reason."""
    cause = getattr(exc, "cause", None)  # Ray re-raises a worker's OSError wrapped, with the original here
    if isinstance(cause, OSError):
        exc = cause
    where = exc.filename if exc.filename is not None else ""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{where}: {reason}" if where else reason


def _short(value: Any, limit: int = 40) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} characters)"


def user_error_in_chain(exc: BaseException, depth: int = 10) -> ICGError | OSError | None:
    """The ICGError or OSError that caused `exc`, however it was wrapped (Ray re-raises a worker's error
    inside its own exception types), or None when the chain holds none."""
    seen: BaseException | None = exc
    for _ in range(depth):
        if seen is None:
            return None
        if isinstance(seen, ICGError | OSError):
            return seen
        cause = getattr(seen, "cause", None)
        # explicit causes only: an error raised *while handling* an OSError (__context__) is a bug, not this
        seen = cause if isinstance(cause, BaseException) else seen.__cause__
    return None
