"""Damaged or unwritable files fail as one IsoKLError naming the file and what is wrong (issue 9, point 7), and
the manifest records true versions and every command that wrote into a folder (point 8)."""

import json
import os

import pytest

from helpers_runs import make_run
from tl_isokl.errors import IsoKLError, RunDirError
from tl_isokl.files import check_writable_dir, read_json, read_jsonl
from tl_isokl.rundir import RunDir, base_manifest, environment, load_run, merge_manifest


def test_read_json_names_file_line_and_column(tmp_path):
    p = tmp_path / "calibration.json"
    p.write_text('{\n  "c_star": 1.5,\n  oops\n}')
    with pytest.raises(IsoKLError) as e:
        read_json(p)
    msg = str(e.value)
    assert str(p) in msg and "not valid JSON" in msg and "line 3 column 3" in msg
    assert "\n" not in msg


def test_read_json_refuses_the_wrong_top_level_type_and_bad_bytes(tmp_path):
    p = tmp_path / "m.json"
    p.write_text("[1, 2]")
    with pytest.raises(IsoKLError, match="expected a JSON object, found list"):
        read_json(p, kind=dict)
    p.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(IsoKLError, match="not UTF-8"):
        read_json(p)


def test_read_jsonl_names_the_line(tmp_path):
    p = tmp_path / "alpha=1.jsonl"
    p.write_text('{"a": 1}\n\n{"a": 2\n')
    with pytest.raises(IsoKLError, match=rf"{p}:3: not valid JSON"):
        read_jsonl(p)


def test_writable_check_refuses_a_file_as_parent_without_creating_anything(tmp_path):
    f = tmp_path / "plain"
    f.write_text("x")
    with pytest.raises(IsoKLError, match="is a file, not a folder"):
        check_writable_dir(f / "sub" / "deeper")
    with pytest.raises(IsoKLError, match="is a file, not a folder"):
        check_writable_dir("/etc/passwd/sub")
    ok = tmp_path / "new" / "run"
    assert check_writable_dir(ok) == ok
    assert not (tmp_path / "new").exists()  # nothing created, no probe left behind
    assert sorted(os.listdir(tmp_path)) == ["plain"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_writable_check_refuses_a_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(IsoKLError, match="not writable"):
            check_writable_dir(ro / "run")
    finally:
        ro.chmod(0o700)


def test_damaged_cell_record_names_the_file(tmp_path):
    run = make_run(tmp_path / "run", alphas=(0.0, 1.0), n=2, window=16)
    cell = RunDir(run).cell_path(1.0)
    lines = cell.read_text().splitlines()
    d = json.loads(lines[1])
    del d["tokens"]
    cell.write_text(lines[0] + "\n" + json.dumps(d) + "\n")
    with pytest.raises(RunDirError, match=r"alpha=1.jsonl: record 2 is not a trajectory"):
        load_run(run)
    cell.write_text(lines[0] + "\n" + lines[1][:40] + "\n")  # a truncated line
    with pytest.raises(IsoKLError, match=r"alpha=1.jsonl:2: not valid JSON"):
        load_run(run)


def test_odd_cell_name_and_non_object_manifest(tmp_path):
    run = make_run(tmp_path / "run", alphas=(0.0,), n=2, window=16)
    (run / "cells" / "alpha=x.jsonl").write_text("")
    with pytest.raises(RunDirError, match="alpha=x.jsonl: not a cell file name"):
        load_run(run)
    (run / "cells" / "alpha=x.jsonl").unlink()
    (run / "manifest.json").write_text("[]")
    with pytest.raises(IsoKLError, match="manifest.json: expected a JSON object"):
        load_run(run)


def test_environment_records_true_versions():
    from importlib.metadata import version

    env = environment()
    assert env["transformer_lens"] == version("transformer-lens") and env["transformer_lens"] != "unknown"
    assert env["torch"] == version("torch") and env["numpy"] == version("numpy")


def test_merge_manifest_keeps_every_command_line(monkeypatch):
    monkeypatch.setattr("sys.argv", ["tl-isokl", "sweep", "--alphas", "0,1"])
    first = base_manifest("sweep", window=8, history={"alphas": [0.0, 1.0]})
    monkeypatch.setattr("sys.argv", ["tl-isokl", "sweep", "--alphas", "0,1,2"])
    second = merge_manifest(first, base_manifest("sweep", window=8, history={"alphas": [2.0]}))
    assert second["argv"] == first["argv"] and second["created"] == first["created"]
    assert [h["argv"][-1] for h in second["history"]] == ["0,1", "0,1,2"]
    assert [h["alphas"] for h in second["history"]] == [[0.0, 1.0], [2.0]]
    assert all("cwd" in h and h["environment"]["transformer_lens"] for h in second["history"])
    # a manifest from before the history list keeps its one command line as the first entry
    old = {k: v for k, v in first.items() if k != "history"}
    third = merge_manifest(old, second)
    assert [h["argv"][-1] for h in third["history"]] == ["0,1", "0,1", "0,1,2"]


@pytest.mark.parametrize("content,needle", [
    (b"", "header too small"),
    (b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage", "SafetensorError"),
])
def test_damaged_vector_file_names_the_file_and_the_problem(tmp_path, content, needle):
    from tl_isokl.vector import SteeringVector

    p = tmp_path / "vector.safetensors"
    p.write_bytes(content)
    with pytest.raises(IsoKLError) as e:
        SteeringVector.load(p)
    assert str(p) in str(e.value) and needle in str(e.value) and "\n" not in str(e.value)


def test_safetensors_without_our_metadata(tmp_path):
    import torch
    from safetensors.torch import save_file

    from tl_isokl.vector import SteeringVector

    p = tmp_path / "v.safetensors"
    save_file({"direction": torch.ones(4)}, str(p))
    with pytest.raises(IsoKLError, match="no tl_isokl metadata"):
        SteeringVector.load(p)


def test_run_directory_layout_names_the_html_bundle_it_owns():
    """RunDir.owned_files is what --fresh may delete: it must cover the circuitsvis bundle inspect writes."""
    from tl_isokl.figures.tokens_html import BUNDLE_NAME
    from tl_isokl.rundir import RunDir

    owned = dict(RunDir("R").owned_files())
    assert BUNDLE_NAME in owned[RunDir("R").inspect_dir]


def test_manifest_is_typed_and_record_appends_to_the_history(tmp_path):
    from types import SimpleNamespace

    import torch

    from tl_isokl.rundir import Manifest, RunDir
    from tl_isokl.vector import Gate, SteeringVector

    model = SimpleNamespace(tl_isokl_info={"name": "m", "path": "/abs/m", "revision": "r1", "dtype": "float32",
                                           "device": "cpu"})
    vec = SteeringVector(torch.ones(4), 1, "pca", Gate("soft", 0.1))
    m = Manifest.of("sweep", model, vec, "e" * 64, 3, window=16, seed=7, positions="generated",
                    history={"alphas": [0.0]}, threshold=0.75)
    d = m.to_dict()
    assert (d["model"], d["model_path"], d["revision"], d["layer"], d["method"]) == ("m", "/abs/m", "r1", 1, "pca")
    assert d["gate"] == {"kind": "soft", "tau": 0.1} and d["vector_sha256"] == vec.sha256
    assert (d["window"], d["seed"], d["positions"], d["threshold"], d["n_prompts"]) == (16, 7, "generated", 0.75, 3)
    rd = RunDir(tmp_path)
    rd.record(m)
    first = rd.read_manifest()
    rd.record(Manifest.of("sweep", model, vec, "e" * 64, 3, window=16, seed=7, positions="generated",
                          history={"alphas": [1.0]}, threshold=0.75))
    second = rd.read_manifest()
    assert second["created"] == first["created"]
    assert [h["alphas"] for h in second["history"]] == [[0.0], [1.0]]


def test_published_files_follow_the_umask_read_at_write_time(tmp_path):
    """The umask is read when a file is written, not at import: a umask set after import is honoured."""
    import os
    import subprocess
    import sys

    code = ("import os, sys; import tl_isokl.files as f; os.umask(0o027); f._umask.cache_clear(); "
            "p = f.atomic_write_text(sys.argv[1], 'x'); print(oct(os.stat(p).st_mode & 0o777))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.txt")], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "0o640"
