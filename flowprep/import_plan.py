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

import os
import re
from collections import Counter
from dataclasses import dataclass, field

from flowprep.errors import UserError
from flowprep.layouts import LAYOUTS, Layout, VideoFolders
from flowprep.storage.settings import ImportSettings

_IMAGE = re.compile(r"^(?P<prefix>[a-z_]*?)(?P<number>\d+)\.(?P<ext>jpe?g|png|bmp|tiff?)$", re.IGNORECASE)
_FLOW_WORDS = ("flow", "x_", "y_", "u_", "v_")


class PlanError(UserError):
    """Files in the tree the chosen layout would not read, and that look like flow."""


@dataclass
class Survey:
    """The files of the video folders: numbering of the read ones, and the ones not read."""

    digits: dict[str, int] = field(default_factory=dict)  # role → digits of its numbers
    unread: Counter = field(default_factory=Counter)  # kind of file → count
    examples: dict[str, str] = field(default_factory=dict)  # kind → one path
    flow_like: list[str] = field(default_factory=list)  # paths of unread files that look like flow


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
        for name in names:
            match = _IMAGE.match(name)
            if match and match["prefix"].lower() in read_prefixes and match["ext"].lower() in ("jpg", "jpeg"):
                role = _role(layout, match["prefix"].lower())
                out.digits.setdefault(role, len(match["number"]))
                continue
            path = os.path.join(folder, name)
            if os.path.isdir(path):
                continue  # another video's folder (ids may nest)
            kind = _kind(name, match)
            out.unread[kind] += 1
            out.examples.setdefault(kind, path)
            if kind.startswith("flow"):
                out.flow_like.append(path)
    return out


def _role(layout: Layout, prefix: str) -> str:
    rgb, x, _ = (p.lower() for p in layout.prefixes)
    return "rgb" if prefix == rgb and not layout.uv else "x" if prefix == x else "y"


def _kind(name: str, match: re.Match | None) -> str:
    if match is None:
        return f"other ({os.path.splitext(name)[1].lower() or 'no extension'})"
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
        what = ("PNG flow is not read (denseflow --st png writes one 3-channel PNG a field): convert it to grey "
                "JPEG pairs, or extract the flow again with `flowprep extract`")
    elif readers:
        what = f"the {' or '.join(readers)} layout reads them (--layout {readers[0]})"
    else:
        what = "no layout reads them"
    raise PlanError(f"{path}: {len(found.flow_like)} flow file(s) the {layout.name} layout does not read; {what}")


def describe(layout: Layout, chosen_by: str, settings: ImportSettings, videos: list[VideoFolders],
             found: Survey, sample: int = 3) -> list[str]:
    """The plan, a line each (see the module docstring)."""
    lines = [f"layout   {layout.name} ({chosen_by}); {len(videos)} videos, e.g. "
             + ", ".join(v.video for v in videos[:sample]) + ("" if len(videos) > sample else "")]
    rgb, x, y = layout.prefixes
    for stream, role, names in (("rgb", "rgb", f"{rgb}N.jpg"), ("flow", "x", f"{x}N.jpg + {y}N.jpg")):
        if stream not in settings.streams:
            continue
        digits = found.digits.get(role, layout.digits)
        first = f"{layout.first:0{digits}d}"
        lines.append(f"files    {names}: numbered from {first}, {digits} digits")
    if "rgb" in settings.streams and "flow" in settings.streams:
        lines.append("pairing  " + _pairing(layout, found))
    if "flow" in settings.streams:
        step = 2 * settings.bound / 255
        lines.append(f"levels   ±{settings.bound:g} px: level q is (q − {settings.zero_level:g})·{step:.4f} px "
                     f"(0 px at {settings.zero_level:g}; --bound, --zero-level)")
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
    if layout.flow_ends_at_frame:
        return (f"field file k is the flow from frame k−1 to {rgb}k (TSN dense_flow): stored field 0 = "
                f"{name(x, b)} ({name(rgb, a)} → {name(rgb, b)}); {name(x, a)} is dropped (its first frame "
                "is not in the tree)")
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
