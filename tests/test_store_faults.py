"""Stores under faults, as an outside audit found them: each one gets a clear line and loses nothing.

Real videos, real LMDB shards damaged the way disks, copies and kills damage them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import lmdb
import pytest
from conftest import to_pre_index_format, write_video
from test_cli import FAST, flowprep

from flowprep.storage.lock import LOCK_FILE
from flowprep.storage.shard import CorruptRecordError, StoreError, close_env, record_key
from flowprep.storage.store import FlowStore, ShardWriter


def edit_shard(shard: Path, edit) -> None:
    """Open a shard's databases in one write transaction and let ``edit(txn, data_db, meta_db)`` change them."""
    close_env(shard)
    env = lmdb.open(str(shard), max_dbs=4)
    with env.begin(write=True) as txn:
        edit(txn, env.open_db(b"data", txn=txn), env.open_db(b"meta", txn=txn))
    env.close()


def flip(value: bytes, offsets: range | list[int]) -> bytes:
    out = bytearray(value)
    for i in offsets:
        out[i] ^= 0x5A
    return bytes(out)


@pytest.fixture
def store(video_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    flowprep("extract", video_dir, out, *FAST, "--algo", "dis", check=True)
    return out


def one_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# 2 (a): a store's settings disagree with its videos


def test_lost_settings_file_is_rebuilt_and_other_flags_are_refused(store: Path, video_dir: Path) -> None:
    original = json.loads((store / "flowprep.json").read_text())
    (store / "flowprep.json").unlink()
    other = flowprep("extract", video_dir, store, *FAST, "--algo", "farneback", "--bound", "5", "--short-side", "64")
    assert other.returncode == 2
    line = one_line(other)
    assert "algo='dis' ('farneback')" in line and "bound=20.0 (5.0)" in line and "short_side=0 (64)" in line
    assert json.loads((store / "flowprep.json").read_text()) == original
    same = flowprep("extract", video_dir, store, *FAST, "--algo", "dis", check=True)
    assert "skipped 3" in same.stderr

    def rewrite_bound(txn, data, meta) -> None:  # what the old code let a second run do to one video
        m = json.loads(txn.get(b"clip_a", db=meta))
        txn.put(b"clip_a", json.dumps({**m, "bound": 5.0}).encode(), db=meta)

    edit_shard(store / "shard-00000.lmdb", rewrite_bound)
    result = flowprep("verify", store)
    assert result.returncode == 1
    assert "problem: clip_a: made with bound=5.0 (20.0) (values in parentheses: flowprep.json)" in result.stdout
    (store / "flowprep.json").unlink()
    mixed = flowprep("extract", video_dir, store, *FAST, "--algo", "dis")
    assert mixed.returncode == 2 and "the stored videos disagree" in one_line(mixed)


# 2 (b): the settings are written only by the run that holds the lock


def test_settings_are_written_only_under_the_store_lock(video_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "new"
    with ShardWriter(out, what="flowprep extract"):  # another run holds the new store
        result = flowprep("extract", video_dir, out, *FAST, "--algo", "farneback")
    line = one_line(result)
    assert result.returncode == 2 and f"{out}: in use by another flowprep extract (pid {os.getpid()}" in line
    assert not (out / "flowprep.json").exists()


# 3: --param keys, values and types


def test_params_are_checked_once_before_any_video_and_keep_their_types(video_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    typo = flowprep("extract", video_dir, out, *FAST, "--device", "cpu", "--param", "aplha=10")
    line = one_line(typo)
    assert typo.returncode == 2 and "--param aplha: not a parameter of brox" in line
    assert "alpha, gamma, delta" in line
    bad = flowprep("extract", video_dir, out, *FAST, "--algo", "farneback", "--param", "winsize=-5")
    assert bad.returncode == 2 and "--param winsize=-5: must be in 3..255" in one_line(bad)
    preset = flowprep("extract", video_dir, out, *FAST, "--algo", "dis", "--param", "preset=turbo")
    assert preset.returncode == 2 and "preset must be one of" in one_line(preset)
    assert not list(out.glob("shard-*"))
    flowprep("extract", video_dir, out, *FAST, "--device", "cpu", "--param", "inner_iterations=1",
             "--param", "alpha=10", check=True)
    settings = json.loads((out / "flowprep.json").read_text())
    assert settings["flow_params"] == {"inner_iterations": 1, "alpha": 10.0}
    assert isinstance(settings["flow_params"]["inner_iterations"], int)
    params = FlowStore(out).meta("clip_a")["flow"]["params"]
    assert params["inner_iterations"] == 1 and isinstance(params["inner_iterations"], int) and params["alpha"] == 10


# 4: payload corruption


def test_checksums_catch_payload_corruption(store: Path) -> None:
    shard = store / "shard-00000.lmdb"

    def damage(txn, data, meta) -> None:
        rgb = txn.get(record_key("clip_a", "rgb", 3), db=data)
        txn.put(record_key("clip_a", "rgb", 3), flip(rgb, range(len(rgb) // 2, len(rgb) // 2 + 50)), db=data)
        flow = txn.get(record_key("clip_c", "flow", 2), db=data)
        txn.put(record_key("clip_c", "flow", 2), flip(flow, [len(flow) - 400]), db=data)
        header = txn.get(record_key("walk/clip_b", "flow", 1), db=data)
        txn.put(record_key("walk/clip_b", "flow", 1), flip(header, [7]), db=data)  # a byte of the bound

    edit_shard(shard, damage)
    result = flowprep("verify", store)
    assert result.returncode == 1
    for where in ("clip_a: rgb record 3", "clip_c: flow record 2", "walk/clip_b: flow record 1"):
        assert f"problem: {where}: CRC-32 mismatch" in result.stdout
    assert "3 problem(s)" in result.stdout
    reader = FlowStore(store)
    with pytest.raises(CorruptRecordError, match=r"clip_a: rgb record 3 in .*shard-00000.lmdb: CRC-32 mismatch"):
        reader.rgb("clip_a", 3)
    assert reader.flow("clip_a", 3).shape == (120, 160, 2)
    reader.close()

    to_pre_index_format(shard, checksums=False)  # a store written before checksums
    old = flowprep("verify", store, "--no-decode")
    assert old.returncode == 0 and "note: 3 of 3 videos have no checksums" in old.stdout
    # without checksums the damage is still found where it breaks the JPEG data (strict decoding, issue 26)
    with pytest.raises(CorruptRecordError, match=r"clip_a: rgb record 3 .*damaged JPEG data"):
        FlowStore(store).rgb("clip_a", 3)


# 6: a truncated shard (an interrupted copy)


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.99])
def test_a_truncated_shard_is_one_line_not_a_bus_error(store: Path, video_dir: Path, fraction: float) -> None:
    data = store / "shard-00000.lmdb" / "data.mdb"
    os.truncate(data, int(data.stat().st_size * fraction))
    commands = [["verify", store], ["info", store], ["extract", video_dir, store, *FAST, "--algo", "dis"]]
    for args in commands if fraction == 0.5 else commands[:1]:
        result = flowprep(*args)
        assert result.returncode in (1, 2), (args, result.returncode, result.stderr)
        text = result.stdout + result.stderr
        assert "Traceback" not in text and "shard-00000.lmdb: truncated LMDB shard: data.mdb is" in text


# 7: a full disk


def _in_small_filesystem(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run a shell script with $MNT a tmpfs of its own (a mount namespace: nothing outside sees it)."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    (tmp_path / "mnt").mkdir()
    env = {**os.environ, "MNT": str(tmp_path / "mnt"), "PY": sys.executable}
    args = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--mount"]
    probe = subprocess.run([*args, "sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$MNT"'], env=env,
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a mount namespace here: {probe.stderr.strip()}")
    return subprocess.run([*args, "sh", "-c", script], env=env, capture_output=True, text=True, timeout=600)


def test_a_full_disk_is_one_line_and_the_run_resumes(tmp_path: Path) -> None:
    src = tmp_path / "videos"
    src.mkdir()
    for i in range(6):
        write_video(src / f"v{i}.avi", frames=12, seed=i)
    script = f"""
    mount -t tmpfs -o size=2k tmpfs "$MNT"
    $PY -m flowprep extract {src} "$MNT/full" {' '.join(FAST)} --algo dis; echo "rc=$?"
    ls -a "$MNT/full" 2>/dev/null | grep -c tmp; umount "$MNT"
    mount -t tmpfs -o size=700k tmpfs "$MNT"
    $PY -m flowprep extract {src} "$MNT/out" {' '.join(FAST)} --algo dis; echo "rc=$?"
    mount -o remount,size=64m "$MNT"
    $PY -m flowprep extract {src} "$MNT/out" {' '.join(FAST)} --algo dis; echo "rc=$?"
    $PY -m flowprep verify "$MNT/out"; echo "rc=$?"
    """
    result = _in_small_filesystem(script, tmp_path)
    out, err = result.stdout, result.stderr
    assert "Traceback" not in err, err
    assert out.count("rc=2") == 2 and out.count("rc=0") == 2, out + err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert "no space left on device writing" in errors[0] and "free space and run the same command again" in errors[0]
    assert out.splitlines()[1] == "0", "no temporary settings file is left behind"
    assert "no space left on device writing" in errors[1] and "shard-00000.lmdb" in errors[1]
    stored = int(errors[1].split("; ")[1].split()[0])
    assert 0 < stored < 6, errors[1]
    assert f"skipped {stored} already complete" in err and "ok: 6 videos" in out


# 8: LMDB itself fails


def _damaged_btree_page(shard: Path) -> bytes:
    """data.mdb with one B-tree leaf page overwritten so that the shard opens but reading its records fails."""
    data = (shard / "data.mdb").read_bytes()
    size = 4096
    for page in range(2, len(data) // size):
        if not struct.unpack_from("<H", data, page * size + 10)[0] & 0x02:  # P_LEAF
            continue
        damaged = bytearray(data)
        damaged[page * size + 16:(page + 1) * size] = b"\xff" * (size - 16)
        (shard / "data.mdb").write_bytes(damaged)
        close_env(shard)
        try:
            reader = FlowStore(shard.parent)
            reader.videos()
            for _ in reader.iter_records(0):
                pass
        except StoreError as exc:
            if "damaged LMDB shard" in str(exc):
                close_env(shard)
                return bytes(damaged)
        finally:
            close_env(shard)
    pytest.fail("no leaf page whose damage shows only when reading records")


def test_lmdb_failures_are_problem_lines(store: Path, tmp_path: Path) -> None:
    shard = store / "shard-00000.lmdb"
    pristine = (shard / "data.mdb").read_bytes()
    lmdb.open(str(store / "shard-00001.lmdb")).close()  # a writer killed during a shard's first commit
    result = flowprep("verify", store)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "shard-00001.lmdb: no video was ever committed to this shard" in result.stdout
    assert FlowStore(store).videos() == ["clip_a", "clip_c", "walk/clip_b"]  # readers see an empty shard
    shutil.rmtree(store / "shard-00001.lmdb")

    (shard / "data.mdb").write_bytes(b"\x00" * 8192 + pristine[8192:])  # both meta pages
    for command in ("verify", "info"):
        result = flowprep(command, store)
        assert result.returncode == 1 and "Traceback" not in result.stderr + result.stdout
        assert "shard-00000.lmdb: cannot open LMDB shard (InvalidError" in result.stdout

    (shard / "data.mdb").write_bytes(pristine)
    _damaged_btree_page(shard)
    result = flowprep("verify", store)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "shard-00000.lmdb: damaged LMDB shard (CorruptedError" in result.stdout

    (shard / "data.mdb").write_bytes(pristine)
    close_env(shard)
    edit_shard(shard, lambda txn, data, meta: txn.put(b"clip_c", b'{"video": "clip_c", "num_fr', db=meta))
    for command in ("verify", "info"):
        result = flowprep(command, store)
        assert result.returncode == 1 and "Traceback" not in result.stderr + result.stdout
        assert "metadata of video 'clip_c' is damaged" in result.stdout
    assert "ok" not in flowprep("verify", store).stdout.splitlines()[-1]


# 11: workers die with the writer


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def test_workers_exit_when_extract_is_killed(tmp_path: Path) -> None:
    in_tmp = set(Path("/tmp").glob("flowprep-run-*"))  # left by other programs (or older versions)
    src = tmp_path / "many"
    src.mkdir()
    for i in range(6):
        write_video(src / f"v{i}.avi", frames=60, seed=i)
    proc = subprocess.Popen([sys.executable, "-m", "flowprep", "extract", str(src), str(tmp_path / "out"),
                             "--short-side", "0", "--workers", "2", "--device", "cpu"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    deadline = time.time() + 120
    while time.time() < deadline and len(workers) < 2:
        workers = [p for p in _children(proc.pid) if "loky" in Path(f"/proc/{p}/cmdline").read_text(errors="replace")]
        time.sleep(0.2)
    assert len(workers) >= 2, "the run should have started its workers"
    time.sleep(2.0)  # workers busy with their first videos
    os.kill(proc.pid, signal.SIGKILL)  # the writer alone, as the OOM killer or `kill -9 PID` does
    proc.wait()
    deadline = time.time() + 30
    alive = workers
    while time.time() < deadline and alive:
        alive = [p for p in workers if Path(f"/proc/{p}").exists() and "Z" not in _state(p)]
        time.sleep(0.25)
    for p in alive:
        os.kill(p, signal.SIGKILL)
    assert not alive, "workers outlived the killed writer"
    lock = tmp_path / "out" / LOCK_FILE
    assert lock.exists()
    ShardWriter(tmp_path / "out").close()  # nothing holds the store any more
    # the killed run's working folder is in the store (the next run removes it), not in /tmp
    assert (tmp_path / "out" / ".flowprep-run").is_dir() and set(Path("/tmp").glob("flowprep-run-*")) <= in_tmp


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


# Smaller ones


def test_info_on_a_store_where_every_video_failed(tmp_path: Path) -> None:
    src = tmp_path / "bad"
    src.mkdir()
    (src / "notes.avi").write_text("not a video\n" * 50)
    out = tmp_path / "out"
    assert flowprep("extract", src, out, *FAST, "--algo", "dis").returncode == 1
    info = flowprep("info", out, check=True).stdout
    assert "videos      0" in info and "failures    1" in info and "notes.avi: not a video" in info
