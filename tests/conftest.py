import os

import pytest
import torch

os.environ.setdefault("FER_NB_PLAIN_PROGRESS", "1")
torch.set_num_threads(1)


@pytest.fixture
def tiny_cfg(tmp_path):
    from fer_nb import config

    return config.resolve("toolkit_tour", "smoke", device="cpu", out_dir=tmp_path / "run")
