"""Issue 12, "vectors from anywhere", without a model: every foreign format built here loads to the expected
direction and layer with honest provenance; every malformed file is one IsoKLError naming the file; from_tensor;
vector arithmetic and its provenance."""

import hashlib

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import helpers_vectors
from helpers_vectors import write_gguf

from tl_isokl.errors import IsoKLError
from tl_isokl.vector import Gate, SteeringVector
from tl_isokl.vector_formats import VectorSource, layer_of_name, read_vector

D = 16
DIR = torch.randn(D, generator=torch.Generator().manual_seed(0))
OTHER = torch.randn(D, generator=torch.Generator().manual_seed(1))


def sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


class Opaque:  # a pickled object of this class must be refused, never unpickled
    def __init__(self):
        self.layer_activations = {2: DIR}


# ---- formats: direction, layer, metadata --------------------------------------------------------------------------


def build(kind, tmp_path):
    """(file, read_vector kwargs, expected direction, expected layer, format, key)."""
    t = tmp_path
    if kind == "npy":
        np.save(t / "v.npy", DIR.numpy())
        return t / "v.npy", {"layer": 2}, DIR, 2, "numpy", None
    if kind == "npy [1, d] float16":
        np.save(t / "v.npy", DIR.numpy().astype(np.float16)[None])
        return t / "v.npy", {"layer": 1}, DIR.half().float(), 1, "numpy", None
    if kind == "npz layers":
        np.savez(t / "v.npz", **{"direction.3": DIR.numpy(), "direction.4": OTHER.numpy()})
        return t / "v.npz", {"layer": 4}, OTHER, 4, "numpy", "direction.4"
    if kind == "safetensors one tensor":
        save_file({"steer": DIR}, str(t / "v.safetensors"))
        return t / "v.safetensors", {"layer": 5}, DIR, 5, "safetensors", "steer"
    if kind == "safetensors --vector-key":
        save_file({"a": DIR, "b": OTHER}, str(t / "v.safetensors"))
        return t / "v.safetensors", {"key": "b", "layer": 0}, OTHER, 0, "safetensors", "b"
    if kind == "safetensors header layer":
        save_file({"direction": DIR}, str(t / "v.safetensors"), metadata={"layer": "4"})
        return t / "v.safetensors", {}, DIR, 4, "safetensors", "direction"
    if kind == "safetensors model.layers.N":
        save_file({"model.layers.2": DIR, "model.layers.6": OTHER}, str(t / "v.safetensors"))
        return t / "v.safetensors", {"layer": 2}, DIR, 2, "safetensors", "model.layers.2"
    if kind == "safetensors resid_pre hook":
        save_file({"blocks.4.hook_resid_pre": DIR}, str(t / "v.safetensors"))
        return t / "v.safetensors", {}, DIR, 3, "safetensors", "blocks.4.hook_resid_pre"
    if kind == "pt tensor":
        torch.save(DIR, t / "v.pt")
        return t / "v.pt", {"layer": 3}, DIR, 3, "torch", None
    if kind == "pt {int: tensor}":
        torch.save({1: OTHER, 3: DIR}, t / "v.pt")
        return t / "v.pt", {"layer": 3}, DIR, 3, "torch", "3"
    if kind == "pt steering-vectors":
        torch.save({"layer_activations": {5: DIR}, "layer_type": "decoder_block"}, t / "v.pt")
        return t / "v.pt", {}, DIR, 5, "torch", "5"
    if kind == "pth repeng numpy":
        torch.save({"model_type": "llama", "directions": {2: OTHER.numpy(), 4: DIR.numpy()}}, t / "v.pth")
        return t / "v.pth", {"layer": 4}, DIR, 4, "torch", "4"
    if kind == "pt {direction, layer}":
        torch.save({"direction": DIR, "layer": 2}, t / "v.pt")
        return t / "v.pt", {}, DIR, 2, "torch", "direction"
    if kind == "gguf repeng":
        write_gguf(t / "v.gguf", {"direction.1": OTHER, "direction.2": DIR},
                   {"controlvector.model_hint": "llama", "controlvector.layer_count": 2})
        return t / "v.gguf", {"layer": 2}, DIR, 2, "gguf", "direction.2"
    if kind == "gguf f16":
        write_gguf(t / "v.gguf", {"direction.7": DIR}, ggml_type=1)
        return t / "v.gguf", {}, DIR.half().float(), 7, "gguf", "direction.7"
    raise AssertionError(kind)


KINDS = ["npy", "npy [1, d] float16", "npz layers", "safetensors one tensor", "safetensors --vector-key",
         "safetensors header layer", "safetensors model.layers.N", "safetensors resid_pre hook", "pt tensor",
         "pt {int: tensor}", "pt steering-vectors", "pth repeng numpy", "pt {direction, layer}", "gguf repeng",
         "gguf f16"]


@pytest.mark.parametrize("kind", KINDS)
def test_each_format_loads_to_the_direction_and_layer(tmp_path, kind):
    path, kw, want, layer, fmt, key = build(kind, tmp_path)
    v = read_vector(path, **kw)
    assert torch.equal(v.direction, want.float()) and v.direction.dtype == torch.float32
    assert (v.layer, v.method, v.gate) == (layer, "external", None)
    assert v.meta["format"] == fmt and v.meta["key"] == key
    assert v.meta["source"] == str(path.resolve()) and v.meta["source_sha256"] == sha(path)
    assert v.meta["source_norm"] == pytest.approx(float(want.norm()))
    assert "model" not in v.meta  # the model is unknown: nothing to refuse, nothing invented
    assert read_vector(VectorSource(path, **kw)).sha256 == v.sha256  # the same through a VectorSource
    w = SteeringVector.load(v.save(tmp_path / "saved.safetensors"))  # provenance survives the run directory
    assert (w.sha256, w.meta) == (v.sha256, v.meta)


def test_repeng_and_gguf_record_the_model_hint(tmp_path):
    for kind in ("pth repeng numpy", "gguf repeng"):
        path, kw, *_ = build(kind, tmp_path)
        assert read_vector(path, **kw).meta["source_model"] == "llama"
    path, kw, *_ = build("pth repeng numpy", tmp_path)
    assert read_vector(path, **kw).meta["container"] == "directions"


def test_external_ablate_is_stored_unit_norm(tmp_path):
    path, kw, *_ = build("npy", tmp_path)
    v = read_vector(path, method="external+ablate", **kw)
    assert v.method == "external+ablate" and float(v.direction.norm()) == pytest.approx(1.0)
    assert torch.allclose(v.direction, DIR / DIR.norm())
    assert v.meta["source_norm"] == pytest.approx(float(DIR.norm()))


def test_own_files_load_as_before(tmp_path):
    own = SteeringVector(DIR, 3, "pca", Gate("soft", 0.1), {"model": "m"})
    p = own.save(tmp_path / "own.safetensors")
    assert read_vector(p).sha256 == own.sha256 and read_vector(p, layer=3).meta == own.meta
    for kw, needle in [({"layer": 2}, "fixes its layer"), ({"key": "x"}, "drop --vector-key"),
                       ({"method": "external"}, "fixes its method")]:
        with pytest.raises(IsoKLError, match=needle):
            read_vector(p, **kw)


def test_files_with_other_suffixes_are_read_by_their_first_bytes(tmp_path):
    own = SteeringVector(DIR, 3, "pca")
    assert read_vector(own.save(tmp_path / "own.vec")).sha256 == own.sha256  # as SteeringVector.load always did
    for kind in ("npy", "pt tensor", "safetensors one tensor", "gguf repeng"):
        path, kw, want, *_ = build(kind, tmp_path)
        path.rename(tmp_path / "direction.bin")
        assert torch.equal(read_vector(tmp_path / "direction.bin", **kw).direction, want)


@pytest.mark.parametrize("name, layer", [(3, 3), ("3", 3), ("layer.3", 3), ("layer_3", 3), ("layers.3", 3),
                                          ("model.layers.3", 3), ("transformer.h.3", 3), ("blocks.3", 3),
                                          ("direction.3", 3), ("blocks.3.hook_resid_post", 3),
                                          ("blocks.3.hook_resid_pre", 2), ("weight", None),
                                          ("model.layers.3.mlp", None), ("blocks.3.hook_mlp_out", None), (-1, None)])
def test_layer_names(name, layer):
    assert layer_of_name(name) == layer


# ---- SAELens ------------------------------------------------------------------------------------------------------


def sae_folder(tmp_path, hook="blocks.2.hook_resid_post", **kw):
    return helpers_vectors.sae_folder(tmp_path / "sae", D, hook, **kw)


@pytest.mark.parametrize("hook, nested, layer", [("blocks.2.hook_resid_post", False, 2),
                                                 ("blocks.3.hook_resid_pre", False, 2),
                                                 ("blocks.4.hook_resid_post", True, 4)])
def test_sae_feature_is_its_decoder_row_at_the_hooks_layer(tmp_path, hook, nested, layer):
    f, W_dec = sae_folder(tmp_path, hook, nested=nested)
    v = read_vector(f, sae_feature=5)
    assert torch.equal(v.direction, W_dec[5]) and (v.layer, v.method) == (layer, "external")
    assert v.meta["format"] == "saelens" and v.meta["sae_feature"] == 5 and v.meta["hook_name"] == hook
    assert v.meta["source"] == str(f.resolve())
    assert v.meta["source_sha256"] == sha(f / "sae_weights.safetensors")
    assert v.meta["source_model"] == "tiny-model" and v.meta["d_sae"] == 8
    assert read_vector(VectorSource(f, sae_feature=5)).sha256 == v.sha256
    assert read_vector(f, sae_feature=6).sha256 != v.sha256


@pytest.mark.parametrize("setup, kw, needle", [
    ({"hook": "blocks.2.hook_mlp_out"}, {}, "reads 'blocks.2.hook_mlp_out'; only SAEs on the residual stream"),
    ({"hook": "blocks.2.attn.hook_z"}, {}, "only SAEs on the residual stream"),
    ({"hook": "blocks.0.hook_resid_pre"}, {}, "embedding output"),
    ({}, {"sae_feature": 8}, "no feature 8; the SAE has 8 features (0..7)"),
    ({"d_in": 32}, {}, "cfg.json says d_in 32 but W_dec is [8, 16]"),
    ({}, {"layer": 3}, "(layer 2), not --layer 3"),
])
def test_sae_errors_are_one_line(tmp_path, setup, kw, needle):
    f, _ = sae_folder(tmp_path, **setup)
    with pytest.raises(IsoKLError) as e:
        read_vector(f, **{"sae_feature": 1, **kw})
    assert needle in str(e.value) and "\n" not in str(e.value) and "sae" in str(e.value)


def test_sae_folder_damage(tmp_path):
    f, _ = sae_folder(tmp_path)
    with pytest.raises(IsoKLError, match="is an SAE folder; pass --sae .* --sae-feature N"):
        read_vector(f)
    save_file({"W_enc": torch.ones(D, 8)}, str(f / "sae_weights.safetensors"))
    with pytest.raises(IsoKLError, match=r"sae_weights\.safetensors.*no W_dec tensor \(it has W_enc\)"):
        read_vector(f, sae_feature=0)
    (f / "cfg.json").write_text("{}")
    with pytest.raises(IsoKLError, match=r"cfg\.json.*no hook_name"):
        read_vector(f, sae_feature=0)
    (f / "cfg.json").unlink()
    with pytest.raises(IsoKLError, match="no cfg.json"):
        read_vector(f, sae_feature=0)


# ---- malformed files: one line naming the file --------------------------------------------------------------------


def bad(kind, t):
    if kind == "no layer":
        np.save(t / "x.npy", DIR.numpy())
        return t / "x.npy", {}, "does not say which layer its direction is for; pass --layer N"
    if kind == "several layers":
        save_file({"layer.1": DIR, "layer.3": OTHER}, str(t / "x.safetensors"))
        return t / "x.safetensors", {}, "holds directions for layers 1, 3; pick one with --layer N"
    if kind == "the only layer is another":
        torch.save({"layer_activations": {1: DIR}}, t / "x.pt")
        return t / "x.pt", {"layer": 2}, "holds a direction for layer 1 only, not 2; pass --layer 1 or drop --layer"
    if kind == "missing layer":
        save_file({"layer.1": DIR, "layer.3": OTHER}, str(t / "x.safetensors"))
        return t / "x.safetensors", {"layer": 2}, "layers 1, 3, not 2; pass --layer with one of them"
    if kind == "key and layer disagree":
        save_file({"layer.1": DIR, "layer.3": OTHER}, str(t / "x.safetensors"))
        return t / "x.safetensors", {"key": "layer.3", "layer": 2}, "'layer.3' is for layer 3, not --layer 2"
    if kind == "several names":
        save_file({"a": DIR, "b": OTHER}, str(t / "x.safetensors"))
        return t / "x.safetensors", {"layer": 1}, "holds 2 tensors (a, b); pick one with --vector-key NAME"
    if kind == "unknown key":
        save_file({"a": DIR, "b": OTHER}, str(t / "x.safetensors"))
        return t / "x.safetensors", {"key": "zzz", "layer": 1}, ("no tensor named 'zzz' (--vector-key); its "
                                                               "tensors: a, b")
    if kind == "key on one tensor":
        np.save(t / "x.npy", DIR.numpy())
        return t / "x.npy", {"key": "a", "layer": 1}, "holds a single tensor, not named ones; drop --vector-key a"
    if kind == "duplicate layer":
        torch.save({"3": DIR, "layer.3": OTHER}, t / "x.pt")
        return t / "x.pt", {}, "are for layer 3; pick one with --vector-key NAME"
    if kind == "matrix":
        np.save(t / "x.npy", np.ones((4, D), np.float32))
        return t / "x.npy", {"layer": 1}, "a [4, 16] tensor, not one direction"
    if kind == "zeros":
        np.save(t / "x.npy", np.zeros(D, np.float32))
        return t / "x.npy", {"layer": 1}, "the direction is the zero vector"
    if kind == "nan":
        np.save(t / "x.npy", np.full(D, np.nan, np.float32))
        return t / "x.npy", {"layer": 1}, "NaN or inf"
    if kind == "integers":
        np.save(t / "x.npy", np.arange(D))
        return t / "x.npy", {"layer": 1}, "dtype int64, not floating point"
    if kind == "object npy":
        np.save(t / "x.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
        return t / "x.npy", {"layer": 1}, "not a readable numpy .npy file"
    if kind == "garbage npy":
        (t / "x.npy").write_bytes(b"not numpy at all")
        return t / "x.npy", {"layer": 1}, "not a readable numpy .npy file"
    if kind == "garbage pt":
        (t / "x.pt").write_bytes(b"\x80\x04garbage")
        return t / "x.pt", {"layer": 1}, "not a readable torch file"
    if kind == "pickled object":
        torch.save(Opaque(), t / "x.pt")
        return t / "x.pt", {"layer": 1}, "Opaque), which tl-isokl does not unpickle (torch.load weights_only=True)"
    if kind == "pt list":
        torch.save([DIR], t / "x.pt")
        return t / "x.pt", {"layer": 1}, "holds a list, not a tensor or a dict of tensors"
    if kind == "pt no tensors":
        torch.save({"layer": 1}, t / "x.pt")
        return t / "x.pt", {"layer": 1}, "holds no tensors (keys: layer)"
    if kind == "steering-vectors attention":
        torch.save({"layer_activations": {1: DIR}, "layer_type": "attention"}, t / "x.pt")
        return t / "x.pt", {}, "layer_type is 'attention'"
    if kind == "garbage safetensors":
        (t / "x.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
        return t / "x.safetensors", {"layer": 1}, "not a tl-isokl vector file, nor a readable safetensors file"
    if kind == "garbage gguf":
        (t / "x.gguf").write_bytes(b"GGUF\x03\x00\x00\x00\x01")
        return t / "x.gguf", {"layer": 1}, "not a readable GGUF file"
    if kind == "quantised gguf":
        write_gguf(t / "x.gguf", {"direction.1": DIR}, ggml_type=8)
        return t / "x.gguf", {}, "GGML type 8 (quantised); only F32, F16 and BF16"
    if kind == "unknown suffix":
        (t / "x.txt").write_text("1 2 3")
        return t / "x.txt", {"layer": 1}, "not a vector file tl-isokl reads (suffix '.txt'"
    if kind == "missing":
        return t / "nope.npy", {"layer": 1}, "does not exist"
    if kind == "folder":
        (t / "d").mkdir()
        return t / "d", {}, "is a folder, not a vector file"
    if kind == "a method that extracts":
        np.save(t / "x.npy", DIR.numpy())
        return t / "x.npy", {"layer": 1, "method": "mean_diff"}, "not 'mean_diff'; use --method external"
    raise AssertionError(kind)


BAD = ["no layer", "several layers", "the only layer is another", "missing layer", "key and layer disagree",
       "several names", "unknown key", "key on one tensor", "duplicate layer", "matrix", "zeros", "nan",
       "integers", "object npy", "garbage npy", "garbage pt", "pickled object", "pt list", "pt no tensors",
       "steering-vectors attention", "garbage safetensors", "garbage gguf", "quantised gguf", "unknown suffix",
       "missing", "folder", "a method that extracts"]


@pytest.mark.parametrize("kind", BAD)
def test_malformed_input_is_one_line_naming_the_file(tmp_path, kind):
    path, kw, needle = bad(kind, tmp_path)
    with pytest.raises(IsoKLError) as e:
        read_vector(path, **kw)
    msg = str(e.value)
    assert needle in msg and str(path) in msg and "\n" not in msg, msg


# ---- from_tensor --------------------------------------------------------------------------------------------------


def test_from_tensor_takes_tensors_arrays_and_lists():
    for t in (DIR, DIR.numpy(), DIR.tolist(), DIR[None], DIR.double()):
        v = SteeringVector.from_tensor(t, 2)
        assert torch.allclose(v.direction, DIR) and (v.layer, v.method, v.gate, v.meta) == (2, "external", None, {})
    v = SteeringVector.from_tensor(DIR, np.int64(1), "external+ablate", Gate("hard", 0.1), {"note": "x"})
    assert v.layer == 1 and float(v.direction.norm()) == pytest.approx(1.0) and v.meta == {"note": "x"}
    assert SteeringVector.from_tensor(DIR, 0, method="mean_diff").method == "mean_diff"


@pytest.mark.parametrize("args, needle", [
    ((DIR, -1), "layer must be a block index"), ((DIR, 1.5), "layer must be a block index"),
    ((DIR, True), "layer must be a block index"), ((torch.ones(2, 3), 1), "must be 1-D"),
    ((torch.zeros(4), 1), "is the zero vector"), ((["a", "b"], 1), "1-D tensor, array or list of numbers"),
    ((np.array([1 + 1j]), 1), "real numbers"), ((DIR, 1, "nope"), "unknown steering method"),
])
def test_from_tensor_errors(args, needle):
    with pytest.raises(IsoKLError) as e:
        SteeringVector.from_tensor(*args)
    assert needle in str(e.value), str(e.value)


# ---- arithmetic ---------------------------------------------------------------------------------------------------


def V(t=DIR, layer=2, method="mean_diff", gate=None, **meta):
    return SteeringVector(t, layer, method, gate, meta)


def test_arithmetic_directions_and_provenance():
    a, b = V(model="m"), V(OTHER, model="m")
    for expr, v, want in [("a + b", a + b, DIR + OTHER), ("a - b", a - b, DIR - OTHER), ("-a", -a, -DIR),
                          ("2 * a", 2 * a, 2 * DIR), ("2 * a", a * 2, 2 * DIR), ("a / 4", a / 4, DIR / 4),
                          ("0.5 * a", a * np.float32(0.5), DIR / 2), ("0.5 * a", a * torch.tensor(0.5), DIR / 2)]:
        assert torch.allclose(v.direction, want) and v.meta["derived"] == expr
        assert (v.layer, v.method, v.gate, v.meta["model"]) == (2, "mean_diff", None, "m")
    d = (a - b).meta["operands"]
    assert d["a"]["sha256"] == a.sha256 and d["b"]["sha256"] == b.sha256 and d["a"]["meta"] == a.meta
    two = 2 * a
    assert float(two.direction.norm()) == pytest.approx(2 * float(a.direction.norm()))
    assert two.sha256 != a.sha256 and (a * 2).sha256 == two.sha256 and (-(-a)).sha256 == a.sha256
    nested = (a - b) + a
    assert nested.meta["operands"]["a"]["meta"]["derived"] == "a - b"


def test_arithmetic_result_round_trips(tmp_path):
    v = 3 * V(model="m") - V(OTHER, model="m")
    w = SteeringVector.load(v.save(tmp_path / "v.safetensors"))
    assert w.sha256 == v.sha256 and w.meta == v.meta


def test_cancelling_operands_say_so():
    a = V()
    for f in (lambda: a + (-a), lambda: a - a, lambda: 0 * a):
        with pytest.raises(IsoKLError, match=r"is the zero vector \(the operands cancel exactly, or the scale is 0\)"):
            f()
    with pytest.raises(IsoKLError, match="cannot be divided by zero"):
        a / 0
    with pytest.raises(IsoKLError, match="factor must be finite"):
        a * float("nan")


def test_mismatches_are_refused():
    a = V(model="m")
    cases = [(V(layer=3), "a is at layer 2 and b at layer 3"),
             (V(torch.ones(8)), "a has d_model 16 and b has 8"),
             (V(method="directional_ablation"), "operator 'add' (mean_diff) and b with 'ablate'"),
             (V(gate=Gate("soft", 0.2)), "a has no gate and b has gate soft (tau 0.2)"),
             (V(model="other"), "made on different models")]
    for b, needle in cases:
        with pytest.raises(IsoKLError) as e:
            a + b  # noqa: B018
        assert needle in str(e.value), str(e.value)
    for bad in ("x", V, None, True):
        with pytest.raises(TypeError):
            a * bad  # noqa: B018
    with pytest.raises(TypeError):
        a * a  # noqa: B018


def test_gates_methods_and_unit_operators():
    g = Gate("soft", 0.1)
    assert (V(gate=g) + V(OTHER, gate=g)).gate == g and (2 * V(gate=g)).gate == g
    assert (V() + V(OTHER, method="pca")).method == "external"  # same operator, different extractors
    abl = V(DIR / DIR.norm(), method="directional_ablation") - V(OTHER / OTHER.norm(), method="pca+ablate")
    assert abl.method == "external+ablate" and float(abl.direction.norm()) == pytest.approx(1.0)
    unit = V(DIR / DIR.norm(), method="directional_ablation")
    assert torch.allclose((3 * unit).direction, unit.direction)  # an ablation stores and uses v/|v|
