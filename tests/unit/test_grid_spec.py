"""GRID.toml: the product of its axes, experiment names, and one-line errors naming the value and the fix
(all before any model loads)."""

import pytest

from tl_isokl.grid import GridError, parse_grid


@pytest.fixture
def prompts(tmp_path):
    (tmp_path / "held.txt").write_text("Is it sunny?\nCan a robin fly?\n")
    (tmp_path / "cal.txt").write_text("Is water wet?\nIs fire cold?\n")
    return tmp_path


def write(tmp_path, text):
    p = tmp_path / "GRID.toml"
    p.write_text(text)
    return p


def test_product_of_axes(prompts):
    g = parse_grid(write(prompts, 'spec = ["mean_diff", "pca+ablate", "mean_diff+soft:0.1"]\nlayer = [2, "mid"]\n'
                                  'window = 16\ntarget = [0.5, 1]\nalphas = [2, 0, 1]\nprompts = "held.txt"\n'
                                  'calibration_prompts = "cal.txt"\n[settings]\nbatch_size = 4\n'
                                  'skip_preflight = true\n'))
    assert g.alphas == (0.0, 1.0, 2.0)
    assert len(g.experiments) == 3 * 2 * 2
    names = [e.name for e in g.experiments]
    assert len(set(names)) == len(names)
    e = g.experiments[0]
    assert e.name.startswith("sweep-tl-isokl_testbed-mean_diff-L2-w16-")
    assert e.settings.heldout_prompts == prompts / "held.txt" and e.settings.batch_size == 4
    assert e.settings.skip_preflight is True and e.settings.model is None
    soft = [x for x in g.experiments if x.settings.gate == "soft"][0]
    assert soft.settings.tau == 0.1 and soft.settings.method == "mean_diff" and "-mean_diff_soft_0.1-" in soft.name
    assert {x.settings.method for x in g.experiments} == {"mean_diff", "pca+ablate"}
    assert {x.axes["spec"] for x in g.experiments} == {"mean_diff", "pca+ablate", "mean_diff+soft:0.1"}


def test_name_is_the_sweep_default_folder(prompts):
    """An experiment's folder is the one `tl-isokl sweep` would choose by default for the same settings."""
    from tl_isokl.experiment import sweep_request
    from tl_isokl.runpolicy import default_run_path, model_spec

    g = parse_grid(write(prompts, 'window = 8\nalphas = [0, 1]\nprompts = "held.txt"\n'))
    s = g.experiments[0].settings
    spec = model_spec(None)
    assert g.experiments[0].name == default_run_path("sweep", spec, "mean_diff", None, 8,
                                                     sweep_request(s, spec, None, None)).name


@pytest.mark.parametrize("text, needles", [
    ("window = 8\n", ["no alphas", "alphas = ["]),
    ("alphas = [[0, 1], [0, 2]]\n", ["list of lists", "one list"]),
    ('alphas = "0,1"\nwindow = 8\nfoo = 1\n', ["unknown key 'foo'", "axes are"]),
    ("alphas = [0, 0]\n", ["duplicates"]),
    ('alphas = [0, "x"]\n', ["list of numbers"]),
    ('alphas = [0, 1]\nspec = ["mean_diff", "nope"]\n', ["spec = 'nope'"]),
    ('alphas = [0, 1]\nspec = "mean_diff+soft:7"\n', ["outside [-1, 1]"]),
    ("alphas = [0, 1]\nwindow = 0\n", ["window = 0", ">= 1"]),
    ('alphas = [0, 1]\nwindow = "long"\n', ["window = 'long'", "integer"]),
    ("alphas = [0, 1]\nlayer = -1\n", ["layer = -1"]),
    ("alphas = [0, 1]\ntarget = 0\n", ["target = 0"]),
    ('alphas = [0, 1]\nstat = "p42x"\n', ["stat = 'p42x'"]),
    ('alphas = [0, 1]\nprompts = "missing.txt"\n', ["missing.txt", "relative to GRID.toml"]),
    ("alphas = [0, 1]\nwindow = []\n", ["window = [] is empty"]),
    ('alphas = [0, 1]\n[settings]\nbogus = 1\n', ["unknown key 'bogus'"]),
    ('alphas = [0, 1]\n[settings]\nwindow = 8\n', ["window is an axis"]),
    ('alphas = [0, 1]\nspec = ["mean_diff", "mean_diff+add"]\n', ["same experiment", "duplicate"]),
    ("alphas = [0, 1\n", ["not valid TOML"]),
    ("alphas = [0, 1]\nshards = 0\n", ["shards = 0", "integer >= 1"]),
])
def test_bad_grid_is_one_line(prompts, text, needles):
    with pytest.raises(GridError) as e:
        parse_grid(write(prompts, text))
    msg = str(e.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg


def test_missing_grid_file(tmp_path):
    with pytest.raises(GridError, match="does not exist"):
        parse_grid(tmp_path / "nope.toml")


def test_status_of_a_folder_that_is_no_grid(tmp_path):
    from tl_isokl.grid import status

    with pytest.raises(GridError, match="not a grid folder"):
        status(tmp_path)
