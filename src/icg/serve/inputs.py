"""Request checks that FastAPI's type validation cannot do: image sniffing, item and user resolution.

Every refusal is an `HTTPException` whose detail has FastAPI's own shape (`[{"loc": ["body", FIELD], "msg",
"type"}]`), so a client reads 422/413/415 errors the same way as the framework's. Images are judged by their
bytes (a text file renamed `.png` is 415), never by a file name or a declared content type.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import PIL.Image
from fastapi import HTTPException

from icg import validation
from icg.context.cache import image_digest
from icg.validation import InputError

MAX_IMAGE_PIXELS = 4096 * 4096  # the most any model gets: a larger reference cover is refused before decoding


def field_error(status: int, field: str, msg: str, kind: str) -> HTTPException:
    """An error naming one body field, shaped like FastAPI's validation errors."""
    return HTTPException(status_code=status, detail=[{"loc": ["body", field], "msg": msg, "type": kind}])


def input_error(exc: InputError) -> HTTPException:
    """The shared validation layer's error (`icg.validation`) as the API's answer: same field, same text."""
    return field_error(exc.status, exc.field, exc.msg, exc.kind)


def decode_image(data: bytes, max_bytes: int, max_pixels: int = MAX_IMAGE_PIXELS) -> PIL.Image.Image:
    """An RGB image from uploaded bytes: 413 when too large (bytes or pixels), 415 when not an image."""
    try:
        return validation.decode_image(data, max_bytes=max_bytes, max_pixels=max_pixels)
    except InputError as exc:
        raise input_error(exc) from None


def model_pixels(pipe: object, default: int = 1024 * 1024) -> int:
    """The most pixels the pipeline's image processor keeps of a reference cover (it resizes larger ones).

    Qwen2-VL processors say so as `max_pixels`, or as `size.longest_edge` (a pixel count, not a side).
    """
    processor = getattr(getattr(pipe, "context_encoder", None), "processor", None)
    images = getattr(processor, "image_processor", None)
    size = getattr(images, "size", None)
    candidates = [getattr(images, "max_pixels", None)]
    for key in ("max_pixels", "longest_edge"):
        candidates.append(size.get(key) if isinstance(size, dict) else getattr(size, key, None))
    found = next((int(v) for v in candidates if isinstance(v, int) and v > 0), None)
    return found if found is not None else default


def upload_pixel_cap(pipe: object) -> int:
    """Uploads are refused above 4x the pixels the model keeps (2x per side), within [1024², 4096²]."""
    return max(1024 * 1024, min(MAX_IMAGE_PIXELS, 4 * model_pixels(pipe)))


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
    key: str  # "none", or "u<id idx>-a<age>-g<gender>-o<occupation>[-t<taste digest>]": the encoder's input

    def public(self) -> dict[str, object]:
        kind = "none" if self.key == "none" else ("known" if self.known else "cold-start")
        return {"user_id": self.user_id, "profile": self.profile, "kind": kind, "segment": self.key}


def resolve_user(user_encoder, user_id: str | None, profile: str | None) -> ResolvedUser:
    """Check the user fields against the user encoder; key = the feature indices U_pre is computed from.

    The key is the encoder's entire input, so two requests that encode to the same user vector (the same
    known id, or profiles of the same age bucket, gender and occupation) share cached covers. A cold-start
    profile with a stated genre taste the encoder reads adds a digest of that taste vector to the key.
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
        try:
            validation.check_profile(profile, vocab)
        except InputError as exc:
            raise input_error(exc) from None
    features = user_encoder.user_features([user_id if known else None], [profile], strict=True)
    idx = [int(t[0]) for t in (features.user, features.age, features.gender, features.occupation)]
    key = "u{}-a{}-g{}-o{}".format(*idx)
    if features.taste is not None and bool((features.taste[0] != 0).any()):
        stated = features.taste[0].float().cpu().numpy().tobytes()
        key += f"-t{hashlib.sha256(stated).hexdigest()[:12]}"
    return ResolvedUser(user_id, profile, known, key)
