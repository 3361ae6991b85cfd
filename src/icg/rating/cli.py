"""`icg rate …`: build a blind rating study, serve it to raters, summarize the scores.

Registered in `icg.cli` with `app.add_typer(rate_app, name="rate")`.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from icg.loopback import is_loopback

rate_app = typer.Typer(help="Blind human rating of covers (paper Table 2 protocol).", no_args_is_help=True)
logger = logging.getLogger(__name__)

StudyOpt = Annotated[
    Path, typer.Option("--study", help="Study folder holding manifest.json (see `icg rate make-study`).")
]
DbOpt = Annotated[
    Path | None, typer.Option("--db", help="SQLite file of ratings (default: <study>/ratings.sqlite).")
]


@rate_app.command("serve")
def serve_cmd(
    study: StudyOpt,
    db: DbOpt = None,
    host: Annotated[
        str, typer.Option(help="Address to bind; loopback unless raters are remote.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = 8765,
) -> None:
    """Serve the rating page; each rater opens http://HOST:PORT/?token=TOKEN (their invite) and rates 1-3."""
    import uvicorn

    from icg.rating.app import create_app

    app = create_app(study, db)
    if not is_loopback(host):
        logger.warning(
            "binding %s: the rating page is reachable from other machines (invite tokens only)", host
        )
    loaded = app.state.study
    typer.echo(
        f"Rating page: http://{host}:{port}/?token=TOKEN  ({len(loaded.images)} covers, "
        f"{len(loaded.invites)} rater invites in {loaded.root / 'raters.json'}; Ctrl-C to stop)"
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")


@rate_app.command("summary")
def summary_cmd(
    study: StudyOpt,
    db: DbOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Per method: raters, ratings, mean of rater means and a 95% t-interval over raters."""
    from icg.errors import DataError
    from icg.rating.store import RatingStore
    from icg.rating.study import load_study
    from icg.rating.summary import CI_METHOD, summarize, summary_payload

    loaded = load_study(study)
    db_path = db if db is not None else loaded.default_db
    if not db_path.is_file():
        raise DataError("no ratings yet (run `icg rate serve` first)", path=db_path)
    ratings = RatingStore(db_path).all()
    rows = summarize(ratings, loaded.methods)
    n_raters = len({r.rater for r in ratings})
    if as_json:
        payload = summary_payload(rows, study=loaded.name, n_raters=n_raters, n_ratings=len(ratings))
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    table = Table(title=f"{loaded.name}: {len(ratings)} ratings by {n_raters} raters (scale 1-3)")
    for column in ("method", "raters", "ratings", "mean", "95% CI (raters)", "images"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in rows:
        mean = "-" if row.mean is None else f"{row.mean:.3f}"
        ci = "-" if row.ci_low is None else f"[{row.ci_low:.3f}, {row.ci_high:.3f}]"
        table.add_row(row.method, str(row.n_raters), str(row.n), mean, ci, str(row.n_images))
    table.caption = CI_METHOD
    Console().print(table)


@rate_app.command("make-study")
def make_study_cmd(
    out: Annotated[Path, typer.Argument(help="New, empty study folder.")],
    method: Annotated[
        list[str],
        typer.Option("--method", help="NAME=FOLDER of PNG/JPEG covers; repeat per method."),
    ],
    name: Annotated[str, typer.Option(help="Study name shown to raters.")] = "icg-rating",
    raters: Annotated[int, typer.Option(help="Rater invites (tokens) to create.", min=1)] = 10,
    size: Annotated[int, typer.Option(help="Every cover is re-encoded to SIZE x SIZE PNG.", min=8)] = 256,
) -> None:
    """Re-encode each method's covers under anonymized ids (item = file stem) and create rater invites."""
    from PIL import Image

    from icg.errors import DataError
    from icg.rating.study import RATERS_FILE, make_study
    from icg.validation import check_out_dir, check_unique, read_image

    images: dict[str, list[Image.Image]] = {}
    items: dict[str, list[str]] = {}
    specs = [spec.partition("=") for spec in method]
    for spec, (label, sep, folder) in zip(method, specs, strict=True):
        if not sep or not label.strip() or not folder:
            raise DataError(f"--method {spec!r}", expected="NAME=FOLDER")
    check_unique([label.strip() for label, _, _ in specs], "method")  # a second icg=B must not drop icg=A
    check_out_dir(out, "OUT")
    for label, _, folder in specs:
        if not Path(folder).is_dir():
            raise DataError("folder not found", path=folder)
        files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if not files:
            raise DataError("no .png/.jpg covers", path=folder)
        images[label.strip()] = [read_image(p) for p in files]  # a truncated file: one line naming it
        items[label.strip()] = [p.stem for p in files]
    study = make_study(out, images, items=items, name=name, raters=raters, size=size)
    typer.echo(
        f"{len(study.images)} covers from {len(images)} methods written to {study.root}; "
        f"{len(study.invites)} rater invites in {study.root / RATERS_FILE} (give each rater one token)"
    )


@rate_app.command("invite")
def invite_cmd(
    study: StudyOpt,
    raters: Annotated[int, typer.Option(help="Rater invites (tokens) to add.", min=1)] = 1,
) -> None:
    """Add rater invites to a study; prints each new rater id and its token."""
    from icg.rating.study import add_raters, load_study

    loaded = load_study(study)
    for rater, token in add_raters(loaded.root, raters):
        typer.echo(f"{rater}\t{token}")
