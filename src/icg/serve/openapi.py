"""The cover API's OpenAPI document and error bodies: what `create_app` documents and how it answers 422.

- `documented(...)`: the error answers of a route, each a JSON `{"detail": ...}`.
- `cover_form_schema(doc, ...)`: POST /v1/covers's form rules that FastAPI cannot write from the signature
  (file part, `steps` bound, item and user either/or).
- `validation_error`: 422 naming each field in the shared layer's words (`icg.validation`, the CLI's too),
  never echoing a long input back.
"""

from __future__ import annotations

import contextlib
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from icg.validation import InputError, check_profile, check_seed, check_steps, check_title, check_user_scale

MAX_ECHO_CHARS = 64  # a 422 shows the offending input only when it is this short
SHARED_CHECKS = {  # the fields whose 422 message comes from icg.validation (the CLI's words too)
    "seed": check_seed,
    "steps": check_steps,
    "title": check_title,
    "profile": check_profile,
    "user_scale": check_user_scale,
}
PNG = {"image/png": {"schema": {"type": "string", "format": "binary"}}}
ERROR = {
    "application/json": {"schema": {"type": "object", "properties": {"detail": {}}, "required": ["detail"]}}
}


def documented(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries of the error answers a route can give (each a JSON `{"detail": ...}`)."""
    text = {
        400: "Malformed request body",
        401: "API key missing or wrong (Authorization: Bearer <key>)",
        404: "Not found",
        413: "Upload too large (bytes or pixels)",
        415: "Upload is not an image we read",
        422: "A field is invalid; `detail[].loc` names it",
        429: "Too many requests from this client; see Retry-After",
        503: "Busy (queue full or uploads being read); see Retry-After",
    }
    return {code: {"description": text[code], "content": ERROR} for code in codes}


def short_input(value: Any) -> Any:
    """The input to echo in a 422, or None when it is long or not a plain value."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value if len(str(value)) <= MAX_ECHO_CHARS else None
    if isinstance(value, str) and len(value) <= MAX_ECHO_CHARS:
        return value
    return None


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each field, in the shared layer's words where it has a rule; long inputs are not echoed."""
    detail = []
    for error in exc.errors():
        loc = list(error.get("loc", ()))
        item = {"loc": loc, "msg": error.get("msg", ""), "type": error.get("type", "value_error")}
        field = loc[-1] if loc else None
        raw = error.get("input")
        if field in SHARED_CHECKS and isinstance(raw, str | int):
            value = raw
            if field in ("seed", "steps") and isinstance(raw, str):
                with contextlib.suppress(ValueError):
                    value = int(raw)
            if field == "user_scale" and isinstance(raw, str):
                with contextlib.suppress(ValueError):
                    value = float(raw)
            try:
                SHARED_CHECKS[field](value)
            except InputError as shared:
                item["msg"], item["type"] = shared.msg, shared.kind
        shown = short_input(raw)
        if shown is not None:
            item["input"] = shown
        detail.append(item)
    return JSONResponse({"detail": detail}, status_code=422)


def cover_form_schema(doc: dict[str, Any], *, max_steps: int, personalized: bool) -> None:
    """Make POST /v1/covers's form schema say what the route accepts.

    A form field is absent or a value (never JSON null); `image` is a file part; `steps` has its upper bound;
    and the either/or rules: an item is `item_id` alone or `title` + `image`; a user is `user_id` and/or
    `profile` when the model is personalized, and neither otherwise.
    """
    body = doc["paths"]["/v1/covers"]["post"]["requestBody"]
    body["required"] = True  # every field is optional on its own, but an empty form is refused
    content = body["content"]["multipart/form-data"]
    name = content["schema"]["$ref"].rsplit("/", 1)[-1]
    schema = doc["components"]["schemas"][name]
    props = schema["properties"]
    for field in ("item_id", "title", "user_id", "profile", "steps"):
        options = props[field].pop("anyOf", None)
        if options:
            props[field].update(next(o for o in options if o.get("type") != "null"))
    props["image"] = {
        "type": "string",
        "format": "binary",
        "contentMediaType": "image/*",
        "description": props["image"].get("description", ""),
    }
    props["steps"]["maximum"] = max_steps
    user = {"anyOf": [{"required": ["user_id"]}, {"required": ["profile"]}]}
    schema["allOf"] = [
        {
            "oneOf": [
                {
                    "required": ["item_id"],
                    "not": {"anyOf": [{"required": ["title"]}, {"required": ["image"]}]},
                },
                {"required": ["title", "image"], "not": {"required": ["item_id"]}},
            ]
        },
        user if personalized else {"not": user},
    ]
