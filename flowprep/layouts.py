"""How other tools lay out extracted frames and flow as files, for ``flowprep import`` and ``export``.

Each tool writes one folder per video holding numbered JPEG files: RGB frames, and flow as two grey
images per field (dx and dy). The four layouts met in practice::

    mmaction   <class>/<video>/img_00001.jpg  x_00001.jpg  y_00001.jpg        (1-based; mmaction2 rawframes)
    tsn        <class>/<video>/img_00001.jpg  flow_x_00001.jpg  flow_y_00001.jpg   (1-based; TSN dense_flow:
               flow_x_k is the flow from frame k−1 to img_k)
    denseflow  <class>/<video>/img_00000.jpg  flow_x_00000.jpg  flow_y_00000.jpg   (0-based; denseflow)
    uv         u/<video>/frame000001.jpg  v/<video>/frame000001.jpg, RGB <video>/frame000001.jpg
               in a tree of its own (the shared UCF-101 TV-L1 archives; 1-based)

Field t of a tool is the flow from its frame t to frame t+1, as in the store, except in TSN's
dense_flow (yjxiong/dense_flow, ``src/dense_flow_gpu.cpp``): it reads frame 0 and never writes it;
for each next frame k it writes the flow from frame k−1 to frame k as ``flow_x/y_k`` and frame k as
``img_k``, so N decoded frames give N−1 images and N−1 fields, and field file k *ends* at ``img_k``.
Imported, ``img_k`` is stored frame k−1 and field file k+1 stored field k−1; field file 1 (it starts at
the frame dense_flow did not write) is dropped, and the video's metadata says so. The class level is
optional: a video's id is its folder's path relative to the tree (``<class>/<video>`` or
``<video>``), as ``flowprep extract`` names videos, so the official splits match.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from flowprep.errors import UserError

ROLES = ("rgb", "x", "y")
log = logging.getLogger("flowprep")
_NAME = re.compile(r"^(img_|x_|y_|flow_x_|flow_y_|frame)(\d+)\.jpe?g$", re.IGNORECASE)


class LayoutError(UserError):
    """A tree that is not of a known layout; the message names the folder and what was expected."""


@dataclass(frozen=True)
class Layout:
    """File names of one tool: ``prefixes`` of RGB, dx and dy files, the digits of their number, the
    number of the first frame, and whether dx and dy live in trees of their own (``u/`` and ``v/``)."""

    name: str
    prefixes: tuple[str, str, str]  # rgb, x, y
    digits: int
    first: int
    uv: bool = False
    flow_ends_at_frame: bool = False  # field file k is the flow from frame k−1 to frame k (TSN's dense_flow)

    def file_name(self, role: str, t: int) -> str:
        """Name of frame or field ``t`` (0-based, as in the store)."""
        return f"{self.prefixes[ROLES.index(role)]}{t + self.first:0{self.digits}d}.jpg"

    def example(self) -> str:
        if self.uv:
            return f"u/<video>/{self.file_name('x', 0)}, v/<video>/..., RGB <video>/{self.file_name('rgb', 0)}"
        return ", ".join(f"<video>/{self.file_name(role, 0)}" for role in ROLES)


LAYOUTS = {
    "mmaction": Layout("mmaction", ("img_", "x_", "y_"), 5, 1),
    "tsn": Layout("tsn", ("img_", "flow_x_", "flow_y_"), 5, 1, flow_ends_at_frame=True),
    "denseflow": Layout("denseflow", ("img_", "flow_x_", "flow_y_"), 5, 0),
    "uv": Layout("uv", ("frame", "frame", "frame"), 6, 1, uv=True),
}


def scan_folder(folder: str | os.PathLike) -> dict[str, dict[int, str]]:
    """The numbered JPEG files of one folder by prefix (lower case): {prefix: {number: file name}}."""
    found: dict[str, dict[int, str]] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            match = _NAME.match(entry.name)
            if match:
                found.setdefault(match.group(1).lower(), {})[int(match.group(2))] = entry.name
    return found


def index_tree(root: Path) -> dict[str, tuple[str, frozenset[str]]]:
    """{video id: (folder, prefixes of its numbered JPEGs)} of every folder under ``root`` (itself
    included) that holds numbered JPEG files. The id is the folder's path relative to ``root`` (the
    root's own name where ``root`` itself is a video folder). Links to folders are followed."""
    out = {}

    def unreadable(exc: OSError) -> None:
        raise LayoutError(f"{exc.filename}: cannot list this folder ({exc.strerror or exc})")

    seen = _FolderSet(root)
    for folder, subfolders, _ in os.walk(root, onerror=unreadable, followlinks=True):
        subfolders[:] = sorted(name for name in subfolders if seen.first_visit(os.path.join(folder, name)))
        try:
            found = scan_folder(folder)
        except OSError as exc:
            raise LayoutError(f"{folder}: cannot list this folder ({exc.strerror or exc})") from None
        if found:
            rel = Path(folder).relative_to(root).as_posix()
            out[root.resolve().name if rel == "." else rel] = (folder, frozenset(found))
    return out


_TOLD: set[str] = set()


class _FolderSet:
    """Folders a walk that follows links has read, by device and inode: a link to a folder read already
    (a parent: a cycle; or a second way to one video) is skipped with one log line, so a walk ends and
    no video is listed twice."""

    def __init__(self, root: Path):
        info = os.stat(root)
        self.seen = {(info.st_dev, info.st_ino): str(root)}
        self.root = os.path.realpath(root)

    def first_visit(self, folder: str) -> bool:
        if os.path.islink(folder):
            real = os.path.realpath(folder)
            if real == self.root or real.startswith(self.root + os.sep):  # read where it is, under its own name
                return self._skip(folder, f"a link to {real}, which is read in the tree already")
        try:
            info = os.stat(folder)
        except OSError as exc:  # a dangling link: nothing to read
            return self._skip(folder, exc.strerror or str(exc))
        key = (info.st_dev, info.st_ino)
        if key in self.seen:
            return self._skip(folder, f"a link to {self.seen[key]}, which is read already")
        self.seen[key] = folder
        return True

    @staticmethod
    def _skip(folder: str, why: str) -> bool:
        if folder not in _TOLD:  # the trees are walked twice (detection, listing): say it once
            _TOLD.add(folder)
            log.info("%s: skipped, %s", folder, why)
        return False


def split_archives(source: Path, rgb_tree: Path | None) -> tuple[Path, Path | None] | None:
    """Where SOURCE is the folder that holds both unpacked archives of the shared UCF-101 TV-L1 flow
    (``tvl1_flow/u``, ``tvl1_flow/v``) and RGB frames (``jpegs_256/<video>/frame000001.jpg``): (the flow
    tree, the RGB tree: ``rgb_tree`` if given, else the one other folder there whose videos hold
    numbered frames). None where SOURCE is not such a folder."""
    if (source / "u").is_dir() or not source.is_dir():
        return None
    children = sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
    flows = [c for c in children if (c / "u").is_dir() and (c / "v").is_dir()]
    if len(flows) != 1:
        return None
    if rgb_tree is not None:
        return flows[0], rgb_tree
    frames = [c for c in children if c != flows[0] and _holds_frames(c)]
    return flows[0], (frames[0] if len(frames) == 1 else None)


def _holds_frames(tree: Path) -> bool:
    """Whether one of the first folders under ``tree`` holds numbered JPEG frames."""
    for i, (folder, subfolders, _) in enumerate(os.walk(tree)):
        subfolders.sort()
        if scan_folder(folder) or i > 50:
            return bool(scan_folder(folder))
    return False


def detect_layout(source: Path, rgb_tree: Path | None = None) -> Layout:
    """The layout of a tree, from its first folder of numbered JPEGs (``u/`` and ``v/`` folders: uv)."""
    if (source / "u").is_dir() and (source / "v").is_dir():
        return LAYOUTS["uv"]
    for tree in (source, rgb_tree) if rgb_tree is not None else (source,):
        seen = _FolderSet(tree)
        for folder, subfolders, _ in os.walk(tree, followlinks=True):
            subfolders[:] = sorted(name for name in subfolders if seen.first_visit(os.path.join(folder, name)))
            found = scan_folder(folder)
            if not found:
                continue
            first = min(min(numbers) for numbers in found.values())
            if "flow_x_" in found or "flow_y_" in found:
                return LAYOUTS["denseflow" if first == 0 else "tsn"]
            if "x_" in found or "y_" in found:
                return LAYOUTS["mmaction"]
            if "frame" in found:
                return LAYOUTS["uv"]
            if "img_" in found:  # RGB only: mmaction and tsn name RGB frames alike
                return LAYOUTS["denseflow" if first == 0 else "mmaction"]
    examples = "; ".join(f"{name}: {layout.example()}" for name, layout in LAYOUTS.items())
    raise LayoutError(f"{source}: no numbered JPEG frames or flow of a known layout ({examples})")


@dataclass(frozen=True)
class VideoFolders:
    """Where one video's files are: RGB frames, dx files and dy files (None: not in the tree)."""

    video: str
    rgb: str | None
    x: str | None
    y: str | None


def _select(index: dict[str, tuple[str, frozenset[str]]], prefixes: set[str]) -> dict[str, str]:
    return {video: folder for video, (folder, found) in index.items() if prefixes & found}


def find_video_folders(source: Path, layout: Layout, rgb_tree: Path | None = None,
                       streams: tuple[str, ...] | None = None) -> tuple[tuple[str, ...], list[VideoFolders]]:
    """The streams to import and every video of the tree(s): flow from ``source`` (``source/u`` and
    ``source/v`` for uv), RGB from ``rgb_tree`` if given, else from ``source`` (for uv: ``source/rgb``).
    ``streams`` None: the streams the trees hold at all. A video present in one stream's tree only is
    listed with None for the other (the import names it as a failure)."""
    if not source.is_dir():
        raise LayoutError(f"{source}: no such folder")
    if rgb_tree is not None and not rgb_tree.is_dir():
        raise LayoutError(f"{rgb_tree}: no such folder (--rgb)")
    rgb_prefix, x_prefix, y_prefix = layout.prefixes
    if layout.uv and rgb_tree is None and (source / "rgb").is_dir():
        rgb_tree = source / "rgb"  # where `flowprep export --layout uv` puts the frames
    if layout.uv and (source / "u").is_dir():
        if not (source / "v").is_dir():
            raise LayoutError(f"{source}: the uv layout keeps dy in {source / 'v'}/, which is missing")
        x = _select(index_tree(source / "u"), {x_prefix})
        y = _select(index_tree(source / "v"), {y_prefix})
        rgb = _select(index_tree(rgb_tree), {rgb_prefix}) if rgb_tree is not None else {}
    else:
        index = index_tree(source)
        if layout.uv:  # an RGB tree of the uv layout, no flow
            x = y = {}
            rgb = _select(index, {rgb_prefix})
        else:
            x = y = _select(index, {x_prefix, y_prefix})
            rgb = _select(index_tree(rgb_tree) if rgb_tree is not None else index, {rgb_prefix})
    held = tuple(s for s, folders in (("rgb", rgb), ("flow", {**x, **y})) if folders)
    if streams is None:
        streams = held
    if not held:
        raise LayoutError(f"{source}: no files of the {layout.name} layout ({layout.example()})")
    for stream in streams:
        if stream not in held:
            where = rgb_tree or source
            raise LayoutError(f"{where}: no {'RGB frames' if stream == 'rgb' else 'flow'} files of the "
                              f"{layout.name} layout ({layout.example()})")
    if "rgb" not in streams:
        rgb = {}
    if "flow" not in streams:
        x = y = {}
    videos = sorted(set(rgb) | set(x) | set(y))
    return streams, [VideoFolders(v, rgb.get(v), x.get(v), y.get(v)) for v in videos]
