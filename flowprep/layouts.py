"""How other tools lay out extracted frames and flow as files, for ``flowprep import`` and ``export``.

Each tool writes one folder per video holding numbered JPEG files: RGB frames, and flow as two grey
images per field (dx and dy). What each tool writes, read from its source (not its README)::

    mmaction         <video>/img_00001.jpg x_00001.jpg y_00001.jpg   mmaction2 tools/misc/flow_extraction.py:
                     1-based; quantised by floor, so 0 px is level 127; --bound 20
    mmaction-opencv  <video>/img_00001.jpg flow_x_00000.jpg ...      mmaction2 tools/data/build_rawframes.py
                     --use-opencv: RGB by OpenCV from 1, flow by denseflow from 0, one folder; -b=20
    tsn              <video>/img_00001.jpg flow_x_00001.jpg ...      TSN's dense_flow (yjxiong/dense_flow):
                     flow_x_k is the flow from frame k−1 to img_k; -b=20 in TSN's build_of.py
    denseflow        <video>/img_00000.jpg flow_x_00000.jpg ...      open-mmlab/denseflow (-s 0 then -s 1, as
                     mmaction2's build_rawframes.py runs it with -b=20; denseflow's own default is -b 32)
    uv               u/<video>/frame000001.jpg v/<video>/...         feichtenhofer/gpu_flow: older versions
                     (the shared UCF-101 TV-L1 archives) u/ v/ with <video>.bin beside; newer x/ y/, RGB in
                     rgb/, bins/<video>.bin; 1-based; clipped to ±20 unless the .bin files say otherwise

All map ±bound pixels onto [0, 255] by rounding (0 px between levels 127 and 128: zero level 127.5)
except flow_extraction.py (floor: zero level 127). gpu_flow's .bin files hold each field's range
(min and max of dx and dy, 4 float32 a field); where they are present they are read.

Field t of a tool is the flow from its frame t to frame t+1, as in the store, except in TSN's
dense_flow (``src/dense_flow_gpu.cpp``): it reads frame 0 and never writes it; for each next frame k
it writes the flow from frame k−1 to frame k as ``flow_x/y_k`` and frame k as ``img_k``, so N decoded
frames give N−1 images and N−1 fields, and field file k *ends* at ``img_k``. Imported, ``img_k`` is
stored frame k−1 and field file k+1 stored field k−1; field file 1 (it starts at the frame dense_flow
did not write) is dropped, and the video's metadata says so. The class level is optional: a video's id
is its folder's path relative to the tree (``<class>/<video>`` or ``<video>``), as ``flowprep
extract`` names videos, so the official splits match.
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
    flow_first: int | None = None  # number of the first field file where it differs from the first frame's
    bound: float = 20.0  # pixels the tool maps onto [0, 255] by default
    zero_level: float = 127.5  # grey level of 0 px: 127.5 where the tool rounds, 127 where it floors
    tool: str = ""  # who writes this layout, and how (for the plan and --help)

    def first_of(self, role: str) -> int:
        """Number of the first file of ``role`` (rgb, x or y)."""
        return self.first if role == "rgb" or self.flow_first is None else self.flow_first

    def file_name(self, role: str, t: int) -> str:
        """Name of frame or field ``t`` (0-based, as in the store)."""
        return f"{self.prefixes[ROLES.index(role)]}{t + self.first_of(role):0{self.digits}d}.jpg"

    def example(self) -> str:
        if self.uv:
            return f"u/<video>/{self.file_name('x', 0)}, v/<video>/..., RGB <video>/{self.file_name('rgb', 0)}"
        return ", ".join(f"<video>/{self.file_name(role, 0)}" for role in ROLES)


LAYOUTS = {
    "mmaction": Layout("mmaction", ("img_", "x_", "y_"), 5, 1, zero_level=127.0,
                       tool="mmaction2 tools/misc/flow_extraction.py: floor quantisation, 0 px at level 127"),
    "mmaction-opencv": Layout("mmaction-opencv", ("img_", "flow_x_", "flow_y_"), 5, 1, flow_first=0,
                              tool="mmaction2 build_rawframes.py --use-opencv: RGB from 1, denseflow's flow from 0"),
    "tsn": Layout("tsn", ("img_", "flow_x_", "flow_y_"), 5, 1, flow_ends_at_frame=True,
                  tool="TSN's dense_flow: field file k ends at img_k"),
    "denseflow": Layout("denseflow", ("img_", "flow_x_", "flow_y_"), 5, 0,
                        tool="denseflow, as mmaction2's build_rawframes.py runs it (-b=20; denseflow alone: -b 32)"),
    "uv": Layout("uv", ("frame", "frame", "frame"), 6, 1, uv=True,
                 tool="gpu_flow: u/ v/ (or x/ y/, RGB in rgb/), clipped to ±20 unless its .bin files say otherwise"),
}
FLOW_FOLDERS = (("u", "v"), ("x", "y"))  # gpu_flow's dx and dy trees: older versions, newer versions


def flow_folders(source: Path) -> tuple[Path, Path] | None:
    """gpu_flow's dx and dy trees under ``source`` (``u/`` and ``v/``, or ``x/`` and ``y/``), or None."""
    for dx, dy in FLOW_FOLDERS:
        if (source / dx).is_dir() and (source / dy).is_dir():
            return source / dx, source / dy
    return None


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
    if flow_folders(source) is not None or not source.is_dir():
        return None
    children = sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
    flows = [c for c in children if flow_folders(c) is not None]
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
    """The layout of a tree, from its first folder of numbered JPEGs (``u/`` and ``v/`` or ``x/`` and
    ``y/`` folders: uv). ``flow_x_`` files from 0 are denseflow's, unless ``img_`` files beside them
    start at 1 (mmaction2's build_rawframes.py --use-opencv); from 1, TSN's dense_flow."""
    if flow_folders(source) is not None:
        return LAYOUTS["uv"]
    for tree in (source, rgb_tree) if rgb_tree is not None else (source,):
        seen = _FolderSet(tree)
        for folder, subfolders, _ in os.walk(tree, followlinks=True):
            subfolders[:] = sorted(name for name in subfolders if seen.first_visit(os.path.join(folder, name)))
            found = scan_folder(folder)
            if not found:
                continue
            first = {prefix: min(numbers) for prefix, numbers in found.items()}
            flow_first = min((first[p] for p in ("flow_x_", "flow_y_") if p in first), default=None)
            if flow_first is not None:
                if flow_first == 0:
                    return LAYOUTS["mmaction-opencv" if first.get("img_") == 1 else "denseflow"]
                return LAYOUTS["tsn"]
            if "x_" in found or "y_" in found:
                return LAYOUTS["mmaction"]
            if "frame" in found:
                return LAYOUTS["uv"]
            if "img_" in found:  # RGB only: mmaction and tsn name RGB frames alike
                return LAYOUTS["denseflow" if first["img_"] == 0 else "mmaction"]
    examples = "; ".join(f"{name}: {layout.example()}" for name, layout in LAYOUTS.items())
    raise LayoutError(f"{source}: no numbered JPEG frames or flow of a known layout ({examples})")


@dataclass(frozen=True)
class VideoFolders:
    """Where one video's files are: RGB frames, dx files and dy files (None: not in the tree)."""

    video: str
    rgb: str | None
    x: str | None
    y: str | None
    ranges: str | None = None  # gpu_flow's .bin of the video's field ranges, where there is one


def _select(index: dict[str, tuple[str, frozenset[str]]], prefixes: set[str]) -> dict[str, str]:
    return {video: folder for video, (folder, found) in index.items() if prefixes & found}


def find_video_folders(source: Path, layout: Layout, rgb_tree: Path | None = None,
                       streams: tuple[str, ...] | None = None) -> tuple[tuple[str, ...], list[VideoFolders]]:
    """The streams to import and every video of the tree(s): flow from ``source`` (``source/u`` and
    ``source/v`` for uv), RGB from ``rgb_tree`` if given, else from ``source`` (for uv: ``source/rgb``).
    ``streams`` None: the streams the trees hold at all. A video present in one stream's tree only is
    listed with None for the other (the import names it as a failure). For uv, ``source/x`` and
    ``source/y`` are read where there are no ``u/`` and ``v/``, and each video's gpu_flow range file
    (``u/<video>.bin`` or ``bins/<video>.bin``) is found where there is one."""
    if not source.is_dir():
        raise LayoutError(f"{source}: no such folder")
    if rgb_tree is not None and not rgb_tree.is_dir():
        raise LayoutError(f"{rgb_tree}: no such folder (--rgb)")
    rgb_prefix, x_prefix, y_prefix = layout.prefixes
    if layout.uv and rgb_tree is None and (source / "rgb").is_dir():
        rgb_tree = source / "rgb"  # where `flowprep export --layout uv` puts the frames
    trees = flow_folders(source) if layout.uv else None
    if layout.uv and trees is None:
        for dx, dy in FLOW_FOLDERS:
            if (source / dx).is_dir():
                raise LayoutError(f"{source}: the uv layout keeps dy in {source / dy}/, which is missing")
    ranges: dict[str, str] = {}
    if trees is not None:
        x = _select(index_tree(trees[0]), {x_prefix})
        y = _select(index_tree(trees[1]), {y_prefix})
        rgb = _select(index_tree(rgb_tree), {rgb_prefix}) if rgb_tree is not None else {}
        ranges = _range_files(source, trees[0], x)
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
    return streams, [VideoFolders(v, rgb.get(v), x.get(v), y.get(v), ranges.get(v)) for v in videos]


def _range_files(source: Path, dx_tree: Path, videos: dict[str, str]) -> dict[str, str]:
    """{video: gpu_flow's .bin of its field ranges}: ``u/<video>.bin`` (older versions) or
    ``bins/<video>.bin`` (newer), where the file is there."""
    out = {}
    for video in videos:
        for candidate in (dx_tree / f"{video}.bin", source / "bins" / f"{video}.bin"):
            if candidate.is_file():
                out[video] = str(candidate)
                break
    return out
