"""`icg report`: one static HTML page of a preset's covers, result tables, metric bars and reward curves.

The page is a self-contained folder (index.html + images/*.png; no external URL, no script) so it can be
opened from disk, archived, or attached to a review. Nothing on it is invented: a result file that is not
there is listed as "not measured yet" with the command that measures it. Result tables are rendered from the
JSON each evaluation wrote, through that evaluation's own Markdown writer (so the page and results/*.md
agree); a Markdown file without a known JSON is rendered as it is.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from icg.atomic import write_text_atomic
from icg.data.records import InteractionData
from icg.report.grid import CoverGrid, make_cover_grid
from icg.report.plots import bar_chart, result_panels, reward_curves

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Known:
    """A result file the report knows: its stem, title, Markdown writer and the command that makes it."""

    stem: str
    title: str
    command: str
    writer: str  # "module:function" rendering the JSON as Markdown ("" when only the .md exists)


KNOWN = (
    Known(
        "mini_eval",
        "Mini backbone quality",
        "icg evaluate mini --out results",
        "icg.evaluation.mini:mini_report_markdown",
    ),
    Known(
        "adapter_heldout",
        "Adapter on held-out users and items",
        "icg evaluate adapter --out results",
        "icg.evaluation.adapter_report:adapter_report_markdown",
    ),
    Known(
        "table1_mini",
        "Table 1: ICG vs baselines",
        "icg evaluate table1 --out results",
        "icg.evaluation.tables:table_markdown",
    ),
    Known(
        "table3_mini",
        "Table 3: number of meta tokens",
        "icg evaluate table3 --out results",
        "icg.evaluation.tables:table_markdown",
    ),
    Known(
        "table4_mini",
        "Table 4: meta tokens and user feature",
        "icg evaluate table4 --out results",
        "icg.evaluation.tables:table_markdown",
    ),
    Known(
        "table5_mini",
        "Table 5: reward ablation",
        "icg evaluate table5 --out results",
        "icg.evaluation.tables:table_markdown",
    ),
    Known(
        "table6_ml100k",
        "Table 6: personalized reward model",
        "icg evaluate table6 --dataset ml-100k --out DIR; table6.json/.md kept as results/table6_ml100k.*",
        "icg.evaluation.table6:markdown",
    ),
    Known(
        "table7_ml100k",
        "Table 7: generated covers as recommender features",
        "icg.evaluation.table7.run_table7; its table7.json/.md kept as results/table7_ml100k.*",
        "icg.evaluation.table7:table7_markdown",
    ),
    Known("adapter_guard", "Reward-hacking guard", "written by hand from guarded training runs", ""),
)

DESCRIPTIONS = {
    "mini": "The <b>mini</b> preset: the real model classes (diffusers UNet/VAE/DDIM, CLIP, Qwen2.5-VL) at "
    "small sizes, all trained here on MovieLens-100k items with rendered reference covers, offline, on a "
    "CPU; covers are 64² px. Its metrics are <b>stand-ins</b> on the mini CLIP, named as such "
    "(LPIPS-miniCLIP, FD-miniCLIP): their scales are their own, so compare directions, not values, with "
    "the paper. No HPSv2, PickScore or aesthetic head exists for it, so those rewards and metrics are "
    "absent.",
    "tiny": "The <b>tiny</b> preset: random components of the real classes at tiny sizes, for wiring "
    "checks only. <b>Its covers are noise.</b>",
    "sd15": "The <b>sd15</b> preset: Stable Diffusion 1.5, Qwen2.5-VL-7B-Instruct as the context encoder.",
}

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1400px;padding:0 1em;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
.meta{background:#f6f7f9;border:1px solid #e2e4e8;border-radius:6px;padding:.6em 1em}
.meta dt{font-weight:bold;float:left;clear:left;width:11em}
.meta dd{margin:0 0 .2em 11.5em;word-break:break-all}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #d0d4da;padding:.25em .5em;vertical-align:top}
th{background:#eef0f3} tbody tr:nth-child(even){background:#fafbfc}
table.grid td{text-align:center;padding:3px} table.grid th{font-size:.8em;max-width:9em}
table.grid td.item{text-align:left;max-width:11em;font-size:.85em}
img.cover{width:112px;height:112px;image-rendering:pixelated;display:block;margin:auto}
tr.prompt td{text-align:left;font-size:.8em;color:#444;background:#fff;border-top:none}
img.plot{max-width:100%;display:block;margin:.5em 0} .note{color:#8a4b00}
img.pixel{image-rendering:pixelated;max-width:100%} figure.sample{display:inline-block;margin:0 1em 0 0}
.missing{color:#777} code{background:#f1f1f1;padding:0 .2em}
"""


def _markdown_html(text: str) -> str:
    """Markdown → HTML with markdown-it-py (installed with rich); raw HTML in the text is escaped."""
    try:
        from markdown_it import MarkdownIt
    except ImportError:  # pragma: no cover - rich depends on it
        return f"<pre>{html.escape(text)}</pre>"
    # the page's own headings are h1-h3: a file's headings go below them
    text = re.sub(r"^(#{1,6}) ", lambda m: "#" * min(6, len(m.group(1)) + 3) + " ", text, flags=re.M)
    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def _copy_images(markdown: str, source: Path, out_dir: Path) -> str:
    """Copy the local images a Markdown file shows into images/results/ and point the text at the copies."""

    def copy(match: re.Match) -> str:
        alt, target = match.group(1), match.group(2)
        file = source / target
        if "://" in target or not file.is_file():
            return f"*(image {html.escape(target)} not found)*"
        dest = out_dir / "images" / "results" / file.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, dest)
        return f"![{alt}](images/results/{file.name})"

    return re.sub(r"!\[([^\]]*)\]\(([^)\s]+)\)", copy, markdown)


def _writer(spec: str) -> Callable[[dict], str] | None:
    if not spec:
        return None
    import importlib

    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


@dataclass
class Section:
    stem: str
    title: str
    body: str  # HTML
    measured: bool


def _result_section(known: Known, results_dir: Path, out_dir: Path) -> Section:
    """One result: bars from its JSON and its table as its own writer prints it; or 'not measured yet'."""
    json_file, md_file = results_dir / f"{known.stem}.json", results_dir / f"{known.stem}.md"
    parts, markdown = [], None
    if json_file.is_file():
        result = json.loads(json_file.read_text(encoding="utf-8"))
        panels = result_panels(known.stem, result)
        if panels:
            plot = bar_chart(
                panels,
                out_dir / "images" / "plots" / f"{known.stem}.png",
                f"{known.title} — ours ({known.stem}.json)",
            )
            parts.append(f'<img class="plot" src="images/plots/{plot.name}" alt="{known.stem} metric bars">')
        try:
            writer = _writer(known.writer)
            markdown = writer(result) if writer is not None else None
        except (KeyError, TypeError, ValueError, IndexError, ImportError) as err:
            logger.warning(
                "%s: its writer failed (%s); using the Markdown file or the raw rows", json_file, err
            )
        if markdown is None and not md_file.is_file():
            markdown = _rows_markdown(result)
    if markdown is None and md_file.is_file():
        markdown = md_file.read_text(encoding="utf-8")
    if markdown is None:
        return Section(known.stem, known.title, "", measured=False)
    parts.append(_enlarge_images(_markdown_html(_copy_images(markdown, results_dir, out_dir)), out_dir))
    return Section(known.stem, known.title, "\n".join(parts), measured=True)


def _rows_markdown(result: dict) -> str:
    """A {"rows": {method: {metric: value}}} result printed plainly (a JSON no writer could read)."""
    rows = result.get("rows")
    if not isinstance(rows, dict) or not rows:
        return "```\n" + json.dumps(result, indent=2)[:4000] + "\n```\n"
    metrics = list(dict.fromkeys(k for r in rows.values() for k in r if k != "note"))
    lines = ["| method | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    lines += [f"| {n} | " + " | ".join(str(r.get(m, "–")) for m in metrics) + " |" for n, r in rows.items()]
    return "\n".join(lines) + "\n"


def _grid_html(grid: CoverGrid) -> str:
    e = html.escape
    head1 = ['<th rowspan="2">item</th>']
    groups: list[tuple[str, int, bool]] = []  # (method, columns, per user)
    for c in grid.columns:
        if groups and groups[-1][0] == c.method and c.user:
            groups[-1] = (c.method, groups[-1][1] + 1, True)
        else:
            groups.append((c.method, 1, bool(c.user)))
    for method, span, per_user in groups:
        head1.append(
            f'<th colspan="{span}">{e(method)}</th>' if per_user else f'<th rowspan="2">{e(method)}</th>'
        )
    head2 = "".join(f"<th>{e(c.user)}<br><small>{e(c.note)}</small></th>" for c in grid.columns if c.user)
    body = []
    for row in grid.rows:
        cells = "".join(
            f'<td><img class="cover" src="{e(src)}" alt="{e(row.title)}: {e(c.method)} {e(c.user)}"></td>'
            for c, src in zip(grid.columns, row.images, strict=True)
        )
        item = f'<td class="item" rowspan="2"><b>{e(row.title)}</b><br>{e(", ".join(row.genres))}</td>'
        body.append(f"<tr>{item}{cells}</tr>")
        body.append(
            f'<tr class="prompt"><td colspan="{len(grid.columns)}">explicit prompt: '
            f"<i>{e(row.prompt)}</i></td></tr>"
        )
    notes = "".join(f'<p class="note">{e(n)}</p>' for n in grid.notes)
    return (
        f"<p>{len(grid.rows)} held-out items (the mini CLIP's test split) × 3 users who lean towards a genre "
        f"× methods. Covers are {grid.size}² px, shown enlarged; every cover of a row starts from the same "
        f"noise (seed {grid.seed} + row), so differences along a row come from the conditioning alone. "
        "Rule-based: the explicit prompt into the plain backbone (adapter off). Context only: the adapter "
        "with the item's meta tokens, no user. ICG: meta tokens + the user's tokens. PMG: rule-based + the "
        f"user's preference keywords in the prompt. Generated in {grid.seconds} s.</p>{notes}"
        f'<table class="grid"><thead><tr>{"".join(head1)}</tr><tr>{head2}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _run_html(run: Path, out_dir: Path, index: int) -> str:
    """Reward curves of one adapter training run, its settings, and its first and last sample grids."""
    e = html.escape
    file = run / "metrics.json"
    if not file.is_file():
        return f'<h3>{e(run.name)}</h3><p class="missing">{e(str(file))} not found: no curves.</p>'
    metrics = json.loads(file.read_text(encoding="utf-8"))
    history = metrics.get("history") or []
    name = f"run{index}_{re.sub(r'[^A-Za-z0-9_.-]', '_', run.name)}"
    parts = [f"<h3>{e(run.name)} <small>({e(str(run))})</small></h3>"]
    facts = {
        k: metrics.get(k)
        for k in (
            "stage",
            "rewards",
            "steps_completed",
            "steps",
            "denoise_weight",
            "completed",
            "stopped_by_guard",
            "seconds",
        )
    }
    parts.append(
        "<p>"
        + "; ".join(f"{e(k)}: <code>{e(json.dumps(v))}</code>" for k, v in facts.items() if v is not None)
        + "</p>"
    )
    if not history:
        parts.append('<p class="missing">metrics.json has no history: no curves.</p>')
        return "".join(parts)
    checks = (metrics.get("guard") or {}).get("checks") if isinstance(metrics.get("guard"), dict) else None
    plot = reward_curves(history, out_dir / "images" / "runs" / f"{name}.png", run.name, checks=checks)
    parts.append(f'<img class="plot" src="images/runs/{plot.name}" alt="{e(run.name)} reward curves">')
    samples = sorted((run / "samples").glob("*.png")) if (run / "samples").is_dir() else []
    for sample in dict.fromkeys([*samples[:1], *samples[-1:]]):
        dest = out_dir / "images" / "runs" / f"{name}_{sample.name}"
        shutil.copyfile(sample, dest)
        parts.append(
            f'<figure class="sample"><img class="pixel" src="images/runs/{e(dest.name)}" '
            f'alt="{e(sample.stem)}" width="{_shown_width(dest, limit=600)}"><figcaption>{e(sample.stem)} '
            "(held-out samples)</figcaption></figure>"
        )
    return "".join(parts)


def _shown_width(file: Path, limit: int = 1000) -> int:
    """Small cover grids are shown enlarged (pixelated) 2× or 3×, within `limit` px."""
    from PIL import Image

    with Image.open(file) as image:
        width = image.width
    return width * max(1, min(3, limit // width))


def _enlarge_images(text: str, out_dir: Path) -> str:
    """Give the images a rendered Markdown file shows their enlarged width."""

    def widen(match: re.Match) -> str:
        return f'<img class="pixel" width="{_shown_width(out_dir / match.group(1))}" src="{match.group(1)}"'

    return re.sub(r'<img src="(images/results/[^"]+)"', widen, text)


def _link(target: Path, out_dir: Path, repo: Path | None) -> str:
    """A relative link when the report sits inside the repository, the bare name otherwise."""
    if repo is not None and out_dir.resolve().is_relative_to(repo):
        rel = os.path.relpath(target.resolve(), out_dir.resolve())
        return f'<a href="{html.escape(rel)}">{html.escape(str(target.resolve().relative_to(repo)))}</a>'
    return f"<code>{html.escape(target.name)}</code>"


def _header(spec, data: InteractionData) -> str:
    from icg.machine import machine

    e = html.escape
    box = machine()
    fields = {
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": f"{box['processor']}, {box['cpu_count']} cores, {box['platform']}, torch "
        f"{box['torch']} ({box['torch_threads']} thread(s))",
        "dataset": f"{data.name}: {len(data.items)} items",
    }
    fields |= {
        k: str(getattr(spec, k))
        for k in (
            "backbone",
            "base_model",
            "context_encoder",
            "user_encoder",
            "adapter",
            "clip",
            "reward_model",
            "reward_judge",
        )
        if getattr(spec, k) is not None
    }
    generation = spec.generation_config()
    fields["generation"] = (
        f"DDIM {generation.num_inference_steps} steps, guidance {generation.guidance_scale}, "
        f"{spec.num_meta_tokens} meta / {spec.num_context_tokens} context / "
        f"{spec.num_user_tokens} user tokens, explicit prompt ≤ "
        f"{generation.max_prompt_tokens} tokens"
    )
    about = DESCRIPTIONS.get(spec.name, f"Preset <b>{e(spec.name)}</b>.")
    rows = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in fields.items())
    return f'<div class="meta"><p>{about}</p><dl>{rows}</dl></div>'


def build_report(
    spec,
    data: InteractionData,
    out_dir: Path,
    *,
    results_dir: Path = Path("results"),
    runs: Sequence[Path] = (),
    n_items: int = 4,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write out_dir/index.html (+ images/) for `spec`: cover grid, result tables and bars, reward curves."""
    out_dir, results_dir = Path(out_dir), Path(results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    grid = make_cover_grid(spec, data, out_dir, n_items=n_items, seed=seed, progress=progress)
    known_stems = {k.stem for k in KNOWN}
    extra = sorted({p.stem for p in results_dir.glob("*.md")} | {p.stem for p in results_dir.glob("*.json")})
    others = [Known(s, s, "", "") for s in extra if s not in known_stems]
    sections = [_result_section(k, results_dir, out_dir) for k in (*KNOWN, *others)]
    measured = [s for s in sections if s.measured]
    missing = [(s, k) for s, k in zip(sections, (*KNOWN, *others), strict=True) if not s.measured]
    e = html.escape
    toc = "".join(f'<li><a href="#{e(s.stem)}">{e(s.title)}</a></li>' for s in measured)
    body = [
        f"<h1>ICG report — {e(spec.name)} preset</h1>",
        _header(spec, data),
        f'<ul><li><a href="#covers">Covers</a></li><li>Results<ul>{toc}</ul></li>'
        '<li><a href="#runs">Adapter training runs</a></li><li><a href="#files">Files</a></li></ul>',
        '<h2 id="covers">Covers: held-out items × users × methods</h2>',
        _grid_html(grid),
        "<h2>Results</h2>",
    ]
    body += [f'<section id="{e(s.stem)}"><h3>{e(s.title)}</h3>{s.body}</section>' for s in measured]
    if missing:
        body.append('<h3 id="missing">Not measured yet</h3><ul class="missing">')
        body += [
            f"<li><b>{e(k.title)}</b> (<code>{e(k.stem)}.json</code>): not measured yet — "
            f"<code>{e(k.command)}</code></li>"
            for _, k in missing
        ]
        body.append("</ul>")
    body.append('<h2 id="runs">Adapter training runs</h2>')
    body += [_run_html(Path(r), out_dir, i) for i, r in enumerate(runs)] or [
        '<p class="missing">No training run given (<code>--run FOLDER</code>).</p>'
    ]
    repo = (
        results_dir.resolve().parent if (results_dir.resolve().parent / "pyproject.toml").is_file() else None
    )
    files = sorted(results_dir.glob("*.md"))
    bench = results_dir.resolve().parent / "bench" / "RESULTS.md"
    files += [bench] if bench.is_file() else []
    body.append(
        '<h2 id="files">Files</h2><ul>'
        + "".join(f"<li>{_link(f, out_dir, repo)}</li>" for f in files)
        + "</ul>"
    )
    page = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>ICG report — {e(spec.name)}'
        f"</title><style>{CSS}</style></head><body>{''.join(body)}</body></html>\n"
    )
    index = write_text_atomic(out_dir / "index.html", page)
    logger.info("report: %s (%d results, %d not measured yet)", index, len(measured), len(missing))
    return index
