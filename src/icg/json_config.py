"""One JSON form for ICG's frozen config dataclasses (trainer configs, presets, the user tower, the projector,
batch jobs): `to_json` always returns text and `save` writes it atomically, `from_json` / `load` read them
back, and a key the class does not have is a ValueError that names it — not a TypeError from `__init__`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar, Self

from icg.atomic import write_text_atomic


class JsonConfig:
    """Mixin for a dataclass: its fields as one JSON object."""

    json_sort_keys: ClassVar[bool] = False  # True where files were always written with sorted keys

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=self.json_sort_keys)

    def save(self, path: str | Path) -> Path:
        """Write `to_json()` to `path` (temp file + rename)."""
        return write_text_atomic(path, self.to_json() + "\n")

    @classmethod
    def from_dict(cls, values: Any) -> Self:
        if not isinstance(values, dict):
            raise ValueError(f"a {cls.__name__} must be a JSON object, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}; expected a subset of {sorted(known)}")
        return cls(**cls._json_values(values))

    @classmethod
    def from_json(cls, text: str) -> Self:
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path: str | Path) -> Self:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    @classmethod
    def _json_values(cls, values: dict[str, Any]) -> dict[str, Any]:
        """Hook for subclasses: JSON values → constructor arguments (e.g. lists back to tuples)."""
        return values
