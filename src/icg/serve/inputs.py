"""Request checks that FastAPI's type validation cannot do: image sniffing, item and user resolution.

Every refusal is an `HTTPException` whose detail has FastAPI's own shape (`[{"loc": ["body", FIELD], "msg",
"type"}]`), so a client reads 422/413/415 errors the same way as the framework's. Images are judged by their
bytes (a text file renamed `.png` is 415), never by a file name or a declared content type.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import PIL.Image
from fastapi import HTTPException

from icg.context.cache import image_digest

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
MAX_IMAGE_PIXELS = 4096 * 4096  # a reference cover larger than this is refused before it is decoded


def field_error(status: int, field: str, msg: str, kind: str) -> HTTPException:
    """An error naming one body field, shaped like FastAPI's validation errors."""
    return HTTPException(status_code=status, detail=[{"loc": ["body", field], "msg": msg, "type": kind}])


def decode_image(data: bytes, max_bytes: int, max_pixels: int = MAX_IMAGE_PIXELS) -> PIL.Image.Image:
    """An RGB image from uploaded bytes: 413 when too large, 415 when not an image we read."""
    if len(data) > max_bytes:
        raise field_error(413, "image", f"image is larger than {max_bytes} bytes", "too_large")
    if not data:
        raise field_error(415, "image", "image is empty", "unsupported_media")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(io.BytesIO(data)) as image:
                if image.format not in IMAGE_FORMATS:
                    raise field_error(
                        415,
                        "image",
                        f"{image.format} images are not accepted; send one of {', '.join(IMAGE_FORMATS)}",
                        "unsupported_media",
                    )
                width, height = image.size
                if width * height > max_pixels:
                    raise field_error(
                        413, "image", f"image has {width}x{height} pixels (limit {max_pixels})", "too_large"
                    )
                image.load()
                return image.convert("RGB")
    except HTTPException:
        raise
    except (PIL.Image.DecompressionBombWarning, PIL.Image.DecompressionBombError):
        raise field_error(413, "image", "image has too many pixels", "too_large") from None
    except PIL.UnidentifiedImageError:
        raise field_error(415, "image", "not an image (unknown file format)", "unsupported_media") from None
    except (OSError, SyntaxError, ValueError) as exc:  # a known format, but truncated or corrupt
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise field_error(415, "image", f"not a readable image ({reason})", "unsupported_media") from None


def upload_item_key(title: str, image: PIL.Image.Image) -> str:
    """Cache key part of an uploaded item: its title and decoded pixels (not the file's bytes)."""
    digest = hashlib.sha256()
    raw = title.encode()
    digest.update(len(raw).to_bytes(8, "little") + raw)
    digest.update(image_digest(image))
    return f"upload:{digest.hexdigest()}"


@dataclass(frozen=True)
class ResolvedUser:
    """A request's user: what the pipeline gets, and the key of the features it encodes to."""

    user_id: str | None
    profile: str | None
    known: bool  # the user encoder knows user_id
    key: str  # "none", or "u<id idx>-a<age>-g<gender>-o<occupation>": the encoder's whole input

    def public(self) -> dict[str, object]:
        kind = "none" if self.key == "none" else ("known" if self.known else "cold-start")
        return {"user_id": self.user_id, "profile": self.profile, "kind": kind, "segment": self.key}


def resolve_user(user_encoder, user_id: str | None, profile: str | None) -> ResolvedUser:
    """Check the user fields against the user encoder; key = the feature indices U_pre is computed from.

    The key is the encoder's entire input, so two requests that encode to the same user vector (the same
    known id, or profiles of the same age bucket, gender and occupation) share cached covers.
    """
    if user_encoder is None:
        if user_id is not None or profile is not None:
            field = "user_id" if user_id is not None else "profile"
            raise field_error(
                422, field, "this model has no user encoder: leave the user out", "no_user_path"
            )
        return ResolvedUser(None, None, False, "none")
    if user_id is None and profile is None:
        raise field_error(422, "user_id", "give user_id, profile or both", "missing")
    vocab = user_encoder.vocab
    known = user_id is not None and user_id in vocab.users
    if user_id is not None and not known and profile is None:
        raise field_error(
            422,
            "user_id",
            f"unknown user id '{user_id}': add a profile for a cold-start cover",
            "unknown_user",
        )
    if profile is not None:
        parsed = vocab.parse_profile_sentence(profile)
        if parsed.age is None and parsed.gender is None and parsed.occupation is None:
            raise field_error(
                422,
                "profile",
                "no age, gender or occupation recognised (try 'a 24-year-old male technician')",
                "unparsed_profile",
            )
    features = user_encoder.user_features([user_id if known else None], [profile], strict=True)
    idx = [int(t[0]) for t in (features.user, features.age, features.gender, features.occupation)]
    return ResolvedUser(user_id, profile, known, "u{}-a{}-g{}-o{}".format(*idx))
