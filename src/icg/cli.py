"""The `icg` command line. The only module that parses arguments; everything else is a plain function."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from icg.batch.cli import batch as batch_cmd
from icg.cli_options import (
    ClipOpt,
    DatasetArg,
    DeviceOpt,
    DtypeOpt,
    MiniRecipeOpt,
    MinutesOpt,
    PathOpt,
    ResumeOpt,
    SignalOpt,
    SpeedOpt,
    ThreadsOpt,
    TrainingRecipeOpt,
    device_and_dtype,
    load_data,
    print_json,
    speed_options,
)
from icg.errors import ICGError
from icg.evaluation.cli import evaluate_app
from icg.rating.cli import rate_app
from icg.serve.cli import serve as serve_cmd

app = typer.Typer(help="ICG: personalized cover image generation.", no_args_is_help=True)
data_app = typer.Typer(help="Datasets: statistics and preference pairs.", no_args_is_help=True)
covers_app = typer.Typer(
    help="Reference covers: render them for datasets without covers.", no_args_is_help=True
)
train_app = typer.Typer(help="Train ICG's components.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(covers_app, name="covers")
app.add_typer(train_app, name="train")
app.add_typer(evaluate_app, name="evaluate")
app.add_typer(rate_app, name="rate")

console = Console(stderr=True)


@app.callback()
def _configure(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False):
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@data_app.command("stats")
def data_stats(
    dataset: DatasetArg,
    path: PathOpt = None,
    signal: SignalOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Counts of users, items, ratings and how many users have ≥ 6 interactions."""
    from icg.data.stats import dataset_stats

    stats = dataset_stats(load_data(dataset, path, signal))
    if as_json:
        print_json(stats)
        return
    table = Table(title=f"{stats['dataset']} ({stats['source']})")
    table.add_column("statistic")
    table.add_column("value", justify="right")
    for key, value in stats.items():
        if key in ("dataset", "source"):
            continue
        text = ", ".join(f"{k}: {v}" for k, v in value.items()) if isinstance(value, dict) else str(value)
        table.add_row(key, text)
    Console().print(table)


@data_app.command("pairs")
def data_pairs(
    dataset: DatasetArg,
    out: Annotated[Path, typer.Option("--out", help="Parquet file to write.")],
    path: PathOpt = None,
    signal: SignalOpt = None,
    k1: Annotated[int, typer.Option(help="Top-k1 items per user are positives.")] = 5,
    k2: Annotated[int, typer.Option(help="Bottom-k2 items per user are negatives.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed for tie-breaking, sampling and the split.")] = 0,
    min_interactions: Annotated[int, typer.Option(help="Users with fewer interactions are dropped.")] = 6,
) -> None:
    """Preference pairs (paper §3.4.1) with a user-disjoint train/val/test split; prints a JSON summary."""
    from icg.atomic import atomic_path, write_text_atomic
    from icg.data.pairs import PairConfig, build_pairs

    config = PairConfig(k1=k1, k2=k2, seed=seed, min_interactions=min_interactions)
    data = load_data(dataset, path, signal)
    pairs, summary = build_pairs(data.interactions, config)
    with atomic_path(out) as tmp:
        pairs.to_parquet(tmp, index=False)
    payload = {"dataset": data.name, "out": str(out), "config": config.__dict__, **summary.to_dict()}
    write_text_atomic(out.with_suffix(out.suffix + ".json"), json.dumps(payload, indent=2, default=str))
    print_json(payload)


@covers_app.command("render")
def covers_render(
    dataset: DatasetArg,
    out: Annotated[Path, typer.Option("--out", help="Folder for {item_id}.png and index.html.")],
    path: PathOpt = None,
    size: Annotated[int, typer.Option(help="Cover side in pixels (64–512).")] = 128,
    limit: Annotated[int | None, typer.Option(help="Render only the first N items.")] = None,
    variant: Annotated[int, typer.Option(help="Composition variant; 0 is the reference cover.")] = 0,
) -> None:
    """Render one reference cover per item (deterministic by item id) and an HTML contact sheet."""
    from icg.data.covers.contact_sheet import write_contact_sheet
    from icg.data.covers.render import render_covers

    data = load_data(dataset, path)
    rendered = render_covers(data.items, out, size=size, limit=limit, variant=variant)
    sheet = write_contact_sheet(rendered, out, title=f"{data.name} reference covers ({size}px)")
    console.print(f"wrote {len(rendered)} covers and [bold]{sheet}[/bold]")


@covers_app.command("probe")
def covers_probe(
    dataset: DatasetArg,
    path: PathOpt = None,
    size: Annotated[int, typer.Option(help="Cover side in pixels.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of the held-out item split.")] = 0,
) -> None:
    """Measure the genre signal in rendered covers: colour-histogram logistic regression vs chance."""
    from icg.data.covers.genre_probe import measure_genre_signal

    data = load_data(dataset, path)
    print_json({"dataset": data.name, **measure_genre_signal(data.items, size=size, seed=seed)})


@train_app.command("user-encoder")
def train_user_encoder_cmd(
    dataset: DatasetArg,
    out: Annotated[Path, typer.Option("--out", help="Folder for the trained two-tower model.")],
    path: PathOpt = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs (default: the trainer's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split, sampling and initialisation.")] = 0,
    max_minutes: MinutesOpt = None,
) -> None:
    """Train the two-tower user encoder; prints held-out AUC beside a popularity baseline (resumable)."""
    from icg.users.train import train_user_encoder

    options = {"epochs": epochs} if epochs is not None else {}
    data = load_data(dataset, path)
    metrics = train_user_encoder(data, out, seed=seed, max_minutes=max_minutes, **options)
    print_json(metrics)


@train_app.command("clip")
def train_clip_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder for the CLIPModel + CLIPProcessor and metrics.")],
    preset: MiniRecipeOpt = "mini",
    dataset: Annotated[str, typer.Option(help="Dataset whose items (title, genres) are used.")] = "ml-100k",
    path: PathOpt = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs (default: the preset's).")] = None,
    minutes: MinutesOpt = None,
    seed: Annotated[int | None, typer.Option(help="Seed of split, init and sampling (default: 0).")] = None,
    resume: ResumeOpt = True,
    threads: ThreadsOpt = None,
) -> None:
    """Train the mini CLIP on rendered covers + captions; prints held-out retrieval and genre accuracy."""
    import dataclasses

    from icg.training.mini_clip import mini_clip_preset, train_mini_clip

    try:
        config = mini_clip_preset(preset)
        overrides = {k: v for k, v in (("epochs", epochs), ("seed", seed)) if v is not None}
        config = dataclasses.replace(config, **overrides)
        metrics = train_mini_clip(
            load_data(dataset, path), out, config, resume=resume, max_minutes=minutes, threads=threads
        )
    except ValueError as exc:
        raise ICGError(str(exc)) from exc
    print_json(metrics)


@train_app.command("reward-model")
def train_reward_model_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder for the reward model and its metrics.")],
    preset: MiniRecipeOpt = "mini",
    dataset: Annotated[str, typer.Option(help="Dataset of users, items and ratings.")] = "ml-100k",
    path: PathOpt = None,
    clip: ClipOpt = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs (default: the preset's).")] = None,
    trainable_clip_layers: Annotated[
        int | None, typer.Option(help="Last k CLIP layers that train (default: the preset's).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the pair split, initialisation and sampling.")] = 0,
    minutes: MinutesOpt = None,
    resume: ResumeOpt = True,
    threads: ThreadsOpt = None,
) -> None:
    """Train the personalized preference reward model (paper §3.4.1); prints val/test pair accuracy."""
    import torch

    from icg.training.reward_model import train_from_dataset

    if threads is not None:
        torch.set_num_threads(threads)
    try:
        metrics = train_from_dataset(
            load_data(dataset, path), out, preset, clip=clip, seed=seed, epochs=epochs,
            trainable_clip_layers=trainable_clip_layers, resume=resume, max_minutes=minutes,
        )  # fmt: skip
    except ValueError as exc:
        raise ICGError(str(exc)) from exc
    print_json({k: v for k, v in metrics.items() if k != "history"})


@train_app.command("mini")
def train_mini_cmd(
    work: Annotated[
        Path, typer.Option("--work", help="Folder for each step's output and resume state.")
    ] = Path("runs/mini"),
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Preset folder to write (default: the package's assets/mini)."),
    ] = None,
    step: Annotated[
        list[str] | None,
        typer.Option(
            "--step",
            help="Run only these steps (repeatable): clip, vae, unet, context, users, reward, "
            "reward-judge, adapter-init, adapter.",
        ),
    ] = None,
    package: Annotated[bool, typer.Option(help="Package the preset folder after the steps.")] = True,
    dataset: Annotated[str, typer.Option(help="Dataset of items, users and ratings.")] = "ml-100k",
    threads: Annotated[int, typer.Option(help="Torch CPU threads per step.")] = 1,
    device: Annotated[
        str, typer.Option(help="Where the VAE and UNet steps train: auto, cpu, cuda or cuda:N (others: CPU).")
    ] = "auto",
    recipe: TrainingRecipeOpt = "mini",
) -> None:
    """Train every model of the mini preset in order (resumable; finished steps skipped), then package."""
    from icg.training.mini import STEPS, check_steps, package_mini, train_mini
    from icg.training.recipe import load_recipe

    steps = check_steps(step or STEPS)
    chosen = load_recipe(recipe)  # a bad recipe is an error before any data is read
    results = train_mini(load_data(dataset, None), work, steps, threads=threads, device=device, recipe=chosen)
    if package:
        folder = package_mini(work, out)
        console.print(f"mini preset written to [bold]{folder}[/bold]")
    print_json(
        {k: {m: v for m, v in r.items() if not isinstance(v, (list, dict))} for k, r in results.items()}
    )


@train_app.command("adapter")
def train_adapter_cmd(
    out: Annotated[Path, typer.Option("--out", help="Run folder: checkpoints/, samples, adapter/.")],
    preset: Annotated[str, typer.Option(help="Preset whose pipeline and rewards are used.")] = "mini",
    stage: Annotated[
        str, typer.Option(help="'init' (CLIP reconstruction) or 'reward' (reward feedback).")
    ] = "reward",
    init_adapter: Annotated[
        Path | None, typer.Option(help="Adapter folder to start from (stage 1's out/adapter).")
    ] = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 1000,
    batch_size: Annotated[int, typer.Option(help="Samples per process and micro-step.")] = 4,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-4,
    lambda_hps: Annotated[float, typer.Option(help="λ of HPSv2 (0 = off).")] = 0.25,
    lambda_per: Annotated[float, typer.Option(help="λ of the personalized reward (0 = off).")] = 0.25,
    lambda_pick: Annotated[float, typer.Option(help="λ of PickScore (0 = off).")] = 0.25,
    lambda_rec: Annotated[float, typer.Option(help="λ of the CLIP reconstruction (0 = off).")] = 0.25,
    denoise_weight: Annotated[float, typer.Option(help="ε-MSE regularizer on reference latents.")] = 0.0,
    personal_contrast: Annotated[
        bool, typer.Option(help="Personalized reward minus its mean over the batch's other users.")
    ] = False,
    users_per_item: Annotated[
        int, typer.Option(help="G > 1: G users per item, same noise, reward = own cover − the others'.")
    ] = 1,
    clip_text: Annotated[
        str,
        typer.Option(
            help="CLIP reward text: 'prompt' (the paper) or 'user_genre' — a DIAGNOSTIC that optimises the "
            "personalization benchmark's own measure (never ship such an adapter)."
        ),
    ] = "prompt",
    grad_steps: Annotated[int, typer.Option(help="K: denoising steps with gradients.")] = 1,
    mixed_precision: Annotated[str, typer.Option(help="no, fp16 or bf16 (accelerate).")] = "no",
    checkpoint_every: Annotated[int, typer.Option(help="save_state every M steps.")] = 100,
    hpsv2: Annotated[str | None, typer.Option(help="HPSv2.1 checkpoint (.pt) to enable that reward.")] = None,
    pickscore: Annotated[str | None, typer.Option(help="PickScore_v1 folder to enable that reward.")] = None,
    pickscore_processor: Annotated[
        str | None,
        typer.Option(
            help="CLIPProcessor folder for --pickscore when its folder has none (PickScore_v1 uses the one "
            "of laion/CLIP-ViT-H-14-laion2B-s32B-b79K)."
        ),
    ] = None,
    ip_adapter: Annotated[
        Path | None,
        typer.Option(
            help="IP-Adapter checkpoint (ip-adapter_sd15.bin/.safetensors; IP-Adapter-Flux for Flux): the "
            "dual path's K/V start from its to_k_ip/to_v_ip (instead of the preset's or --init-adapter's)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of sampling, noise and stop steps.")] = 0,
    guard_every: Annotated[
        int, typer.Option(help="Reward-hacking guard: held-out judges every N steps (0 = off).")
    ] = 100,
    guard_stop: Annotated[
        bool, typer.Option(help="Stop when the guard flags 2 checks in a row (default: warn only).")
    ] = False,
    minutes: Annotated[float | None, typer.Option(help="Time budget (checkpointed; re-run resumes).")] = None,
    threads: ThreadsOpt = None,
    reward_speed: Annotated[
        bool, typer.Option(help="Reward speed options on a GPU (bf16 towers, text caches); off: eager fp32.")
    ] = True,
) -> None:
    """Train the dual-path adapter + projectors from rewards on generated covers (paper §3.4.2); resumable."""
    from icg.presets import get_preset
    from icg.training.adapter import AdapterTrainConfig, train_adapter_from_preset

    try:
        config = AdapterTrainConfig(
            stage=stage, steps=steps, batch_size=batch_size, lr=lr, lambda_hps=lambda_hps,
            lambda_per=lambda_per, lambda_pick=lambda_pick, lambda_rec=lambda_rec,
            denoise_weight=denoise_weight, personal_contrast=personal_contrast,
            users_per_item=users_per_item, clip_text=clip_text, grad_steps=grad_steps,
            mixed_precision=mixed_precision,
            checkpoint_every=checkpoint_every, sample_every=checkpoint_every, seed=seed,
            guard_every=guard_every, guard_stop=guard_stop, reward_speed=reward_speed,
        )  # fmt: skip
        if init_adapter is not None and ip_adapter is not None:
            raise ICGError("--init-adapter and --ip-adapter both set the dual path: give one of them")
        spec = get_preset(preset).replace(adapter=str(init_adapter) if init_adapter else None)
        metrics = train_adapter_from_preset(
            spec, load_data("ml-100k", None), out, config, hpsv2=hpsv2, pickscore=pickscore,
            pickscore_processor=pickscore_processor, ip_adapter=ip_adapter, max_minutes=minutes,
            threads=threads,
        )  # fmt: skip
    except ValueError as exc:
        raise ICGError(str(exc)) from exc
    from accelerate import PartialState

    if PartialState().is_main_process:  # under torchrun / accelerate launch: one JSON, from rank 0
        print_json({k: v for k, v in metrics.items() if not isinstance(v, list)})


@app.command("report")
def report_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder for index.html and its images.")] = Path(
        "out/report"
    ),
    preset: Annotated[str, typer.Option(help="'mini' or a preset folder.")] = "mini",
    results: Annotated[
        Path, typer.Option("--results", help="Folder of the tables' JSON/Markdown (icg evaluate …).")
    ] = Path("results"),
    run: Annotated[
        list[Path] | None,
        typer.Option("--run", help="Adapter training folder for reward curves (repeatable)."),
    ] = None,
    items: Annotated[int, typer.Option("--items", help="Held-out items in the cover grid.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the cover grid.")] = 0,
    threads: ThreadsOpt = 1,
) -> None:
    """One HTML page: a cover grid (items × users × methods), every measured table with bars, reward
    curves."""
    import torch

    from icg.presets import get_preset
    from icg.report import build_report

    if threads is not None:
        torch.set_num_threads(threads)
    for folder in run or []:
        if not folder.is_dir():
            raise ICGError(f"--run {folder}: not a folder (an `icg train adapter --out` folder)")
    index = build_report(
        get_preset(preset), load_data("ml-100k", None), out, results_dir=results, runs=run or [],
        n_items=items, seed=seed,
    )  # fmt: skip
    console.print(f"open [bold]{index}[/bold]")


@app.command("demo")
def demo_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder for the contact sheet and covers.")] = Path(
        "out/demo"
    ),
    preset: Annotated[str, typer.Option(help="Preset to demo (default: the embedded mini).")] = "mini",
    seed: Annotated[int, typer.Option(help="Row r uses seed + r for every column.")] = 0,
    threads: ThreadsOpt = 1,
) -> None:
    """Covers for 4 held-out ml-100k items × 3 contrasting real users, beside reference and rule-based."""
    import torch

    from icg.demo import run_demo

    if threads is not None:
        torch.set_num_threads(threads)

    sheet = run_demo(load_data("ml-100k", None), out, preset=preset, seed=seed)
    console.print(f"open [bold]{sheet}[/bold] (or {sheet.with_suffix('.png')})")


@app.command("generate")
def generate_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder for covers, JSON sidecars and index.html.")],
    preset: Annotated[
        str, typer.Option(help="mini (embedded default), sd15, flux, tiny, tiny-flux or a preset folder.")
    ] = "mini",
    title: Annotated[str | None, typer.Option(help="Item title (with --image).")] = None,
    image: Annotated[Path | None, typer.Option(help="Reference cover image of the item.")] = None,
    item_id: Annotated[
        list[str] | None, typer.Option("--item-id", help="Item of --dataset (repeatable).")
    ] = None,
    dataset: Annotated[str, typer.Option(help="Dataset of --item-id and --user-id.")] = "ml-100k",
    user_id: Annotated[list[str] | None, typer.Option("--user-id", help="Known user (repeatable).")] = None,
    profile: Annotated[
        list[str] | None, typer.Option("--profile", help="Cold-start user profile sentence (repeatable).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Cover k uses seed + k.")] = 0,
    steps: Annotated[int | None, typer.Option(help="DDIM steps (default: the preset's).")] = None,
    guidance: Annotated[float | None, typer.Option(help="Guidance scale (default: the preset's).")] = None,
    user_scale: Annotated[
        float, typer.Option(help="Personalization strength: 0 = context only, 1 = as trained, >1 stronger.")
    ] = 1.0,
    num_images: Annotated[int, typer.Option(help="Covers per (item, user).")] = 1,
    base_model: Annotated[
        str | None, typer.Option(help="Override the backbone (folder, id or file).")
    ] = None,
    base_config: Annotated[str | None, typer.Option(help="Config folder for a single-file backbone.")] = None,
    adapter: Annotated[str | None, typer.Option(help="Override the adapter folder.")] = None,
    user_encoder: Annotated[str | None, typer.Option(help="Override the user-encoder folder.")] = None,
    context_encoder: Annotated[str | None, typer.Option(help="Override the context encoder (MLLM).")] = None,
    unknown_user: Annotated[
        str, typer.Option(help="'error' or 'cold-start' for a --user-id the user encoder does not know.")
    ] = "error",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    speed: SpeedOpt = None,
) -> None:
    """Personalized covers for items × users → PNG + JSON sidecar per cover + index.html."""
    from icg.context import ContextCache
    from icg.generate import RunInfo, check_profiles, dataset_item, parse_users, read_image, write_covers
    from icg.loading import load_cover_pipeline
    from icg.pipeline import CoverItem
    from icg.presets import get_preset, icg_home
    from icg.speed import apply_speed_options
    from icg.validation import check_out_dir, check_seed, check_steps, check_title, check_user_scale

    if unknown_user not in ("error", "cold-start"):
        raise ICGError(f"--unknown-user must be 'error' or 'cold-start', got '{unknown_user}'")
    check_seed(seed)  # the same rules and messages as the API's
    check_steps(steps)
    check_user_scale(user_scale)
    items: list[CoverItem] = []
    if title is not None or image is not None:
        if title is None or image is None:
            raise ICGError("--title and --image go together: give both, or use --item-id with --dataset")
        items.append(CoverItem(title=check_title(title), image=read_image(image)))
    items += [dataset_item(dataset, i) for i in item_id or []]
    if not items:
        raise ICGError("no item: give --title and --image, or --item-id (with --dataset)")
    users = parse_users(user_id or [], profile or [])
    check_out_dir(out)
    spec = get_preset(preset).replace(
        base_model=base_model,
        base_config=base_config,
        adapter=adapter,
        user_encoder=user_encoder,
        context_encoder=context_encoder,
    )
    where, torch_dtype = device_and_dtype(device, dtype)
    pipe = apply_speed_options(
        load_cover_pipeline(spec, device=where, torch_dtype=torch_dtype), speed_options(where, speed)
    )
    # item context (explicit prompt + C_ref) is computed once per item and model, then read from disk
    pipe.context_encoder.cache = ContextCache(icg_home() / "context_cache")
    check_profiles(pipe, users)
    try:  # the pipeline raises ValueError for bad input, as diffusers pipelines do
        output = pipe(
            items,
            users,
            **spec.generation_config()
            .replace(num_inference_steps=steps, guidance_scale=guidance)
            .to_kwargs(),
            seed=seed,
            num_images_per_prompt=num_images,
            strict_users=unknown_user == "error",
            user_scale=user_scale,
        )
    except ValueError as exc:
        raise ICGError(str(exc)) from exc
    written = write_covers(output, out, RunInfo.from_spec(spec))
    console.print(f"wrote {len(written)} covers and [bold]{out / 'index.html'}[/bold]")


app.command("serve")(serve_cmd)
app.command("batch")(batch_cmd)


def main() -> None:
    """Entry point: user errors become one clear line and exit code 2, never a traceback."""
    try:
        app(standalone_mode=False)
    except ICGError as exc:
        console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except OSError as exc:  # a file boundary (disk full, read-only, a file where a folder goes): one line
        from icg.validation import os_error_line

        console.print(f"[bold red]error:[/bold red] {os_error_line(exc)}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:  # click usage errors carry their own exit code
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        from icg.validation import os_error_line, user_error_in_chain

        cause = user_error_in_chain(exc)  # e.g. a disk-full OSError raised inside a Ray worker
        if cause is None:
            raise
        text = os_error_line(cause) if isinstance(cause, OSError) else str(cause)
        console.print(f"[bold red]error:[/bold red] {text}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
