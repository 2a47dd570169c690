"""How well ``flowprep verify --content`` tells right flow from wrong, on real clips.

Usage: python bench/content_check.py [--work DIR] [--algo dis]

Extracts the real clips of ../shared/data/videos (``--algo``, short side 256) and imports the
reference sample of ../shared/data/flow-jpeg-reference; then writes each store again broken in one
way at a time — pairing one frame early or late, x/y swapped, sign flipped, flow ×2 or ×½ (a bound
off by 2×), flow off by a constant (+1.5, −1 px: a zero level off), another video's flow — and
prints the verdict of the content check on every video of every store. Good stores must pass,
broken ones must be caught (a still video may give no verdict). No pass/fail: a table.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from flowprep.content import check_store
from flowprep.storage.codec import decode_flow, encode_flow
from flowprep.storage.shard import record_key
from flowprep.storage.store import FlowStore, ShardWriter

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def shifted(flows: list[np.ndarray], by: int) -> list[np.ndarray]:
    """Field t replaced by field t+by (clamped): pairing off by ``by`` frames."""
    return [flows[min(max(t + by, 0), len(flows) - 1)] for t in range(len(flows))]


BREAKS: dict[str, Callable[[list[np.ndarray], list[np.ndarray]], list[np.ndarray]]] = {
    "one frame early": lambda f, other: shifted(f, -1),
    "one frame late": lambda f, other: shifted(f, 1),
    "x/y swapped": lambda f, other: [x[..., ::-1].copy() for x in f],
    "sign flipped": lambda f, other: [-x for x in f],
    "flow x2": lambda f, other: [2 * x for x in f],
    "flow x1/2": lambda f, other: [x / 2 for x in f],
    "offset (+1.5, -1) px": lambda f, other: [x + np.array([1.5, -1.0], np.float32) for x in f],
    "another video's flow": lambda f, other: [other[t % len(other)] for t in range(len(f))],
}


def broken_copy(source: Path, out: Path, name: str) -> None:
    """Every video of ``source`` written to ``out`` with its flow broken by ``BREAKS[name]`` (RGB kept)."""
    store = FlowStore(source)
    videos = store.videos()
    with ShardWriter(out, what="bench/content_check.py") as writer:
        for i, video in enumerate(videos):
            meta = store.video_meta(video)
            flows = [decode_flow(r) for r in store.records(video, "flow", range(meta.num_flows))]
            other_video = videos[(i + 1) % len(videos)]
            other_meta = store.video_meta(other_video)
            other = [decode_flow(r) for r in store.records(other_video, "flow", range(other_meta.num_flows))]
            other = [_fit(x, flows[0].shape) for x in other]
            new = BREAKS[name](flows, other)
            bound = max(20.0, float(np.ceil(max(np.abs(x).max() for x in new))))
            records = [(record_key(video, "rgb", t), bytes(r))
                       for t, r in enumerate(store.records(video, "rgb", range(meta.num_frames)))]
            records += [(record_key(video, "flow", t), encode_flow(x, bound, 95)) for t, x in enumerate(new)]
            writer.put_video(video, records, meta)


def _fit(flow: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    import cv2

    if flow.shape == shape:
        return flow
    return cv2.resize(flow, (shape[1], shape[0]))


def build_good(work: Path, algo: str) -> dict[str, Path]:
    stores = {"extract": work / "extract", "import": work / "import"}
    if not (stores["extract"] / "flowprep.json").exists():
        subprocess.run([sys.executable, "-m", "flowprep", "extract", SHARED / "videos", stores["extract"], "--algo",
                        algo, "--short-side", "256", "--workers", "2"], check=True, cwd=REPO)
    if not (stores["import"] / "flowprep.json").exists():
        subprocess.run([sys.executable, "-m", "flowprep", "import", SHARED / "flow-jpeg-reference",
                        stores["import"], "--trim-rgb"], check=True, cwd=REPO)
    return stores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/flowprep-content"))
    parser.add_argument("--algo", default="dis")
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED}: the real-data fixtures are missing")
    stores = build_good(args.work, args.algo)
    rows = []
    for kind, good in stores.items():
        variants = {"as made": good}
        for name in BREAKS:
            if kind == "import" and name == "another video's flow":
                continue  # one video: no other
            out = args.work / f"{kind}-{name.replace(' ', '_').replace('/', '')}"
            if not (out / "done").exists():
                subprocess.run(["rm", "-rf", str(out)], check=True)
                broken_copy(good, out, name)
                (out / "done").write_text("")
            variants[name] = out
        for name, path in variants.items():
            started = time.perf_counter()
            results = check_store(FlowStore(path))
            seconds = time.perf_counter() - started
            for result in results:
                r = result.residuals
                others = {k: v for k, v in r.items() if k != "stored"}
                best = min(others, key=others.get, default="-")
                rows.append((kind, name, result.video.rsplit("/", 1)[-1][:28], result.verdict, r.get("stored"),
                             best, others.get(best), len(result.fields), seconds / len(results)))
    print("| store | broken | video | verdict | stored | best other reading | its difference | pairs | s/video |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind, name, video, verdict, stored, best, other, pairs, seconds in rows:
        def pct(x):
            return "-" if x is None else f"{x:.0%}"

        print(f"| {kind} | {name} | {video} | {verdict} | {pct(stored)} | {best} | {pct(other)} | {pairs} "
              f"| {seconds:.2f} |")


if __name__ == "__main__":
    main()
