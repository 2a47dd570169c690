"""What ``flowprep import`` is about to do, said before it writes (and alone with ``--dry-run``).

A wrong guess about another tool's tree — the layout, where numbering starts, which frame a field
starts at, the bound — gives a store that is consistent with itself and wrong. The plan prints what
a user needs to catch such a guess before hours of writing: the layout and why, the numbering, the
pairing of fields with frames, the counts of a few videos, what a level means in pixels, and every
file in the video folders that the import will not read. Files that look like flow but that the
layout does not read (another tool's names, PNG flow) stop the run in one line naming the layout
that would read them: flow is never dropped in silence.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from flowprep.errors import UserError
from flowprep.importer import read_regular_file
from flowprep.layouts import LAYOUTS, ROLES, Layout, VideoFolders
from flowprep.storage.settings import ImportSettings

_IMAGE = re.compile(r"^(?P<prefix>[a-z_]*?)(?P<number>\d+)\.(?P<ext>jpe?g|png|bmp|tiff?)$", re.IGNORECASE)
_FLOW_WORDS = ("flow", "x_", "y_", "u_", "v_")
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


class PlanError(UserError):
    """Files in the tree the chosen layout would not read, and that look like flow."""


@dataclass
class Survey:
    """The files of the video folders: numbering of the read ones, and the ones not read."""

    digits: dict[str, int] = field(default_factory=dict)  # role → digits of its numbers
    unread: Counter = field(default_factory=Counter)  # kind of file → count
    examples: dict[str, str] = field(default_factory=dict)  # kind → one path
    flow_like: list[str] = field(default_factory=list)  # paths of unread files that look like flow
    firsts: dict[str, Counter] = field(default_factory=dict)  # role → {first number of a folder: folders}
    first_example: dict[str, str] = field(default_factory=dict)  # role → a folder's first file of that role


def survey(videos: list[VideoFolders], layout: Layout) -> Survey:
    """List every video folder once: the digits the layout's files use, and the files it will not read."""
    out = Survey()
    read_prefixes = {p.lower() for p in layout.prefixes}
    folders = sorted({f for v in videos for f in (v.rgb, v.x, v.y) if f is not None})
    for folder in folders:
        try:
            names = os.listdir(folder)
        except OSError:
            continue  # the import names it as the video's failure
        lowest: dict[str, tuple[int, str]] = {}
        for name in names:
            match = _IMAGE.match(name)
            if match and match["prefix"].lower() in read_prefixes and match["ext"].lower() in ("jpg", "jpeg"):
                role = _role(layout, match["prefix"].lower())
                out.digits.setdefault(role, len(match["number"]))
                number = int(match["number"])
                if role not in lowest or number < lowest[role][0]:
                    lowest[role] = (number, os.path.join(folder, name))
                continue
            path = os.path.join(folder, name)
            if os.path.isdir(path):
                continue  # another video's folder (ids may nest)
            kind = _kind(name, match)
            out.unread[kind] += 1
            out.examples.setdefault(kind, path)
            if kind.startswith("flow"):
                out.flow_like.append(path)
        for role, (number, path) in lowest.items():
            out.firsts.setdefault(role, Counter())[number] += 1
            out.first_example.setdefault(role, path)
    return out


def refuse_wrong_numbering(found: Survey, layout: Layout) -> None:
    """PlanError (one line) where no video folder numbers a role's files from where the layout does
    (a wrong ``--layout``): every video would fail; the line names the layout that fits, if one does."""
    for role, firsts in found.firsts.items():
        expected = layout.first_of(role)
        if expected in firsts:
            continue
        seen = firsts.most_common(1)[0][0]
        fits = [name for name, other in LAYOUTS.items() if other.prefixes == layout.prefixes and
                all(other.first_of(r) in f for r, f in found.firsts.items())]
        hint = f"; the {fits[0]} layout reads them (--layout {fits[0]})" if fits else ""
        raise PlanError(f"{found.first_example[role]}: no video folder numbers its {layout.prefixes[ROLES.index(role)]}"
                        f" files from {expected}, as the {layout.name} layout does (they start at {seen}){hint}")


def _role(layout: Layout, prefix: str) -> str:
    rgb, x, _ = (p.lower() for p in layout.prefixes)
    return "rgb" if prefix == rgb and not layout.uv else "x" if prefix == x else "y"


def _kind(name: str, match: re.Match | None) -> str:
    if match is None:
        stem, ext = os.path.splitext(name)
        if ext.lower() in _IMAGE_EXTS and any(stem.lower().startswith(word) for word in _FLOW_WORDS):
            return f"flow ({re.sub(r'[0-9]+', 'N', name.lower())})"  # e.g. denseflow -s 2: flow_x_p2_00000.jpg
        return f"other ({ext.lower() or 'no extension'})"
    prefix, ext = match["prefix"].lower(), match["ext"].lower()
    if any(word in prefix for word in _FLOW_WORDS):
        return f"flow ({prefix}N.{ext})"
    return f"image ({prefix}N.{ext})"


def refuse_unread_flow(found: Survey, layout: Layout) -> None:
    """PlanError (one line) where files that look like flow would be left out."""
    if not found.flow_like:
        return
    path = found.flow_like[0]
    name = os.path.basename(path)
    match = _IMAGE.match(name)
    readers = [n for n, other in LAYOUTS.items() if other is not layout and match
               and match["ext"].lower() in ("jpg", "jpeg")
               and match["prefix"].lower() in {p.lower() for p in other.prefixes[1:]}]
    if match and match["ext"].lower() == "png":
        what = ("PNG flow is not read (denseflow --st png: one 3-channel PNG a field, with its own range in the "
                "third channel): run denseflow again with --st jpg (grey JPEG pairs: the denseflow layout), or "
                "extract from the videos with `flowprep extract`")
    elif re.search(r"_[pm]\d+_\d+\.", name):
        what = ("denseflow wrote them with -s other than 1 (flow between frames further apart); the store holds "
                "the flow between neighbouring frames (denseflow -s 1)")
    elif readers:
        what = f"the {' or '.join(readers)} layout reads them (--layout {readers[0]})"
    else:
        what = "no layout reads them"
    raise PlanError(f"{path}: {len(found.flow_like)} flow file(s) the {layout.name} layout does not read; {what}")


@dataclass(frozen=True)
class ZeroLevel:
    """The grey level of 0 px, and why: the layout's tool, or what the files show."""

    level: float
    why: str


def guess_zero_level(videos: list[VideoFolders], layout: Layout, sample: int = 4) -> ZeroLevel:
    """The zero level the field files show. A tool that rounds (round(255·(d+B)/2B): dense_flow,
    denseflow, gpu_flow) puts still pixels (|d| < half a level) at 128, or at 127 and 128 in turn where
    the flow has noise; one that floors (mmaction2's flow_extraction.py) at 127 alone. So in the dx files
    of a few videos: 80 % or more of the pixels at 127 or 128 at 127 is 127, otherwise 127.5. Too few
    such pixels (everything moves), or files that do not decode: the layout's own."""
    counts = np.zeros(2, np.int64)
    picked = [v for v in videos if v.x is not None][:: max(1, len(videos) // sample)][:sample]
    for video in picked:
        try:
            names = sorted(n for n in os.listdir(video.x) if n.startswith(layout.prefixes[1]) and n.endswith(".jpg"))
        except OSError:
            continue
        for name in names[:: max(1, len(names) // 3)][:3]:
            try:  # not cv2.imread: a FIFO must not block the plan
                data = read_regular_file(os.path.join(video.x, name))
            except OSError:
                continue
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
            if image is not None:
                counts += np.bincount(image.ravel(), minlength=256)[127:129]
    total = int(counts.sum())
    default = ZeroLevel(layout.zero_level, f"the {layout.name} layout's")
    if total < 1000:
        return default
    share = counts[0] / total
    if share >= 0.8:
        return ZeroLevel(127.0, f"from the files: {share:.0%} of still pixels at 127, as a tool that floors")
    return ZeroLevel(127.5, f"from the files: still pixels at 127 and 128 ({share:.0%} at 127), as a tool "
                            "that rounds")


def exported_mapping(source: Path) -> tuple[float, float] | None:
    """(bound, zero level) of a tree ``flowprep export`` wrote, from the record it leaves in it (so its
    files are read back as they were written); None for other trees."""
    from flowprep.exporter import EXPORT_FILE

    try:
        settings = json.loads((source / EXPORT_FILE).read_text())
        return float(settings["bound"]), float(settings["zero_level"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def describe(layout: Layout, chosen_by: str, settings: ImportSettings, videos: list[VideoFolders],
             found: Survey, sample: int = 3, zero_why: str = "--zero-level") -> list[str]:
    """The plan, a line each (see the module docstring)."""
    lines = [f"layout   {layout.name} ({chosen_by}); {len(videos)} videos, e.g. "
             + ", ".join(v.video for v in videos[:sample]) + ("" if len(videos) > sample else "")]
    rgb, x, y = layout.prefixes
    for stream, role, names in (("rgb", "rgb", f"{rgb}N.jpg"), ("flow", "x", f"{x}N.jpg + {y}N.jpg")):
        if stream not in settings.streams:
            continue
        digits = found.digits.get(role, layout.digits)
        first = f"{layout.first_of(role):0{digits}d}"
        lines.append(f"files    {names}: numbered from {first}, {digits} digits")
    if "rgb" in settings.streams and "flow" in settings.streams:
        lines.append("pairing  " + _pairing(layout, found))
    if "flow" in settings.streams:
        step = 2 * settings.bound / 255
        lines.append(f"levels   ±{settings.bound:g} px: level q is (q − {settings.zero_level:g})·{step:.4f} px "
                     f"(0 px at {settings.zero_level:g}: {zero_why}; --bound, --zero-level)")
        lines.append(f"tool     {layout.name}: {layout.tool}")
        with_ranges = sum(1 for v in videos if v.ranges)
        if with_ranges:
            lines.append(f"ranges   {with_ranges} of {len(videos)} videos have gpu_flow's .bin of field ranges (e.g. "
                         f"{next(v.ranges for v in videos if v.ranges)}): their levels are read by those, not "
                         "by --bound")
    counts = []
    for v in videos[:sample]:
        counts.append(f"{v.video}: {_count(v.rgb, rgb, layout)} frames, {_count(v.x, x, layout)} field files")
    if counts:
        lines.append("counts   " + "; ".join(counts))
    if found.unread:
        parts = [f"{n} {kind} (e.g. {found.examples[kind]})" for kind, n in found.unread.most_common()]
        lines.append("not read " + "; ".join(parts))
    else:
        lines.append("not read nothing: every file in the video folders is read")
    return lines


def _pairing(layout: Layout, found: Survey) -> str:
    rgb, x, _ = layout.prefixes
    digits = found.digits.get("rgb", layout.digits)

    def name(prefix: str, n: int) -> str:
        return f"{prefix}{n:0{digits}d}"

    a, b = layout.first, layout.first + 1
    f = layout.first_of("x")
    if layout.flow_ends_at_frame:
        return (f"field file k is the flow from frame k−1 to {rgb}k (TSN dense_flow): stored field 0 = "
                f"{name(x, b)} ({name(rgb, a)} → {name(rgb, b)}); {name(x, a)} is dropped (its first frame "
                "is not in the tree)")
    if f != a:  # mmaction2 build_rawframes.py --use-opencv: RGB from 1, flow from 0
        return (f"field file k is the flow from {rgb}k{a - f:+d} to {rgb}k{b - f:+d}: stored field 0 = "
                f"{name(x, f)} ({name(rgb, a)} → {name(rgb, b)})")
    return f"field file k is the flow from {rgb}k to {rgb}k+1: stored field 0 = {name(x, a)} ({name(rgb, a)} → " \
           f"{name(rgb, b)})"


def _count(folder: str | None, prefix: str, layout: Layout) -> int:
    if folder is None:
        return 0
    try:
        return sum(1 for n in os.listdir(folder) if n.lower().startswith(prefix.lower())
                   and (m := _IMAGE.match(n)) is not None and m["prefix"].lower() == prefix.lower()
                   and m["ext"].lower() in ("jpg", "jpeg"))
    except OSError:
        return 0
