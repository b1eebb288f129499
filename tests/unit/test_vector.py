"""SteeringVector and Gate: validation, identity (sha256), safetensors persistence, model checks. No model."""

import hashlib
import json
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tl_isokl.errors import IsoKLError, VectorMismatchError
from tl_isokl.vector import Gate, SteeringVector

PKG = Path(__file__).resolve().parents[2]


def vec(**kw):
    base = dict(direction=torch.tensor([0.5, -1.25, 3.0, 0.0, 7.5]), layer=3, method="mean_diff", gate=None,
                meta={"model": "tl-isokl/testbed", "token": "last", "n_pos": 4, "nested": {"a": [1, 2]}})
    base.update(kw)
    return SteeringVector(**base)


# ---- persistence --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,gate", [
    (m, g) for m in ["mean_diff", "pca", "directional_ablation", "pca+ablate"]
    for g in [None, Gate("soft", 0.1), Gate("hard", -0.5), Gate("sign")]
    if "abla" not in m or g is None or g.kind != "sign"])  # sign with an ablation is refused
def test_save_load_round_trip_is_identical(tmp_path, method, gate):
    v = vec(method=method, gate=gate, direction=torch.randn(64, generator=torch.Generator().manual_seed(0)))
    p = v.save(tmp_path / "sub" / "v.safetensors")
    w = SteeringVector.load(p)
    assert torch.equal(w.direction, v.direction) and w.direction.dtype == torch.float32
    assert (w.layer, w.method, w.gate, w.meta) == (v.layer, v.method, v.gate, v.meta)
    assert w.sha256 == v.sha256


def test_saved_file_is_plain_safetensors_with_one_tensor(tmp_path):
    """Parse the file by the safetensors spec (u64 header length, JSON header, raw bytes): no pickle anywhere."""
    v = vec(gate=Gate("soft", 0.2))
    raw = v.save(tmp_path / "v.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8: 8 + n])
    assert set(header) == {"direction", "__metadata__"}
    assert header["direction"]["dtype"] == "F32" and header["direction"]["shape"] == [5]
    assert len(raw) == 8 + n + 5 * 4  # nothing after the tensor bytes
    meta = json.loads(header["__metadata__"]["tl_isokl"])
    assert (meta["layer"], meta["method"], meta["d_model"], meta["sha256"]) == (3, "mean_diff", 5, v.sha256)
    assert struct.unpack("<5f", raw[8 + n:]) == tuple(v.direction.tolist())


def test_no_pickle_in_the_package_source():
    """Vectors (and everything else) persist as safetensors/JSON: pickle loaders run arbitrary code. Other tools'
    .pt files are read with torch.load(..., weights_only=True) only (tensors, never code)."""
    offenders = []
    for f in list((PKG / "tl_isokl").rglob("*.py")) + list((PKG / "cli").rglob("*.py")):
        text = f.read_text(encoding="utf-8")
        for bad in ("import pickle", "torch.save(", "weights_only=False"):
            if bad in text:
                offenders.append(f"{f.relative_to(PKG)}: {bad}")
        for line in text.splitlines():
            if "torch.load(" in line and "weights_only=True" not in line.split("torch.load(", 1)[1]:
                offenders.append(f"{f.relative_to(PKG)}: {line.strip()}")
    assert not offenders, offenders


def test_load_missing_file_says_how_to_make_one(tmp_path):
    p = tmp_path / "nope.safetensors"
    with pytest.raises(IsoKLError, match=r"nope\.safetensors.*does not exist.*tl-isokl extract"):
        SteeringVector.load(p)


def test_load_directory_is_a_clear_error(tmp_path):
    with pytest.raises(IsoKLError, match="does not exist"):
        SteeringVector.load(tmp_path)


@pytest.mark.parametrize("content", [b"", b"hello, not a tensor file\n", b"\x80\x04\x95 pickle-ish bytes"])
def test_load_non_safetensors_file_is_a_clear_error(tmp_path, content):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(content)
    with pytest.raises(IsoKLError, match=r"bad\.safetensors.*not a tl-isokl vector file"):
        SteeringVector.load(p)


def test_load_foreign_safetensors_file_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.ones(3)}, str(p))
    with pytest.raises(IsoKLError, match="not a tl-isokl vector file"):
        SteeringVector.load(p)


@pytest.mark.parametrize("meta", [{}, [], {"method": "mean_diff"}, {"layer": "x", "method": "pca"},
                                  {"layer": 1, "method": "bogus"},
                                  {"layer": 1, "method": "pca", "gate": {"kind": "soft", "bogus": 1}}])
def test_load_incomplete_metadata_is_a_clear_error(tmp_path, meta):
    """A file with our metadata key but missing/garbled fields is still IsoKLError, never KeyError/TypeError."""
    from safetensors.torch import save_file

    p = tmp_path / "partial.safetensors"
    save_file({"direction": torch.ones(3)}, str(p), metadata={"tl_isokl": json.dumps(meta)})
    with pytest.raises(IsoKLError, match="partial.safetensors"):
        SteeringVector.load(p)


def test_load_d_model_metadata_mismatch(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "v.safetensors"
    meta = {"layer": 1, "method": "mean_diff", "d_model": 9, "gate": None}
    save_file({"direction": torch.ones(3)}, str(p), metadata={"tl_isokl": json.dumps(meta)})
    with pytest.raises(IsoKLError, match="d_model 9 but the tensor has 3"):
        SteeringVector.load(p)


# ---- identity ---------------------------------------------------------------------------------------------

def test_sha256_matches_an_independent_hash_of_header_and_float32_bytes():
    v = SteeringVector(torch.tensor([1.0, 2.0, 3.0, 4.0]), layer=2, method="pca", gate=Gate("hard", 0.25))
    head = json.dumps({"gate": {"kind": "hard", "tau": 0.25}, "layer": 2, "method": "pca"}, sort_keys=True)
    expected = hashlib.sha256(head.encode() + struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)).hexdigest()
    assert v.sha256 == expected
    # pinned: a change of the hashing scheme invalidates every manifest written so far
    assert v.sha256 == "5627ab24e3a9d549cb81407b90c53bbff2a39227fe5307ec22692911178a43c9"


def test_sha256_stable_across_copies_dtype_and_meta():
    v = vec()
    assert v.sha256 == vec().sha256
    assert v.sha256 == vec(direction=v.direction.double()).sha256  # stored as float32 either way
    assert v.sha256 == vec(meta={}).sha256  # provenance is not identity: same direction, same hook


@pytest.mark.parametrize("change", [
    dict(layer=4), dict(method="pca"), dict(method="directional_ablation"), dict(gate=Gate("soft", 0.0)),
    dict(gate=Gate("hard", 0.0)), dict(gate=Gate("sign", 0.0)),
    dict(direction=torch.tensor([0.5, -1.25, 3.0, 0.0, 7.5000005])),
])
def test_sha256_changes_with_anything_that_changes_the_hook(change):
    assert vec(**change).sha256 != vec().sha256


def test_sha256_sensitive_to_gate_tau():
    assert vec(gate=Gate("soft", 0.1)).sha256 != vec(gate=Gate("soft", 0.2)).sha256


def test_with_gate_returns_a_new_vector():
    v = vec()
    g = v.with_gate(Gate("hard", 0.3))
    assert v.gate is None and g.gate == Gate("hard", 0.3) and torch.equal(g.direction, v.direction)


# ---- validation -------------------------------------------------------------------------------------------

def test_bad_method():
    with pytest.raises(IsoKLError, match=r"'pcaa'.*mean_diff, pca.*directional_ablation"):
        vec(method="pcaa")


def test_bad_gate_kind():
    with pytest.raises(IsoKLError, match=r"'cosine'.*soft, hard, sign"):
        Gate("cosine")


@pytest.mark.parametrize("tau", [1.5, -1.01])
def test_bad_gate_tau(tau):
    with pytest.raises(IsoKLError, match=rf"{tau}.*\[-1, 1\]"):
        Gate("soft", tau)


@pytest.mark.parametrize("direction,match", [
    (torch.ones(2, 3), r"1-D.*\(2, 3\)"),
    (torch.zeros(4), "zero or not finite"),
    (torch.tensor([1.0, float("nan")]), "zero or not finite"),
    (torch.tensor([1.0, float("inf")]), "zero or not finite"),
])
def test_bad_direction(direction, match):
    with pytest.raises(IsoKLError, match=match):
        vec(direction=direction)


# ---- model checks -----------------------------------------------------------------------------------------

def fake_model(d_model=5, n_layers=6):
    """Just the attributes check_model reads: cfg.d_model, cfg.n_layers and the hook names."""
    hooks = {f"blocks.{i}.hook_resid_post": None for i in range(n_layers)}
    return SimpleNamespace(cfg=SimpleNamespace(d_model=d_model, n_layers=n_layers), hook_dict=hooks)


def test_check_model_accepts_a_fitting_model():
    vec(layer=5).check_model(fake_model())


def test_check_model_d_model_mismatch():
    with pytest.raises(VectorMismatchError, match="d_model 5 but the model has d_model 192"):
        vec().check_model(fake_model(d_model=192))


@pytest.mark.parametrize("layer", [6, 40, -1])
def test_check_model_layer_out_of_range(layer):
    with pytest.raises(VectorMismatchError, match=rf"layer {layer} does not exist.*0\.\.5"):
        vec(layer=layer).check_model(fake_model())


def test_check_model_missing_hook():
    m = fake_model()
    del m.hook_dict["blocks.2.hook_resid_post"]
    with pytest.raises(VectorMismatchError, match="blocks.2.hook_resid_post"):
        vec(layer=2).check_model(m)
