"""One painter per motif kind: turns a GenreStyle's motif into shapes on the cover (drawn by render.py)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from PIL import ImageDraw

from icg.data.covers.styles import Composition, GenreStyle, Point, rgba


def star_points(cx: float, cy: float, r_out: float, r_in: float, n: int, rot: float = 0.0) -> list[Point]:
    """Polygon of an n-pointed star (also used for explosions with a jittered radius)."""
    pts = []
    for i in range(2 * n):
        r = r_out if i % 2 == 0 else r_in
        a = rot + math.pi * i / n - math.pi / 2
        pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return pts


def heart_points(cx: float, cy: float, r: float) -> list[Point]:
    """The classic parametric heart, width about 2r."""
    pts = []
    for i in range(28):
        t = 2 * math.pi * i / 28
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((cx + x * r / 16, cy - y * r / 16))
    return pts


def _circle(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, **kw: object) -> None:
    d.ellipse([cx - r, cy - r, cx + r, cy + r], **kw)


def _glow(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, colour: str, peak: int = 90) -> None:
    """A soft light: concentric translucent discs (12 steps, so the rings do not show)."""
    for k in range(12, 0, -1):
        _circle(d, cx, cy, r * k / 12, fill=rgba(colour, peak // 12 + 2))


# ------------------------------------------------------------------------------------------------- painters
Painter = Callable[[ImageDraw.ImageDraw, int, GenreStyle, Composition, random.Random], None]


def _drips(d: ImageDraw.ImageDraw, s: int, st: GenreStyle, c: Composition, r: random.Random) -> None:
    p = st.palette
    _circle(d, c.focus_x * s, 0.42 * s, 0.13 * s, fill=rgba(p[2]))  # pale moon
    hor = c.horizon * s
    d.rectangle([0, hor, s, s], fill=rgba(p[3]))
    for _ in range(r.randint(2, 4)):  # tombstones / dead trees
        x, w = r.uniform(0, s), r.uniform(0.05, 0.1) * s
        h = r.uniform(0.08, 0.18) * s
        d.rounded_rectangle([x, hor - h, x + w, hor + 2], radius=w / 2, fill=rgba(p[3]))
    d.rectangle([0, 0, s, 0.05 * s], fill=rgba(p[0]))
    x = -r.uniform(0, 0.05) * s
    while x < s:
        w, length = r.uniform(0.025, 0.07) * s, r.uniform(0.08, 0.5) * s
        colour = rgba(p[r.randint(0, 1)])
        d.rectangle([x, 0, x + w, length], fill=colour)
        d.ellipse([x - 0.2 * w, length - 0.6 * w, x + 1.2 * w, length + 0.8 * w], fill=colour)
        if r.random() < 0.3:
            _circle(d, x + w / 2, length + r.uniform(0.05, 0.12) * s, w * 0.45, fill=colour)
        x += w + r.uniform(0.0, 0.05) * s


def _blinds(d: ImageDraw.ImageDraw, s: int, st: GenreStyle, c: Composition, r: random.Random) -> None:
    p = st.palette
    slope = math.tan(0.35 + c.tilt)
    y = -s * slope
    while y < s * 1.2:  # light through venetian blinds: slanted bright bars
        h = r.uniform(0.04, 0.07) * s
        d.polygon([(0, y), (s, y + s * slope), (s, y + s * slope + h), (0, y + h)], fill=rgba(p[0], 150))
        y += h * r.uniform(1.7, 2.3)
    cx, base = c.focus_x * s, s * 1.02  # a man in a fedora, hard black silhouette
    d.polygon(
        [(cx - 0.26 * s, base), (cx - 0.18 * s, 0.66 * s), (cx + 0.18 * s, 0.66 * s), (cx + 0.26 * s, base)],
        fill=rgba(p[1]),
    )
    _circle(d, cx, 0.56 * s, 0.09 * s, fill=rgba(p[1]))
    d.ellipse([cx - 0.17 * s, 0.47 * s, cx + 0.17 * s, 0.52 * s], fill=rgba(p[1]))
    d.rectangle([cx - 0.09 * s, 0.4 * s, cx + 0.09 * s, 0.5 * s], fill=rgba(p[1]))
    d.line([(cx - 0.09 * s, 0.48 * s), (cx + 0.09 * s, 0.48 * s)], fill=rgba(p[2]), width=max(1, s // 60))


def _tape(d: ImageDraw.ImageDraw, s: int, st: GenreStyle, c: Composition, r: random.Random) -> None:
    p = st.palette
    _glow(d, 0.1 * s, 0.1 * s, 0.35 * s, p[3], 120)  # police lights
    _glow(d, 0.9 * s, 0.1 * s, 0.35 * s, p[4], 120)
    hor, x = c.horizon * s, 0.0
    while x < s:  # skyline with lit windows
        w, h = r.uniform(0.08, 0.16) * s, r.uniform(0.15, 0.45) * s
        d.rectangle([x, hor - h, x + w, s], fill=rgba(p[2]))
        for wy in range(int(hor - h + 0.03 * s), int(hor), max(2, int(0.05 * s))):
            for wx in (x + 0.2 * w, x + 0.6 * w):
                if r.random() < 0.35:
                    d.rectangle([wx, wy, wx + 0.15 * w, wy + 0.02 * s], fill=rgba(p[0], 200))
        x += w + r.uniform(0, 0.02) * s
    y0, k, h = r.uniform(0.35, 0.55) * s, math.tan(-0.3 + c.tilt), 0.09 * s  # crime-scene tape
    d.polygon([(0, y0), (s, y0 + s * k), (s, y0 + s * k + h), (0, y0 + h)], fill=rgba(p[0]))
    for i in range(9):
        x0 = (i + 0.25) * s / 9
        d.polygon(
            [
                (x0, y0 + x0 * k + 0.25 * h),
                (x0 + 0.06 * s, y0 + (x0 + 0.06 * s) * k + 0.25 * h),
                (x0 + 0.06 * s, y0 + (x0 + 0.06 * s) * k + 0.75 * h),
                (x0, y0 + x0 * k + 0.75 * h),
            ],
            fill=rgba(p[1]),
        )


def _crosshair(d: ImageDraw.ImageDraw, s: int, st: GenreStyle, c: Composition, r: random.Random) -> None:
    p = st.palette
    cx, cy, lw = c.focus_x * s, c.focus_y * s, max(1, s // 90)
    for _ in range(r.randint(7, 12)):  # shattered glass
        a, length = r.uniform(0, 2 * math.pi), r.uniform(0.3, 0.8) * s
        pts, x, y = [(cx, cy)], cx, cy
        for _ in range(3):
            a += r.uniform(-0.3, 0.3)
            x, y = x + math.cos(a) * length / 3, y + math.sin(a) * length / 3
            pts.append((x, y))
        d.line(pts, fill=rgba(p[1], 170), width=lw)
    for k in range(4, 0, -1):
        _circle(d, cx, cy, 0.07 * s * k, outline=rgba(p[0] if k % 2 else p[1]), width=2 * lw)
    d.line([(cx - 0.36 * s, cy), (cx + 0.36 * s, cy)], fill=rgba(p[0]), width=2 * lw)
    d.line([(cx, cy - 0.36 * s), (cx, cy + 0.36 * s)], fill=rgba(p[0]), width=2 * lw)
    for _ in range(r.randint(2, 4)):
        _circle(
            d,
            cx + r.uniform(-0.3, 0.3) * s,
            cy + r.uniform(-0.3, 0.3) * s,
            r.uniform(0.01, 0.03) * s,
            fill=rgba(p[0]),
        )


def _fog(d: ImageDraw.ImageDraw, s: int, st: GenreStyle, c: Composition, r: random.Random) -> None:
    p = st.palette
    _circle(d, (1 - c.focus_x) * s, 0.25 * s, 0.1 * s, fill=rgba(p[0], 200))
    for _ in range(r.randint(4, 7)):  # bare trees
        x, w = r.uniform(0, s), r.uniform(0.015, 0.04) * s
        d.rectangle([x, r.uniform(0.15, 0.45) * s, x + w, s], fill=rgba(p[2]))
    cx, cy, k = c.focus_x * s, c.focus_y * s, 0.1 * s  # a golden keyhole
    _circle(d, cx, cy, 1.3 * k, fill=rgba(p[1]))
    _circle(d, cx, cy - 0.1 * k, 0.55 * k, fill=rgba(p[2]))
    d.polygon(
        [
            (cx - 0.3 * k, cy),
            (cx + 0.3 * k, cy),
            (cx + 0.55 * k, cy + 1.0 * k),
            (cx - 0.55 * k, cy + 1.0 * k),
        ],
        fill=rgba(p[2]),
    )
    for _ in range(r.randint(5, 8)):  # fog banks
        y, w = r.uniform(0.35, 1.0) * s, r.uniform(0.5, 1.2) * s
        x = r.uniform(-0.3, 0.8) * s
        d.ellipse([x, y - 0.05 * s, x + w, y + 0.05 * s], fill=rgba(p[0], 60))


def _grid(d: ImageDraw.ImageDraw, s: int, st: GenreStyle, c: Composition, r: random.Random) -> None:
    p = st.palette
    hor, vx, lw = c.horizon * s, c.focus_x * s, max(1, s // 100)
    for _ in range(int(40 + 30 * r.random())):
        x, y = r.uniform(0, s), r.uniform(0, hor)
        _circle(d, x, y, r.uniform(0.002, 0.007) * s, fill=rgba(p[2]))
    sr = 0.2 * s  # striped synthwave sun on the horizon
    _circle(d, vx, hor - 0.02 * s, sr, fill=rgba(p[1]))
    for i in range(5):
        y = hor - 0.02 * s - sr * (0.55 - 0.14 * i)
        d.rectangle([vx - sr, y, vx + sr, y + 0.012 * s * (i + 1)], fill=rgba(st.background[1]))
    d.rectangle([0, hor, s, s], fill=rgba(st.background[0]))
    for i in range(-10, 11):  # perspective grid
        d.line([(vx, hor), (vx + i * 0.22 * s, s * 1.3)], fill=rgba(p[0]), width=lw)
    y, gap = hor, 0.015 * s
    while y < s:
        d.line([(0, y), (s, y)], fill=rgba(p[0]), width=lw)
        gap *= 1.45
        y += gap
    px, py = r.uniform(0.15, 0.85) * s, r.uniform(0.1, 0.3) * s  # ringed planet
    _circle(d, px, py, 0.06 * s, fill=rgba(p[0]))
    d.ellipse([px - 0.12 * s, py - 0.02 * s, px + 0.12 * s, py + 0.02 * s], outline=rgba(p[2]), width=lw)


def _spotlights(d: ImageDraw.ImageDraw, s: int, st: GenreStyle, c: Composition, r: random.Random) -> None:
    p = st.palette
    floor = c.horizon * s
    for _ in range(3):  # cones of light from the rig
        top, bottom, half = r.uniform(0, 1) * s, r.uniform(0.2, 0.8) * s, r.uniform(0.1, 0.18) * s
        d.polygon(
            [(top - 0.02 * s, 0), (top + 0.02 * s, 0), (bottom + half, floor), (bottom - half, floor)],
            fill=rgba(p[0], 80),
        )
        d.ellipse([bottom - half, floor - 0.03 * s, bottom + half, floor + 0.03 * s], fill=rgba(p[0], 140))
    d.rectangle([0, floor + 0.03 * s, s, s], fill=rgba(p[2]))
    for _ in range(r.randint(3, 6)):  # music notes
        x, y, h = r.uniform(0.1, 0.85) * s, r.uniform(0.2, 0.6) * s, r.uniform(0.08, 0.14) * s
        colour = rgba(p[r.choice((0, 1))])
        d.ellipse([x - 0.045 * s, y + h - 0.03 * s, x + 0.005 * s, y + h + 0.012 * s], fill=colour)
        d.rectangle([x - 0.004 * s, y, x + 0.005 * s, y + h], fill=colour)
        d.polygon(
            [(x, y), (x + 0.05 * s, y + 0.04 * s), (x + 0.05 * s, y + 0.06 * s), (x, y + 0.025 * s)],
            fill=colour,
        )


def _silhouette(d: ImageDraw.ImageDraw, s: int, st: GenreStyle, c: Composition, r: random.Random) -> None:
    p = st.palette
    cx = c.focus_x * s
    _glow(d, cx + 0.08 * s, 0.42 * s, 0.38 * s, p[0], 200)
    for _ in range(int(25 + 20 * r.random())):  # rain
        x, y, length = r.uniform(0, s), r.uniform(0, s), r.uniform(0.04, 0.1) * s
        d.line([(x, y), (x - 0.2 * length, y + length)], fill=rgba(p[2], 110), width=max(1, s // 200))
    figures = [(cx, 1.0)]
    if r.random() < 0.45:  # sometimes a second, nearer figure: a couple, a family
        figures.insert(0, (cx + r.choice((-1, 1)) * r.uniform(0.22, 0.3) * s, r.uniform(0.75, 0.9)))
    for fx, k in figures:
        top = 0.36 * s + (1 - k) * 0.3 * s
        d.ellipse([fx - 0.3 * k * s, top + 0.36 * k * s, fx + 0.3 * k * s, 1.25 * s], fill=rgba(p[1]))
        d.rectangle(
            [fx - 0.05 * k * s, top + 0.2 * k * s, fx + 0.05 * k * s, top + 0.42 * k * s], fill=rgba(p[1])
        )
        d.ellipse([fx - 0.11 * k * s, top, fx + 0.11 * k * s, top + 0.27 * k * s], fill=rgba(p[1]))


def _mountains(d: ImageDraw.ImageDraw, s: int, st: GenreStyle, c: Composition, r: random.Random) -> None:
    p = st.palette
    _circle(d, c.focus_x * s, c.horizon * s - 0.25 * s, 0.09 * s, fill=rgba(p[3]))
    for layer in range(3):
        base = c.horizon * s + layer * 0.1 * s
        pts, x = [(0.0, float(s))], 0.0
        while x <= s:
            pts.append((x, base - r.uniform(0.05, 0.3) * s * (1 - 0.25 * layer)))
            x += r.uniform(0.12, 0.25) * s
        pts += [(float(s), base - 0.1 * s), (float(s), float(s))]
        d.polygon(pts, fill=rgba(p[layer]))
    for _ in range(r.randint(2, 4)):  # birds
        x, y, w = r.uniform(0.1, 0.9) * s, r.uniform(0.1, 0.3) * s, r.uniform(0.02, 0.04) * s
        d.line([(x - w, y - w / 2), (x, y), (x + w, y - w / 2)], fill=rgba(p[0]), width=max(1, s // 120))


def _cartoon(d: ImageDraw.ImageDraw, s: int, st: GenreStyle, c: Composition, r: random.Random) -> None:
    p, ink, lw = st.palette, rgba(st.outline), max(2, s // 60)
    for _ in range(2):  # clouds
        x, y = r.uniform(0.05, 0.7) * s, r.uniform(0.05, 0.6) * s
        for dx, rr in ((0, 0.06), (0.07, 0.08), (0.15, 0.06)):
            _circle(d, x + dx * s, y, rr * s, fill=rgba(p[3]), outline=ink, width=lw)
    d.rounded_rectangle(
        [-0.1 * s, c.horizon * s, 1.1 * s, 1.2 * s], radius=0.2 * s, fill=rgba(p[2]), outline=ink, width=lw
    )
    _circle(
        d,
        r.uniform(0.15, 0.85) * s,
        c.horizon * s - 0.08 * s,
        0.09 * s,
        fill=rgba(p[0]),
        outline=ink,
        width=lw,
    )
    d.polygon(
        star_points(c.focus_x * s, c.focus_y * s, 0.2 * s, 0.09 * s, 5, r.uniform(-0.3, 0.3)),
        fill=rgba(p[1]),
        outline=ink,
        width=lw,
    )


def _bubbles(d: ImageDraw.ImageDraw, s: int, st: GenreStyle, c: Composition, r: random.Random) -> None:
    p = st.palette
    cx, cy = c.focus_x * s, c.horizon * s + 0.1 * s
    for k, colour in enumerate(p[:5]):  # rainbow of pastel arcs
        rr = (0.42 - 0.05 * k) * s
        _circle(d, cx, cy, rr, fill=rgba(colour))
    _circle(d, cx, cy, 0.17 * s, fill=rgba(st.background[1]))
    for _ in range(r.randint(5, 9)):
        x, y, rr = r.uniform(0, s), r.uniform(0, s), r.uniform(0.03, 0.08) * s
        colour = rgba(r.choice(p), 230)
        if r.random() < 0.5:
            _circle(d, x, y, rr, fill=colour)
        else:
            d.rounded_rectangle([x - rr, y - rr, x + rr, y + rr], radius=rr * 0.5, fill=colour)


def _dots(d: ImageDraw.ImageDraw, s: int, st: GenreStyle, c: Composition, r: random.Random) -> None:
    p, step = st.palette, 0.1 * s
    off = r.uniform(0, step)
    for i in range(11):
        for j in range(11):
            _circle(d, off + i * step + (j % 2) * step / 2, off + j * step, 0.018 * s, fill=rgba(p[3], 160))
    y, zig = c.horizon * s, 0.05 * s
    d.line(
        [(i * zig, y + (i % 2) * zig) for i in range(int(s / zig) + 2)],
        fill=rgba(p[0]),
        width=max(2, s // 40),
    )
    cx, cy, rr, lw = c.focus_x * s, c.focus_y * s, 0.17 * s, max(2, s // 50)  # a grinning face
    _circle(d, cx, cy, rr, fill=rgba(p[1]), outline=rgba(p[2]), width=lw)
    for ex in (-0.35, 0.35):
        _circle(d, cx + ex * rr, cy - 0.25 * rr, 0.1 * rr, fill=rgba(p[2]))
    d.chord([cx - 0.6 * rr, cy - 0.3 * rr, cx + 0.6 * rr, cy + 0.65 * rr], 0, 180, fill=rgba(p[2]))
    for _ in range(r.randint(8, 14)):  # confetti
        x, y, w = r.uniform(0, s), r.uniform(0, s), r.uniform(0.015, 0.03) * s
        d.polygon(star_points(x, y, w * 1.5, w * 0.6, 2, r.uniform(0, 3)), fill=rgba(r.choice(p[:3])))


def _frames(d: ImageDraw.ImageDraw, s: int, st: GenreStyle, c: Composition, r: random.Random) -> None:
    p = st.palette
    y0 = c.horizon * s - 0.12 * s  # film strip
    d.rectangle([0, y0, s, y0 + 0.24 * s], fill=rgba(p[0]))
    x = -r.uniform(0, 0.06) * s
    while x < s:
        for yy in (y0 + 0.015 * s, y0 + 0.195 * s):
            d.rectangle([x, yy, x + 0.03 * s, yy + 0.03 * s], fill=rgba(st.background[0]))
        x += 0.06 * s
    for i in range(3):
        fx = 0.04 * s + i * 0.32 * s
        d.rectangle([fx, y0 + 0.06 * s, fx + 0.28 * s, y0 + 0.18 * s], fill=rgba(p[2 if i != 1 else 1]))
        d.line(
            [(fx, y0 + 0.13 * s), (fx + 0.28 * s, y0 + r.uniform(0.1, 0.16) * s)], fill=rgba(p[0]), width=1
        )
    bx = r.uniform(0.28, 0.45) * s  # a single Swiss-style red block, on the side away from the title
    by = y0 + 0.27 * s if c.title_pos == "top" else r.uniform(0.05, 0.2) * s
    d.rectangle([bx, by, bx + 0.3 * s, by + 0.08 * s], fill=rgba(p[1]))


def _castle(d: ImageDraw.ImageDraw, s: int, st: GenreStyle, c: Composition, r: random.Random) -> None:
    p = st.palette
    mx, my, mr = (1 - c.focus_x) * s, 0.22 * s, 0.09 * s  # crescent moon
    _circle(d, mx, my, mr, fill=rgba(p[1]))
    _circle(d, mx + 0.4 * mr, my - 0.2 * mr, mr * 0.85, fill=rgba(st.background[0]))
    hor, cx = c.horizon * s, c.focus_x * s
    d.rectangle([0, hor, s, s], fill=rgba(p[0]))
    for dx, h, w in ((-0.2, 0.3, 0.08), (0.0, 0.42, 0.1), (0.2, 0.3, 0.08), (-0.1, 0.22, 0.2)):
        x0, x1, top = cx + (dx - w / 2) * s, cx + (dx + w / 2) * s, hor - h * s
        d.rectangle([x0, top, x1, hor + 1], fill=rgba(p[0]))
        d.polygon(
            [(x0 - 0.01 * s, top), (x1 + 0.01 * s, top), ((x0 + x1) / 2, top - 0.1 * s)], fill=rgba(p[0])
        )
    for _ in range(r.randint(6, 12)):  # sparkles
        x, y, rr = r.uniform(0, s), r.uniform(0, hor), r.uniform(0.015, 0.04) * s
        d.polygon(star_points(x, y, rr, rr * 0.25, 4), fill=rgba(p[1]))


def _hearts(d: ImageDraw.ImageDraw, s: int, st: GenreStyle, c: Composition, r: random.Random) -> None:
    p = st.palette
    for _ in range(r.randint(8, 14)):
        x, y, rr = r.uniform(0, s), r.uniform(0, s), r.uniform(0.02, 0.06) * s
        d.polygon(heart_points(x, y, rr), fill=rgba(r.choice(p[1:3]), 200))
    _glow(d, c.focus_x * s, c.focus_y * s, 0.35 * s, p[2], 120)
    d.polygon(heart_points(c.focus_x * s, c.focus_y * s, 0.22 * s), fill=rgba(p[0]))
    d.polygon(
        heart_points(c.focus_x * s - 0.07 * s, c.focus_y * s - 0.07 * s, 0.05 * s), fill=rgba(p[2], 170)
    )


def _camo(d: ImageDraw.ImageDraw, s: int, st: GenreStyle, c: Composition, r: random.Random) -> None:
    p = st.palette
    _glow(d, c.focus_x * s, c.horizon * s, 0.3 * s, p[3], 150)  # distant fire
    for _ in range(r.randint(10, 16)):
        x, y, rr = r.uniform(-0.1, 1.1) * s, r.uniform(c.horizon, 1.1) * s, r.uniform(0.06, 0.14) * s
        pts = [
            (
                x + rr * r.uniform(0.6, 1.3) * math.cos(a / 7 * 2 * math.pi),
                y + rr * r.uniform(0.4, 0.9) * math.sin(a / 7 * 2 * math.pi),
            )
            for a in range(7)
        ]
        d.polygon(pts, fill=rgba(p[r.randint(0, 2)]))
    for _ in range(r.randint(3, 5)):  # smoke
        x, y, rr = r.uniform(0, s), r.uniform(0.1, 0.5) * s, r.uniform(0.06, 0.12) * s
        _circle(d, x, y, rr, fill=rgba(p[4], 90))
    y, step = c.horizon * s - 0.03 * s, 0.04 * s  # barbed wire
    d.line(
        [(i * step, y + (i % 2) * step * 0.6) for i in range(int(s / step) + 2)],
        fill=rgba(p[2]),
        width=max(1, s // 100),
    )


def _desert(d: ImageDraw.ImageDraw, s: int, st: GenreStyle, c: Composition, r: random.Random) -> None:
    p = st.palette
    hor = c.horizon * s
    _circle(d, c.focus_x * s, hor - 0.1 * s, 0.17 * s, fill=rgba(p[0]))
    mx = r.uniform(0, 0.5) * s  # a mesa
    d.polygon(
        [(mx, hor), (mx + 0.08 * s, hor - 0.16 * s), (mx + 0.35 * s, hor - 0.16 * s), (mx + 0.42 * s, hor)],
        fill=rgba(p[1]),
    )
    d.rectangle([0, hor, s, s], fill=rgba(p[1]))
    d.ellipse([-0.3 * s, hor + 0.08 * s, 0.8 * s, hor + 0.5 * s], fill=rgba(p[3]))
    for _ in range(r.randint(1, 3)):  # saguaro cacti
        x, h, w = r.uniform(0.1, 0.9) * s, r.uniform(0.2, 0.35) * s, 0.035 * s
        base = hor + r.uniform(0.05, 0.2) * s
        d.rounded_rectangle([x - w, base - h, x + w, base], radius=w, fill=rgba(p[2]))
        for side in (-1, 1):
            ay = base - h * r.uniform(0.4, 0.7)
            ax = x + side * 2.5 * w
            d.rounded_rectangle(
                [min(x, ax) - w * 0.7, ay, max(x, ax) + w * 0.7, ay + 1.3 * w],
                radius=w * 0.6,
                fill=rgba(p[2]),
            )
            d.rounded_rectangle(
                [ax - 0.7 * w, ay - 0.2 * h, ax + 0.7 * w, ay + 1.3 * w], radius=w * 0.7, fill=rgba(p[2])
            )


def _burst(d: ImageDraw.ImageDraw, s: int, st: GenreStyle, c: Composition, r: random.Random) -> None:
    p = st.palette
    cx, cy = c.focus_x * s, c.horizon * s - 0.05 * s
    for k, colour in ((1.0, p[1]), (0.7, p[0]), (0.4, p[2])):  # explosion, outer to inner
        n = r.randint(9, 14)
        pts = star_points(cx, cy, 0.38 * s * k, 0.2 * s * k, n, r.uniform(0, 1))
        pts = [(x + r.uniform(-0.03, 0.03) * s * k, y + r.uniform(-0.03, 0.03) * s * k) for x, y in pts]
        d.polygon(pts, fill=rgba(colour))
    k = math.tan(0.55 + c.tilt)
    for _ in range(r.randint(5, 9)):  # speed lines and shards
        x0, y0 = r.uniform(-0.3, 1.0) * s, r.uniform(0, 1) * s
        length = r.uniform(0.15, 0.45) * s
        d.line([(x0, y0), (x0 + length, y0 - length * k)], fill=rgba(p[3], 200), width=max(1, s // 80))
    d.rectangle([0, c.horizon * s + 0.08 * s, s, s], fill=rgba(p[4]))
    for _ in range(r.randint(3, 6)):  # debris
        x, y, w = r.uniform(0, s), r.uniform(0.1, 0.6) * s, r.uniform(0.01, 0.03) * s
        d.polygon(star_points(x, y, w * 1.6, w * 0.8, 2, r.uniform(0, 3)), fill=rgba(p[4]))


def _shapes(d: ImageDraw.ImageDraw, s: int, st: GenreStyle, c: Composition, r: random.Random) -> None:
    p, lw = st.palette, max(1, s // 70)
    for _ in range(r.randint(3, 5)):
        x, y, rr = r.uniform(0.1, 0.9) * s, r.uniform(0.15, 0.85) * s, r.uniform(0.06, 0.16) * s
        colour, kind = rgba(r.choice(p), 220), r.randint(0, 2)
        if kind == 0:
            _circle(d, x, y, rr, fill=colour, outline=rgba(st.outline), width=lw)
        elif kind == 1:
            d.rectangle([x - rr, y - rr, x + rr, y + rr], fill=colour, outline=rgba(st.outline), width=lw)
        else:
            d.polygon(
                [(x, y - rr), (x + rr, y + rr), (x - rr, y + rr)], fill=colour, outline=rgba(st.outline)
            )


PAINTERS: dict[str, Painter] = {
    "drips": _drips, "blinds": _blinds, "tape": _tape, "crosshair": _crosshair, "fog": _fog,
    "grid": _grid, "spotlights": _spotlights, "silhouette": _silhouette, "mountains": _mountains,
    "cartoon": _cartoon, "bubbles": _bubbles, "dots": _dots, "frames": _frames, "castle": _castle,
    "hearts": _hearts, "camo": _camo, "desert": _desert, "burst": _burst, "shapes": _shapes,
}  # fmt: skip
