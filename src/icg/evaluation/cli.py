"""`icg evaluate …`: the paper's tables and the held-out reports, each beside the paper's figures.

Registered in `icg.cli` with `app.add_typer(evaluate_app, name="evaluate")`.
"""

from __future__ import annotations

import functools
import inspect
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from icg.cli_options import ClipOpt, PathOpt, ThreadsOpt, load_data
from icg.errors import ICGError

evaluate_app = typer.Typer(help="Evaluate ICG's components: the paper's tables.", no_args_is_help=True)


@evaluate_app.command("table6")
def evaluate_table6_cmd(
    preset: Annotated[str, typer.Option(help="Reward-model recipe (only 'mini' for now).")] = "mini",
    dataset: Annotated[str, typer.Option(help="Dataset of users, items and ratings.")] = "ml-100k",
    path: PathOpt = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for table6.json/.md and the runs.")] = Path(
        "runs/table6"
    ),
    clip: ClipOpt = None,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds (pairs split + model).")] = "0,1,2",
    trainable_clip_layers: Annotated[
        int, typer.Option(help="Last k CLIP layers that train; 0 (frozen, cached CLIP) fits the CPU budget.")
    ] = 0,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs per run (default: preset's).")] = None,
    patience: Annotated[int | None, typer.Option(help="Early-stopping patience (default: preset's).")] = None,
    threads: ThreadsOpt = 1,
) -> None:
    """Paper Table 6: test-pair accuracy of the reward model and its ablations beside the paper's figures."""
    import dataclasses

    import torch

    from icg.evaluation.table6 import markdown, run_table6
    from icg.training.reward_model import resolve_clip, reward_model_preset

    if threads is not None:
        torch.set_num_threads(threads)
    try:
        seed_list = tuple(int(s) for s in seeds.split(",") if s.strip())
        base, train = reward_model_preset(preset)
        base = dataclasses.replace(base, trainable_clip_layers=trainable_clip_layers)
        overrides = {k: v for k, v in (("epochs", epochs), ("patience", patience)) if v is not None}
        train = dataclasses.replace(train, **overrides)
        taste_train = dataclasses.replace(reward_model_preset("taste")[1], **overrides)
        data = load_data(dataset, path)
        model, processor, source = resolve_clip(clip, data.items)
        result = run_table6(
            data, model, processor, out, clip_source=source, base=base, train=train, seeds=seed_list,
            taste_train=taste_train, command="icg " + " ".join(sys.argv[1:]),
        )  # fmt: skip
    except ValueError as exc:
        raise ICGError(str(exc)) from exc
    sys.stdout.write(markdown(result))


@evaluate_app.command("mini")
def evaluate_mini_cmd(
    preset: Annotated[str, typer.Option(help="'mini' or a preset folder of the same kind.")] = "mini",
    dataset: Annotated[str, typer.Option(help="Dataset whose held-out items are measured.")] = "ml-100k",
    out: Annotated[Path, typer.Option("--out", help="Folder for mini_eval.json/.md and sample grid.")] = Path(
        "results"
    ),
    steps: Annotated[int | None, typer.Option(help="DDIM steps (default: the preset's).")] = None,
    guidance: Annotated[float | None, typer.Option(help="Guidance scale (default: the preset's).")] = None,
    max_items: Annotated[
        int | None, typer.Option(help="Measure only the first N held-out items (by row; default: all).")
    ] = None,
    threads: ThreadsOpt = None,
) -> None:
    """Quality of the mini backbone: VAE PSNR, FD-miniCLIP (floor, ceiling), zero-shot genre accuracy."""
    import torch

    from icg.atomic import write_text_atomic
    from icg.evaluation.mini import evaluate_mini, mini_report_markdown
    from icg.presets import get_preset, icg_home

    if threads is not None:
        torch.set_num_threads(threads)
    spec = get_preset(preset)
    if spec.clip is None or spec.base_model is None:
        raise ICGError(f"preset '{spec.name}' names no CLIP or no base model to evaluate")
    out.mkdir(parents=True, exist_ok=True)
    generation = spec.generation_config().replace(num_inference_steps=steps, guidance_scale=guidance)
    try:
        result = evaluate_mini(
            Path(spec.base_model), Path(spec.clip), load_data(dataset, None).items,
            cache_dir=icg_home() / "covers", num_inference_steps=generation.num_inference_steps,
            guidance_scale=generation.guidance_scale, max_items=max_items, out_dir=out,
        )  # fmt: skip
    except ValueError as exc:
        raise ICGError(str(exc)) from exc
    result["command"] = "icg " + " ".join(sys.argv[1:])
    write_text_atomic(out / "mini_eval.json", json.dumps(result, indent=2, default=str))
    report = mini_report_markdown(result)
    write_text_atomic(out / "mini_eval.md", report)
    sys.stdout.write(report)


@evaluate_app.command("adapter")
def evaluate_adapter_cmd(
    preset: Annotated[str, typer.Option(help="'mini' or a preset folder with adapter and judge.")] = "mini",
    adapter: Annotated[Path | None, typer.Option(help="Adapter folder to evaluate instead.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for adapter_heldout.json/.md/.png.")] = Path(
        "results"
    ),
    users: Annotated[int | None, typer.Option(help="Held-out users (default: all test-split users).")] = None,
    items: Annotated[int, typer.Option(help="Held-out items per user.")] = 12,
    seed: Annotated[int, typer.Option(help="Seed of the subsets, noise and permutation test.")] = 0,
    threads: ThreadsOpt = None,
) -> None:
    """The adapter on held-out users and items: judge reward, SSIM, LPIPS-miniCLIP, personalization score
    for rule-based vs context-only vs ICG with the user."""
    import torch

    from icg.evaluation.adapter_report import adapter_report_markdown, evaluate_adapter
    from icg.presets import get_preset, icg_home

    if threads is not None:
        torch.set_num_threads(threads)
    spec = get_preset(preset).replace(adapter=str(adapter) if adapter else None)
    result = evaluate_adapter(
        spec, load_data("ml-100k", None), n_users=users, n_items=items, seed=seed,
        cache_dir=icg_home() / "covers", out_dir=out,
    )  # fmt: skip
    sys.stdout.write(adapter_report_markdown(result))


def parse_adapter_rows(values: list[str]) -> dict[str, str]:
    """Repeated `--adapter NAME=PATH` → {NAME: PATH}; a clear error for a malformed or repeated row."""
    rows: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise ICGError(
                f"--adapter must be NAME=PATH (e.g. contrast=runs/adapter_contrast), got '{value}'"
            )
        if name in rows:
            raise ICGError(f"--adapter row '{name}' is given twice")
        rows[name] = path
    return rows


def parse_scales(text: str) -> tuple[float, ...]:
    """`--scales 0,0.5,1` → (0.0, 0.5, 1.0); a clear error for a value that is not a number."""
    try:
        return tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ICGError(
            f"--scales must be comma-separated numbers such as 0,0.5,1,1.5,2, got '{text}'"
        ) from None


@evaluate_app.command("personalization")
def evaluate_personalization_cmd(
    preset: Annotated[
        str, typer.Option(help="'mini' or a preset folder with adapter, CLIP and judge.")
    ] = "mini",
    adapter: Annotated[
        list[str] | None,
        typer.Option("--adapter", help="An extra row NAME=PATH: another adapter folder (repeatable)."),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", help="Folder for personalization.json/.md/_curve.png.")
    ] = Path("results"),
    max_items: Annotated[int, typer.Option(help="Held-out multi-genre items (seeded subset).")] = 12,
    max_users: Annotated[int, typer.Option(help="Held-out users (seeded subset of the test split).")] = 32,
    scales: Annotated[str, typer.Option(help="user_scale values of the strength sweep.")] = "0,0.5,1,1.5,2",
    seed: Annotated[int, typer.Option(help="Seed of the subsets, noise, bootstrap and permutations.")] = 0,
    split: Annotated[
        str, typer.Option(help="'val' (users and items for choosing recipes) or 'test' (reporting only).")
    ] = "test",
    threads: ThreadsOpt = 1,
) -> None:
    """Personalization against ground truth: the lean test (do covers lean to their user's genre?), the
    judge's swap test and fidelity, for rule-based, context-only, ICG, extra adapters and the oracle, and
    ICG's strength sweep (user_scale)."""
    import torch

    from icg.evaluation.personalization import evaluate_personalization, personalization_markdown
    from icg.presets import get_preset, icg_home

    if threads is not None:
        if threads < 1:
            raise ICGError(f"--threads must be ≥ 1, got {threads}")
        torch.set_num_threads(threads)
    rows = parse_adapter_rows(adapter or [])
    if max_items < 1 or max_users < 2:
        raise ICGError(f"--max-items must be ≥ 1 and --max-users ≥ 2 (pairs), got {max_items}, {max_users}")
    if split not in ("val", "test"):
        raise ICGError(f"--split must be 'val' or 'test', got {split!r}")
    try:
        result = evaluate_personalization(
            get_preset(preset), load_data("ml-100k", None), max_items=max_items, max_users=max_users,
            scales=parse_scales(scales), adapters=rows, seed=seed, split=split,
            cache_dir=icg_home() / "covers",
            out_dir=out, command="icg " + " ".join(sys.argv[1:]),
        )  # fmt: skip
    except ValueError as exc:
        raise ICGError(str(exc)) from exc
    sys.stdout.write(personalization_markdown(result))


# A table command's result: the table's methods (rows) for the loaded preset.
MethodsFactory = Callable[[Any], Any]

TableUsers = Annotated[int, typer.Option("--users", help="Held-out (test-split) users.")]


TableItems = Annotated[int, typer.Option("--items", help="Held-out (test-split) items per user.")]


TableOut = Annotated[Path, typer.Option("--out", help="Folder for tableN_mini.json/.md.")]

# The real metrics' weights (icg.evaluation.metrics.build_metrics); without them a table reports the mini-CLIP
# stand-ins under their own names (LPIPS-miniCLIP, FD-miniCLIP) and no aesthetics.
LpipsBackboneOpt = Annotated[
    Path | None,
    typer.Option(
        help="LPIPS: torchvision AlexNet (or VGG16) state dict .pth; reports LPIPS, not LPIPS-miniCLIP."
    ),
]
LpipsNetOpt = Annotated[str, typer.Option(help="LPIPS backbone of --lpips-backbone: alex or vgg.")]
LpipsLinOpt = Annotated[
    Path | None,
    typer.Option(help="LPIPS linear layers (lpips' weights/v0.1/alex.pth); default torchmetrics'."),
]
InceptionOpt = Annotated[
    Path | None,
    typer.Option(
        help="FID: torch-fidelity's weights-inception-2015-12-05-6726825d.pth; reports FID, not FD-miniCLIP."
    ),
]
FidAntialiasOpt = Annotated[
    bool,
    typer.Option(
        help="FID resize to 299²: antialiased (torchmetrics) or TF1 bilinear (torch-fidelity, published)."
    ),
]
AestheticOpt = Annotated[
    Path | None,
    typer.Option(help="LAION aesthetic head (sac+logos+ava1-l14-linearMSE.pth); needs --aesthetic-clip."),
]
AestheticClipOpt = Annotated[
    Path | None,
    typer.Option(help="CLIP ViT-L/14 transformers folder under the aesthetic head (and the CLIP score)."),
]
ClipScoreOpt = Annotated[
    Path | None, typer.Option(help="CLIP folder of the real CLIP score (default: --aesthetic-clip).")
]


# The real metrics' weights as options (name, type, default): `build_metrics` arguments.
_METRIC_OPTIONS: tuple[tuple[str, object, object], ...] = (
    ("lpips_backbone", LpipsBackboneOpt, None),
    ("lpips_net", LpipsNetOpt, "alex"),
    ("lpips_lin", LpipsLinOpt, None),
    ("inception", InceptionOpt, None),
    ("fid_antialias", FidAntialiasOpt, True),
    ("aesthetic", AestheticOpt, None),
    ("aesthetic_clip", AestheticClipOpt, None),
    ("clip_score_model", ClipScoreOpt, None),
)

# The options every table command takes, written once: the held-out subset, the output folder, the metrics'
# weights and the threads.
_TABLE_OPTIONS: tuple[tuple[str, object, object], ...] = (
    ("users", TableUsers, 16),
    ("items", TableItems, 16),
    ("out", TableOut, Path("results")),
    *_METRIC_OPTIONS,
    ("threads", ThreadsOpt, None),
)


def table_command(table: str) -> Callable[[Callable[..., MethodsFactory]], Callable[..., None]]:
    """Register `icg evaluate <table>`: the command declares only its own options (and `preset`) and returns
    the table's methods; the shared options are added here and the table runs here. A command that needs a
    shared option's value too (e.g. `threads`) names it as a parameter without a CLI annotation."""

    def register(command: Callable[..., MethodsFactory]) -> Callable[..., None]:
        signature = inspect.signature(command, eval_str=True)
        shared = {name for name, _, _ in _TABLE_OPTIONS}
        own = [p for p in signature.parameters.values() if p.name not in shared]
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=alias, default=default)
            for name, alias, default in _TABLE_OPTIONS
        ]

        @functools.wraps(command)
        def run(**kwargs: Any) -> None:
            methods = command(**{k: v for k, v in kwargs.items() if k in signature.parameters})
            weights = {name: kwargs[name] for name, _, _ in _METRIC_OPTIONS}
            _table(table, kwargs["preset"], methods, kwargs["users"], kwargs["items"], kwargs["out"],
                   kwargs["threads"], weights)  # fmt: skip

        run.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        return evaluate_app.command(table)(run)

    return register


def _table(
    table: str,
    preset: str,
    methods: MethodsFactory,
    users: int,
    items: int,
    out: Path,
    threads: int | None,
    weights: dict[str, object] | None = None,
) -> None:
    import torch

    from icg.evaluation.metrics import build_metrics
    from icg.evaluation.tables import run_table, table_markdown
    from icg.presets import get_preset, icg_home

    if threads is not None:
        torch.set_num_threads(threads)
    spec = get_preset(preset)
    try:
        suite = build_metrics(clip=spec.clip, **(weights or {}))
    except ValueError as exc:
        raise ICGError(str(exc)) from exc
    result = run_table(
        table, spec, load_data("ml-100k", None), methods(spec), suite, n_users=users, n_items=items,
        cache_dir=icg_home() / "covers", out_dir=out,
    )  # fmt: skip
    sys.stdout.write(table_markdown(result))


@table_command("table1")
def evaluate_table1_cmd(
    work: Annotated[
        Path, typer.Option("--work", help="Folder for the Textual Inversion words (resumable).")
    ] = Path("runs/table1"),
    preset: Annotated[str, typer.Option(help="'mini' or a preset folder.")] = "mini",
    threads: int | None = None,
) -> MethodsFactory:
    """Paper Table 1: ICG vs rule-based, Textual Inversion and PMG (LPIPS, SSIM, FID, aesthetics or their
    stand-ins); learns the users' Textual Inversion words first."""
    from icg.evaluation.table1 import table1_methods
    from icg.presets import icg_home

    return lambda spec: table1_methods(
        load_data("ml-100k", None), work, icg_home() / "covers", threads=threads or 1
    )


@table_command("table3")
def evaluate_table3_cmd(
    work: Annotated[Path, typer.Option("--work", help="Folder for the 8 variants (resumable).")] = Path(
        "runs/table3"
    ),
    preset: Annotated[
        str, typer.Option(help="'mini' or a preset folder: the base of every variant.")
    ] = "mini",
    tokens: Annotated[list[int] | None, typer.Option("--tokens", help="N values (default 1 2 4 8).")] = None,
    threads: int | None = None,
) -> MethodsFactory:
    """Paper Table 3: N meta tokens × with/without the meta-token stage (LPIPS or its stand-in); trains the
    variants first (a reduced budget, resumable)."""
    from icg.evaluation.table3 import T3_TOKENS, table3_methods

    return lambda spec: table3_methods(
        load_data("ml-100k", None), spec, work, tokens=tuple(tokens or T3_TOKENS), threads=threads or 1
    )


@table_command("table4")
def evaluate_table4_cmd(
    preset: Annotated[str, typer.Option(help="'mini' or a preset folder.")] = "mini",
) -> MethodsFactory:
    """Paper Table 4: ICG vs w/o meta token / w/o user feature / w/o both (LPIPS, FID or their stand-ins)."""
    from icg.evaluation.tables import table4_methods

    return lambda spec: table4_methods()


@table_command("table5")
def evaluate_table5_cmd(
    no_clip: Annotated[Path, typer.Option(help="Adapter folder trained with --lambda-rec 0.")],
    no_personal: Annotated[Path, typer.Option(help="Adapter folder trained with --lambda-per 0.")],
    no_public: Annotated[
        Path | None, typer.Option(help="Adapter trained without HPSv2+PickScore (default: the preset's).")
    ] = None,
    preset: Annotated[str, typer.Option(help="'mini' or a preset folder.")] = "mini",
) -> MethodsFactory:
    """Paper Table 5: ICG vs adapters retrained without each reward (LPIPS, FID, aesthetics or stand-ins)."""
    from icg.evaluation.tables import table5_methods

    def methods(spec):
        for folder in (no_clip, no_personal, no_public):
            if folder is not None and not folder.is_dir():
                raise ICGError(f"{folder}: not an adapter folder (train one with `icg train adapter`)")
        public = str(no_public) if no_public else None
        return table5_methods(spec, str(no_clip), str(no_personal), public)

    return methods


@evaluate_app.command("table7")
def evaluate_table7_cmd(
    work: Annotated[
        Path, typer.Option("--work", help="Folder for cached features and finished runs (resumable).")
    ] = Path("runs/table7"),
    preset: Annotated[str, typer.Option(help="'mini' or a preset folder.")] = "mini",
    seeds: Annotated[
        list[int] | None, typer.Option("--seed", help="Seeds (repeatable; default 0 1 2).")
    ] = None,
    out: TableOut = Path("results"),
    threads: ThreadsOpt = 1,
) -> None:
    """Paper Table 7: MMGCN on ml-100k without images, with item images, averaged-user and generated-user
    features (Recall@10, NDCG@10, full ranking, mean ± std over seeds)."""
    import shutil

    from icg.evaluation.table7 import JSON_NAME, MD_NAME, run_table7, table7_markdown
    from icg.presets import get_preset

    result = run_table7(
        load_data("ml-100k", None), get_preset(preset), work, seeds=tuple(seeds or (0, 1, 2)),
        threads=threads, command="icg " + " ".join(sys.argv[1:]),
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    for name, suffix in ((JSON_NAME, ".json"), (MD_NAME, ".md")):
        shutil.copyfile(work / name, out / f"table7_ml100k{suffix}")
    sys.stdout.write(table7_markdown(result))
