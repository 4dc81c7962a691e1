import pytest
import torch

from fer_nb import config
from fer_nb.device import pick_device


def test_resolve_defaults(tmp_path):
    cfg = config.resolve("toolkit_tour", out_dir=tmp_path)
    assert cfg.scale == "smoke" and cfg.dataset == "synthfacs" and cfg.seeds == (0,)
    assert cfg.epochs == cfg.hp["epochs"]
    assert cfg.device.type in ("cpu", "cuda", "mps")
    with pytest.raises(Exception):
        cfg.scale = "paper"  # frozen
    with pytest.raises(TypeError):
        cfg.hp["epochs"] = 5  # read-only mapping


def test_scales_differ(tmp_path):
    smoke = config.resolve("toolkit_tour", "smoke", out_dir=tmp_path)
    small = config.resolve("toolkit_tour", "small", out_dir=tmp_path)
    assert smoke.n_train < small.n_train


def test_overrides_and_hash(tmp_path):
    a = config.resolve("toolkit_tour", out_dir=tmp_path)
    b = config.resolve("toolkit_tour", out_dir=tmp_path, epochs=7)
    assert b.epochs == 7
    assert a.run_hash(seed=0) != b.run_hash(seed=0)
    assert a.run_hash(seed=0) != a.run_hash(seed=1)
    c = config.resolve("toolkit_tour", out_dir=tmp_path / "elsewhere", device="cpu")
    assert a.run_hash(seed=0) == c.run_hash(seed=0)  # output folder and device do not matter


def test_seed_list(tmp_path):
    assert config.resolve("toolkit_tour", seeds=3, out_dir=tmp_path).seeds == (0, 1, 2)
    assert config.resolve("toolkit_tour", seeds=[5, 9], out_dir=tmp_path).seeds == (5, 9)


def test_every_preset_file_is_valid():
    for name in config.available_notebooks():
        presets = config.load_presets(name)
        keys = set(presets["smoke"])
        for scale in config.SCALES:   # every notebook has every scale, gpu included, with the same keys
            assert set(presets[scale]) == keys, f"{name}: scale {scale} has other keys than smoke: {set(presets[scale]) ^ keys}"
        assert "synthfacs" in presets.get("datasets", ["synthfacs"])


BAD = [
    (dict(scale="huge"), ValueError, "SCALE"),
    (dict(scale=1), ValueError, "SCALE"),
    (dict(dataset="imagenet"), ValueError, "DATASET"),
    (dict(device="tpu"), ValueError, "DEVICE"),
    (dict(device=0), TypeError, "DEVICE"),
    (dict(seeds=0), ValueError, "SEEDS"),
    (dict(seeds="3"), TypeError, "SEEDS"),
    (dict(seeds=[1, "a"]), TypeError, "SEEDS"),
    (dict(seeds=True), TypeError, "SEEDS"),
    (dict(epochs="3"), TypeError, "epochs"),
    (dict(epochs=2.5), TypeError, "epochs"),
    (dict(lr="fast"), TypeError, "lr"),
    (dict(no_such_knob=1), KeyError, "no_such_knob"),
    (dict(out_dir=3), TypeError, "OUT_DIR"),
    (dict(data_root=5), TypeError, "DATA_ROOT"),
]


@pytest.mark.parametrize("kwargs,exc,word", BAD)
def test_bad_parameters_name_the_fix(tmp_path, kwargs, exc, word):
    kwargs.setdefault("out_dir", tmp_path)
    with pytest.raises(exc, match=word):
        config.resolve("toolkit_tour", **kwargs)


def test_unknown_notebook():
    with pytest.raises(ValueError, match="known notebooks"):
        config.resolve("no_such_notebook")


def test_real_dataset_without_root_is_an_error(tmp_path, monkeypatch):
    monkeypatch.delenv(config.DATA_ENV, raising=False)
    names = [n for n in config.available_notebooks() if len(config.load_presets(n).get("datasets", [])) > 1]
    if not names:
        pytest.skip("no notebook with a real dataset yet")
    presets = config.load_presets(names[0])
    real = [d for d in presets["datasets"] if d != "synthfacs"][0]
    with pytest.raises(ValueError, match="DATA_ROOT"):
        config.resolve(names[0], dataset=real, out_dir=tmp_path)


def test_absent_cuda_is_an_error_not_a_fallback():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="no CUDA"):
        pick_device("cuda")
    assert pick_device("auto").type in ("cpu", "mps")
