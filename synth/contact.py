"""Contact sheets of a run: per phrase, crops of the instances SYN kept beside the ones it rejected, each with its
mask outlined (context dimmed) and captioned with the verifier and reason that decided it; one HTML page lists them.

    OUT/contact/<phrase-slug>.png   "Accepted" then "Rejected": up to MAX_SHOWN crops each, evenly spread over the run
    OUT/contact/index.html          every phrase: counts, who rejected how many, its sheet (linked relatively)

An instance is accepted when it is in syn.json: every mask verifier accepted it and its pair was kept. A rejected
one is captioned with the first mask verifier that rejected it, or, when its pair was dropped, the exhaustivity
verifier (or rule) that dropped the pair; an accepted one with the last verifier that judged it.
"""

from __future__ import annotations

import html
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from adapt.drawing import draw_text_label, ellipsize, line_height, load_font, wrap
from sam3_model.atomic import atomic_write, atomic_write_text
from sam3_model.images import load_image
from sam3_model.records import decode_mask

MAX_SHOWN = 24  # crops per section
COLUMNS = 6
CELL = 160  # crop tile side, pixels
GAP = 10
CAPTION_LINES = 4
ACCEPT_COLOUR = (44, 160, 44)
REJECT_COLOUR = (214, 39, 40)
_PAGE = (255, 255, 255)
_TILE = (60, 60, 60)
_INK = (20, 20, 20)
_GREY = (110, 110, 110)


@dataclass(frozen=True)
class Shown:
    """One proposed instance and what decided it."""

    key: str  # the image's key
    file_name: str  # the image, relative to the run folder
    mask: dict[str, Any]  # RLE of the image size
    box_xyxy_px: tuple[float, float, float, float]
    score: float  # the teacher's
    accepted: bool  # in syn.json
    verifier: str  # who decided
    reason: str  # why

    @property
    def caption(self) -> str:
        """"verifier: reason", the line drawn under the crop."""
        return f"{self.verifier}: {self.reason}"


def read_decisions(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """decisions.jsonl as {(image key, phrase): decision line}."""
    lines = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {(d["image"], d["phrase"]): d for d in lines}


def proposed_instances(records: list[dict[str, Any]],
                       decisions: dict[tuple[str, str], dict[str, Any]]) -> dict[str, list[Shown]]:  # fmt: skip
    """Every instance the teacher proposed, per phrase (in run order), with its fate and who decided it."""
    out: dict[str, list[Shown]] = {}
    for record in records:
        if "skipped" in record:
            continue
        for pair in record["pairs"]:
            decision = decisions.get((record["key"], pair["phrase"]), {})
            verification = pair.get("verification") or {}
            judged = verification.get("instances") or [{"verdicts": [], "rejected_by": None}] * len(pair["instances"])
            pair_verdicts = (verification.get("pair") or {}).get("verdicts", [])
            for inst, v in zip(pair["instances"], judged):
                accepted, verifier, reason = _fate(v, decision, pair_verdicts)
                out.setdefault(pair["phrase"], []).append(Shown(
                    record["key"], record["file_name"], inst["mask"], tuple(inst["box_xyxy_px"]), float(inst["score"]),
                    accepted, verifier, reason))
    return out


def _fate(judged: dict[str, Any], decision: dict[str, Any],
          pair_verdicts: list[dict[str, Any]]) -> tuple[bool, str, str]:  # fmt: skip
    """(accepted, verifier, reason) of one instance from its mask verdicts and its pair's decision."""
    verdicts = judged["verdicts"]
    if judged["rejected_by"] is not None:
        first = next((v for v in verdicts if v["verifier"] == judged["rejected_by"] and v["option"] != "accept"), None)
        return False, judged["rejected_by"], first["reason"] if first else "rejected"
    if decision.get("syn") == "dropped":
        by = decision.get("by", "exhaustivity")
        verdict = next((v for v in pair_verdicts if v["verifier"] == by), None)
        return False, by, f"pair dropped: {verdict['reason'] if verdict else decision.get('reason', '')}".strip()
    last = (verdicts or pair_verdicts or [None])[-1]
    if last is None:
        return True, "teacher", "unverified"
    return True, last["verifier"], last["reason"]


def choose(items: list[Shown], cap: int = MAX_SHOWN) -> list[Shown]:
    """At most `cap` of `items`, evenly spaced over them (deterministic: the first and last always in)."""
    if len(items) <= cap:
        return list(items)
    return [items[k] for k in np.linspace(0, len(items) - 1, cap).round().astype(int)]


def sheet_sections(items: list[Shown], cap: int = MAX_SHOWN) -> tuple[list[Shown], list[Shown]]:
    """The (accepted, rejected) instances a phrase's sheet shows."""
    return choose([s for s in items if s.accepted], cap), choose([s for s in items if not s.accepted], cap)


def phrase_slugs(phrases: list[str]) -> dict[str, str]:
    """{phrase: file-name-safe slug}, unique ("red square" -> "red-square"; a repeat gets "-2")."""
    slugs: dict[str, str] = {}
    for phrase in phrases:
        base = re.sub(r"[^a-z0-9]+", "-", phrase.lower()).strip("-")[:60] or "phrase"
        slug, k = base, 2
        while slug in slugs.values() or slug == "index":
            slug, k = f"{base}-{k}", k + 1
        slugs[phrase] = slug
    return slugs


# ----- drawing -----------------------------------------------------------------------------------------------
def _tile(image: Image.Image, shown: Shown, colour: tuple[int, int, int]) -> Image.Image:
    """A CELL x CELL tile framed in `colour`: the instance's box with context (dimmed), its mask outlined, its
    score at top left."""
    w, h = image.size
    x0, y0, x1, y1 = shown.box_xyxy_px
    margin = 0.15 * max(x1 - x0, y1 - y0) + 4
    cx0, cy0 = max(0, int(x0 - margin)), max(0, int(y0 - margin))
    cx1, cy1 = min(w, int(np.ceil(x1 + margin))), min(h, int(np.ceil(y1 + margin)))
    if cx1 <= cx0 or cy1 <= cy0:
        cx0, cy0, cx1, cy1 = 0, 0, w, h
    scale = CELL / max(cx1 - cx0, cy1 - cy0)
    size = (max(1, round((cx1 - cx0) * scale)), max(1, round((cy1 - cy0) * scale)))
    crop = image.crop((cx0, cy0, cx1, cy1)).resize(size, Image.NEAREST if scale > 1 else Image.BILINEAR)
    mask = decode_mask(shown.mask).astype(bool)  # (H, W)
    if mask.shape == (h, w):
        small = np.asarray(Image.fromarray(mask[cy0:cy1, cx0:cx1]).resize(size, Image.NEAREST))  # (h', w') bool
        pixels = np.asarray(crop, dtype=np.float32).copy()  # (h', w', 3)
        pixels[~small] *= 0.45  # the context dimmed, the mask at full brightness
        pixels[ndimage.binary_dilation(small, iterations=2) & ~small] = 255  # white outside the outline...
        pixels[small & ~ndimage.binary_erosion(small, iterations=1)] = 0  # ...black inside: seen on any colour
        crop = Image.fromarray(pixels.astype(np.uint8))
    tile = Image.new("RGB", (CELL, CELL), _TILE)
    tile.paste(crop, ((CELL - size[0]) // 2, (CELL - size[1]) // 2))
    ImageDraw.Draw(tile).rectangle((0, 0, CELL - 1, CELL - 1), outline=colour, width=3)  # green kept, red rejected
    draw_text_label(tile, (3, 3), f"{shown.score:.2f}", load_font(12), bg=(0, 0, 0), opacity=0.7)
    return tile


def _section_height(count: int, caption_h: int) -> int:
    """Pixels of a section's grid of `count` captioned crops (one text line for none)."""
    if count == 0:
        return line_height(load_font(12)) + GAP
    return -(-count // COLUMNS) * (CELL + caption_h + GAP)


def render_sheet(phrase: str, accepted: list[Shown], rejected: list[Shown], totals: tuple[int, int],
                 tiles: dict[int, Image.Image], cap: int = MAX_SHOWN) -> Image.Image:  # fmt: skip
    """The sheet of one phrase: a title, then the "Accepted" and "Rejected" sections of captioned crops
    (`tiles`: the drawn crop of each shown instance, by `id`; `cap`: at most this many shown per section)."""
    title_font, head_font, font = load_font(22), load_font(16), load_font(12)
    small_h = line_height(font)
    caption_h = (1 + CAPTION_LINES) * small_h + 4
    width = COLUMNS * CELL + (COLUMNS + 1) * GAP
    head_h = line_height(head_font) + 8
    title_h = line_height(title_font) + small_h + 3 * GAP
    height = title_h + 2 * (head_h + 2 * GAP) + sum(_section_height(len(s), caption_h) for s in (accepted, rejected))
    sheet = Image.new("RGB", (width, height), _PAGE)
    draw = ImageDraw.Draw(sheet)
    draw.text((GAP, GAP), phrase, fill=_INK, font=title_font)
    draw.text((GAP, GAP + line_height(title_font) + 4),
              f"{sum(totals)} instances proposed: {totals[0]} accepted, {totals[1]} rejected "
              f"(up to {cap} of each shown, evenly spread over the run)", fill=_GREY, font=font)
    y = title_h
    for name, shown, total, colour in (("Accepted", accepted, totals[0], ACCEPT_COLOUR),
                                       ("Rejected", rejected, totals[1], REJECT_COLOUR)):
        draw.rectangle((GAP, y, width - GAP, y + head_h), fill=colour)
        draw.text((2 * GAP, y + 4), f"{name}: showing {len(shown)} of {total}", fill=(255, 255, 255), font=head_font)
        y += head_h + GAP
        if not shown:
            draw.text((GAP, y), "none", fill=_GREY, font=font)
        for k, item in enumerate(shown):
            x, top = GAP + (k % COLUMNS) * (CELL + GAP), y + (k // COLUMNS) * (CELL + caption_h + GAP)
            sheet.paste(tiles[id(item)], (x, top))
            cy = top + CELL + 2
            draw.text((x, cy), ellipsize(item.key, font, CELL), fill=_GREY, font=font)
            for line in wrap(item.caption, font, CELL, CAPTION_LINES):
                cy += small_h
                draw.text((x, cy), line, fill=_INK, font=font)
        y += _section_height(len(shown), caption_h) + GAP
    return sheet


def _draw_tiles(root: Path, shown: list[tuple[Shown, tuple[int, int, int]]]) -> dict[int, Image.Image]:
    """Every shown instance's tile, by `id`; each image is read once."""
    tiles: dict[int, Image.Image] = {}
    by_file: dict[str, list[tuple[Shown, tuple[int, int, int]]]] = {}
    for item, colour in shown:
        by_file.setdefault(item.file_name, []).append((item, colour))
    for file_name, items in sorted(by_file.items()):
        image = load_image(root / file_name, file_name)
        for item, colour in items:
            tiles[id(item)] = _tile(image, item, colour)
    return tiles


# ----- writing -----------------------------------------------------------------------------------------------
def write_contact_sheets(records: list[dict[str, Any]], decisions: dict[tuple[str, str], dict[str, Any]],
                         root: Path, phrases: list[str], cap: int = MAX_SHOWN) -> dict[str, Any]:  # fmt: skip
    """Write OUT/contact/<slug>.png for every phrase (at most `cap` crops per section) and OUT/contact/index.html
    (atomically); returns
    {"index": "contact/index.html", "sheets": {phrase: "contact/<slug>.png"}} (paths relative to `root`)."""
    folder = root / "contact"
    instances = proposed_instances(records, decisions)
    phrases = [*phrases, *[p for p in instances if p not in phrases]]
    slugs = phrase_slugs(phrases)
    sections = {p: sheet_sections(instances.get(p, []), cap) for p in phrases}
    tiles = _draw_tiles(root, [(s, ACCEPT_COLOUR) for a, _ in sections.values() for s in a]
                        + [(s, REJECT_COLOUR) for _, r in sections.values() for s in r])
    rows = []
    for phrase in phrases:
        items = instances.get(phrase, [])
        totals = (sum(s.accepted for s in items), sum(not s.accepted for s in items))
        sheet = render_sheet(phrase, *sections[phrase], totals, tiles, cap)
        save_png_atomic(sheet, folder / f"{slugs[phrase]}.png")
        rows.append((phrase, totals, Counter(s.verifier for s in items if not s.accepted)))
    for stale in folder.glob("*.png"):
        if stale.stem not in slugs.values():
            stale.unlink()
    atomic_write_text(folder / "index.html", contact_index_html(rows, slugs, cap))
    return {"index": "contact/index.html", "sheets": {p: f"contact/{slugs[p]}.png" for p in phrases}}


def save_png_atomic(image: Image.Image, path: Path) -> Path:
    """Write `image` as a PNG atomically (light compression: a sheet is written on every merge)."""
    return atomic_write(path, lambda handle: image.save(handle, format="PNG", compress_level=3))


def contact_index_html(rows: list[tuple[str, tuple[int, int], Counter]], slugs: dict[str, str],
                       cap: int = MAX_SHOWN) -> str:
    """The run's contact-sheet page: a table of phrases (counts, rejections by verifier, link) then every sheet."""
    e = html.escape
    table = "\n".join(
        f'<tr><td><a href="#{e(slugs[p])}">{e(p)}</a></td><td>{a + r}</td><td>{a}</td><td>{r}</td>'
        f"<td>{e(', '.join(f'{v}: {n}' for v, n in by.most_common())) or '-'}</td>"
        f'<td><a href="{e(slugs[p])}.png">{e(slugs[p])}.png</a></td></tr>'
        for p, (a, r), by in rows)
    sheets = "\n".join(f'<section id="{e(slugs[p])}"><h2>{e(p)}</h2><a href="{e(slugs[p])}.png">'
                       f'<img src="{e(slugs[p])}.png" alt="contact sheet of {e(p)}" loading="lazy"></a></section>'
                       for p, _, _ in rows)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Data-engine contact sheets</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 4px 10px; text-align: left; }}
img {{ max-width: 100%; border: 1px solid #ddd; }}
</style></head><body>
<h1>Data-engine contact sheets</h1>
<p>Per phrase: crops of the instances the verifiers accepted (green, in syn.json) and rejected (red), each
captioned with the image, the teacher's score and the verifier and reason that decided it. At most {cap}
of each, evenly spread over the run.</p>
<table><tr><th>phrase</th><th>proposed</th><th>accepted</th><th>rejected</th><th>rejected by</th><th>sheet</th></tr>
{table}
</table>
{sheets}
</body></html>
"""
