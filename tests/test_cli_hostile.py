"""Hostile input to `icg generate` / `icg batch`: one line naming the file or option, exit 2, no traceback.

Issue 19, defects 3 (tracebacks at file boundaries) and 4 (CLI and API disagree on what is valid).
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import PIL.Image
import pytest
from PIL import Image

from icg.cli import main
from icg.testing import materialize_tiny_preset


@pytest.fixture(scope="module")
def preset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return materialize_tiny_preset(tmp_path_factory.mktemp("presets") / "tiny")


def run_cli(
    args: list, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    """`icg ARGS` in this process through the real entry point → (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["icg", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def one_line_error(code: int, err: str, needle: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and needle in err, err
    assert len([line for line in err.splitlines() if line.startswith("error")]) == 1, err


@pytest.fixture
def cover(tmp_path: Path) -> Path:
    path = tmp_path / "cover.png"
    Image.new("RGB", (100, 100), (200, 30, 30)).save(path)
    return path


def test_decompression_bomb_is_one_line_naming_the_file(preset_dir, cover, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)  # 100x100 > 2 x limit: PIL raises the bomb error
    args = ["generate", "--preset", preset_dir, "--out", tmp_path / "out", "--title", "T", "--image", cover]
    code, err = run_cli(args, monkeypatch, capsys)
    one_line_error(code, err, "cover.png")
    assert "decompression bomb" in err


def test_truncated_image_is_one_line(preset_dir, cover, tmp_path, monkeypatch, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(cover.read_bytes()[:60])
    args = ["generate", "--preset", preset_dir, "--out", tmp_path / "out", "--title", "T", "--image", broken]
    one_line_error(*run_cli(args, monkeypatch, capsys), "broken.png")


@pytest.mark.parametrize("where", ["file", "under-file"])
@pytest.mark.parametrize("command", ["generate", "batch"])
def test_out_that_is_a_file_or_under_one(preset_dir, tmp_path, monkeypatch, capsys, where, command):
    (tmp_path / "taken").write_text("a file")
    out = tmp_path / "taken" if where == "file" else tmp_path / "taken" / "sub"
    if command == "generate":
        args = ["generate", "--preset", preset_dir, "--out", out, "--item-id", "1", "--steps", "1"]
    else:
        args = ["batch", "--preset", preset_dir, "--out", out, "--executor", "local", "--max-items", "1"]
    one_line_error(*run_cli(args, monkeypatch, capsys), "taken")


def test_read_only_out_is_refused_before_any_work(preset_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("os.access", lambda path, mode: False)  # the test runs as root: chmod cannot refuse
    args = ["generate", "--preset", preset_dir, "--out", tmp_path / "out", "--item-id", "1"]
    one_line_error(*run_cli(args, monkeypatch, capsys), "not writable")


def test_a_write_failure_is_one_line_naming_the_file(preset_dir, tmp_path, monkeypatch, capsys):
    target = tmp_path / "out" / "1__user-1__0.png"

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(target))

    monkeypatch.setattr("icg.generate.write_covers", refuse)
    args = ["generate", "--preset", preset_dir, "--out", tmp_path / "out", "--item-id", "1"]
    args += ["--user-id", "1", "--steps", "1"]
    code, err = run_cli(args, monkeypatch, capsys)
    one_line_error(code, err, str(target))
    assert "Permission denied" in err


@pytest.mark.parametrize("wrapped", [False, True])
def test_disk_full_mid_batch_is_one_line(preset_dir, tmp_path, monkeypatch, capsys, wrapped):
    import icg.batch.stages as stages

    real = stages.write_cover
    calls = {"n": 0}

    def fill_disk(out_dir, folder, data, meta, fmt):
        calls["n"] += 1
        if calls["n"] > 1:  # the first cover is written, then the disk is full
            full = OSError(errno.ENOSPC, "No space left on device", str(Path(out_dir) / folder))
            if wrapped:  # as an executor (Ray Data) re-raises a worker's error
                raise RuntimeError("task failed") from full
            raise full
        return real(out_dir, folder, data, meta, fmt)

    monkeypatch.setattr(stages, "write_cover", fill_disk)
    args = ["batch", "--preset", preset_dir, "--out", tmp_path / "out", "--executor", "local"]
    args += ["--max-items", "2", "--max-users", "20", "--segments", "2", "--steps", "1", "--quiet"]
    code, err = run_cli(args, monkeypatch, capsys)
    one_line_error(code, err, "No space left on device")
    assert calls["n"] == 2 and str(tmp_path / "out") in err


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--steps", "0"], "--steps: must be at least 1, got 0"),
        (["--seed", "-1"], "--seed: must be between 0 and 2147483647, got -1"),
        (["--seed", str(2**70)], "--seed: must be between 0 and 2147483647"),
        (["--profile", "a 30-year-old\x07 writer"], "--profile: must not contain control characters"),
        (["--profile", "zzz qqq"], "--profile: no age, gender, occupation or genre taste recognised"),
    ],
)
def test_cli_applies_the_api_rules(preset_dir, tmp_path, monkeypatch, capsys, extra, needle):
    out = tmp_path / "out"
    code, err = run_cli(
        ["generate", "--preset", preset_dir, "--out", out, "--item-id", "1", *extra], monkeypatch, capsys
    )
    one_line_error(code, err, needle)
    assert not out.exists()


def test_title_with_a_control_character_is_refused(preset_dir, cover, tmp_path, monkeypatch, capsys):
    args = [
        "generate",
        "--preset",
        preset_dir,
        "--out",
        tmp_path / "o",
        "--title",
        "Bad\x1bTitle",
        "--image",
        cover,
    ]
    one_line_error(*run_cli(args, monkeypatch, capsys), "--title: must not contain control characters")


def test_cli_and_api_share_messages():
    """The API's 422 `msg` for a field is the CLI's message after `--field: ` (one rule, one text)."""
    from icg.validation import InputError, check_seed, check_steps

    for check, value in ((check_seed, -1), (check_steps, 0)):
        with pytest.raises(InputError) as caught:
            check(value)
        assert str(caught.value) == f"--{caught.value.field}: {caught.value.msg}"


def test_only_explicit_causes_become_one_line():
    from icg.validation import user_error_in_chain

    full = OSError(28, "No space left on device", "/x")
    try:
        raise RuntimeError("wrapped") from full
    except RuntimeError as exc:
        assert user_error_in_chain(exc) is full
    try:
        try:
            raise full
        except OSError:
            raise TypeError("a bug while handling it") from None
    except TypeError as exc:
        assert user_error_in_chain(exc) is None  # a bug keeps its traceback
