"""A store's settings: what every video in one store is extracted with (``OUT/flowprep.json``).

One store holds videos of one set of settings, so a trainer reading it sees one flow encoding. The
file is written under the store's lock; where it is missing it is rebuilt from the videos' own
metadata (each video records its algorithm, parameters, bound, qualities and size), and ``flowprep
verify`` compares every video's metadata with it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flowprep.algorithms.registry import check_algo, implementation_defaults
from flowprep.errors import SettingError
from flowprep.storage.atomic import write_json_atomic
from flowprep.storage.codec import parse_bound
from flowprep.storage.meta import VideoMeta
from flowprep.storage.shard import StoreError
from flowprep.storage.store import SETTINGS_FILE, read_json


@dataclass(frozen=True)
class ExtractSettings:
    """What every video of one store is extracted with (kept in ``OUT/flowprep.json``).

    ``bound``: pixels (flow clipped to ±bound) or "adaptive" (per-field min/max); ``quality`` and
    ``rgb_quality``: JPEG quality 1-100; ``short_side``: pixels of the frames' smaller side after
    rescaling (0 keeps the original size); ``flow_params``: the parameters given with ``--param``
    (the rest are the implementation's defaults).
    """

    algo: str = "brox"
    bound: float | str = 20.0
    quality: int = 90
    rgb_quality: int = 90
    short_side: int = 256
    bidirectional: bool = False
    flow_params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_algo(self.algo)
        if not isinstance(self.flow_params, dict):
            raise SettingError("flow_params", "must be a mapping of parameter names to values", self.flow_params)
        object.__setattr__(self, "bound", _bound("bound", self.bound))
        for name in ("quality", "rgb_quality"):
            if not 1 <= int(getattr(self, name)) <= 100:
                raise SettingError(name, "must be in 1..100", getattr(self, name))
        if self.short_side < 0:
            raise SettingError("short_side", "must be >= 0 pixels", self.short_side)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ImportSettings:
    """What every video of an imported store was brought in with (``OUT/flowprep.json`` holds
    ``{"imported": ...}``). ``bound`` (pixels) and ``zero_level`` (grey level of 0 px) are how the
    other tool mapped flow to [0, 255]; ``flow_algo`` what it computed (recorded, not run); ``streams``:
    ("rgb", "flow"), ("rgb",) or ("flow",)."""

    layout: str
    bound: float = 20.0
    zero_level: float = 127.5
    flow_algo: str = "tvl1"
    streams: tuple[str, ...] = ("rgb", "flow")

    def __post_init__(self) -> None:
        bound = _bound("bound", self.bound)
        if bound == "adaptive":
            raise SettingError("bound", "of imported flow must be a number of pixels", bound)
        object.__setattr__(self, "bound", bound)
        if not 0 <= self.zero_level <= 255:
            raise SettingError("zero_level", "must be a grey level in 0..255", self.zero_level)
        check_algo(self.flow_algo, "flow_algo")
        object.__setattr__(self, "streams", tuple(self.streams))

    def to_dict(self) -> dict:
        return {"imported": {**asdict(self), "streams": list(self.streams)}}


def _bound(setting: str, value: object) -> float | str:
    try:
        return parse_bound(value)
    except ValueError as exc:
        raise SettingError(setting, str(exc).removeprefix("bound ")) from None


def describe_settings(settings: dict, where: Path) -> str:
    """The store's settings (the contents of ``OUT/flowprep.json``) in one line; StoreError naming the file
    where they are not settings (valid JSON of another shape)."""
    try:
        if "imported" in settings:
            s = ImportSettings(**settings["imported"])
            return (f"imported {s.layout} files ({' + '.join(s.streams)}); flow: {s.flow_algo}, ±{s.bound:g} px "
                    f"with 0 px at level {s.zero_level:g}")
        e = ExtractSettings(**settings)
        return (f"bound {e.bound}, quality {e.quality}, rgb quality {e.rgb_quality}, short side {e.short_side} px"
                + (", bidirectional" if e.bidirectional else ""))
    except (TypeError, ValueError, KeyError) as exc:
        raise StoreError(f"{where / SETTINGS_FILE}: damaged settings file ({exc}); delete it so that it is "
                         "rebuilt from the videos' metadata") from None


def video_settings(meta: VideoMeta) -> dict:
    """The settings (as :meth:`ExtractSettings.to_dict` or :meth:`ImportSettings.to_dict`) one stored
    video was made with, from its metadata: ``flow_params`` are the parameters that differ from its
    implementation's defaults."""
    if meta.is_imported:
        return {"imported": meta.imported}
    flow = meta.flow
    if flow is None:
        raise ValueError("no 'flow'")
    try:
        defaults = implementation_defaults(flow.implementation)
    except ValueError:
        defaults = {}
    params = {k: v for k, v in flow.params.items() if k != "device" and defaults.get(k, object()) != v}
    return {"algo": flow.algo, "bound": parse_bound(meta.bound), "quality": meta.quality,
            "rgb_quality": meta.rgb_quality, "short_side": meta.short_side,
            "bidirectional": meta.num_backward > 0, "flow_params": params}


def _differences(have: dict, want: dict) -> list[str]:
    """``key=have (want)`` for every setting that differs."""
    out = []
    for key in ExtractSettings().to_dict():
        a, b = have.get(key), want.get(key)
        if key == "flow_params":
            keys = sorted(set(a or {}) | set(b or {}))
            out += [f"--param {k}={(a or {}).get(k, 'default')!r} ({(b or {}).get(k, 'default')!r})"
                    for k in keys if (a or {}).get(k) != (b or {}).get(k)]
        elif a != b:
            out.append(f"{key}={a!r} ({b!r})")
    return out


def video_mismatches(meta: VideoMeta, settings: dict) -> list[str]:
    """How one video's metadata disagrees with the store's settings (empty: it agrees)."""
    if meta.is_imported or "imported" in settings:
        return _import_differences(video_settings(meta), settings)
    try:
        mine = video_settings(meta)
        store = {**ExtractSettings().to_dict(), **settings}
        out = _differences({**mine, "flow_params": {}}, {**store, "flow_params": {}})
        used = {k: v for k, v in meta.flow.params.items() if k != "device"}
        for key in sorted(set(store["flow_params"]) | set(mine["flow_params"])):
            if key not in store["flow_params"]:
                out.append(f"--param {key}={used[key]!r} (default)")
            elif used.get(key) != store["flow_params"][key]:
                out.append(f"--param {key}={used.get(key, 'unknown')!r} ({store['flow_params'][key]!r})")
        return out
    except (KeyError, TypeError, ValueError) as exc:
        return [f"metadata lacks or garbles a setting ({type(exc).__name__}: {exc})"]


def _import_differences(have: dict, want: dict) -> list[str]:
    """Differences between two settings of which at least one is an import's."""
    if ("imported" in have) != ("imported" in want):
        return [f"{'imported files' if 'imported' in have else 'extracted flow'} "
                f"({'imported files' if 'imported' in want else 'extracted flow'})"]
    a, b = have["imported"], want["imported"]
    return [f"{key}={a.get(key)!r} ({b.get(key)!r})" for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]


def rebuild_settings(metas: Iterable[VideoMeta], where: Path) -> dict | None:
    """The store's settings from its videos' metadata (None: no video); StoreError if they disagree."""
    first_video, first = None, None
    for meta in metas:
        mine = video_settings(meta)
        if first is None:
            first_video, first = meta.video, mine
        elif mine != first:
            diff = (_import_differences(mine, first) if "imported" in mine or "imported" in first
                    else _differences(mine, first))
            raise StoreError(f"{where}: {SETTINGS_FILE} is missing and the stored videos disagree: "
                             f"{meta.video} has {', '.join(diff)} "
                             f"(values in parentheses: {first_video}); extract into a new folder")
    return first


def check_settings(out: Path, settings: ExtractSettings | ImportSettings, metas: Iterable[VideoMeta]
                   ) -> str | None:
    """Refuse to mix settings in one store. Call with the store's lock held. Writes the settings on the
    first run; where the file is missing from a store that has videos, rebuilds it from ``metas`` (the
    stored videos' metadata) first. Returns a note to show the user, or None."""
    path = out / SETTINGS_FILE
    wanted = settings.to_dict()
    note = None
    if path.exists():
        try:
            have = read_json(path, "settings file")
            describe_settings(have, out)
            if "imported" not in have:
                have = {**ExtractSettings().to_dict(), **have}
                have["bound"] = parse_bound(have["bound"])
        except (StoreError, ValueError) as exc:
            raise StoreError(f"{exc}; delete it so that it is rebuilt from the videos' metadata") from None
    else:
        have = rebuild_settings(metas, out)
        if have is None:
            write_json_atomic(path, wanted)
            return None
        write_json_atomic(path, have)
        note = f"{path} was missing: rebuilt from the stored videos' metadata"
    if "imported" in have or "imported" in wanted:
        diff = _import_differences(have, wanted)
        if diff:
            raise StoreError(f"{out} was made with other settings: {', '.join(diff)} (this run's in "
                             "parentheses); use the same flags or another output folder")
        return note
    diff = _differences(have, wanted)
    if diff:
        raise StoreError(f"{out} was extracted with other settings: {', '.join(diff)} (this run's in parentheses); "
                         "use the same flags or another output folder")
    return note
