"""A wrapped module class defined in a script's ``__main__`` (issue 20, item 7): warned at save, explained at load."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from fusefn import optim
from fusefn.errors import ConfigError
from fusefn.models import Wrapper
from fusefn.models._record import UnportableModelWarning, main_references, warn_if_unportable
from fusefn.train import LoaderSettings, fit, load_model


class MyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.lin(x)


@pytest.fixture
def in_main(monkeypatch):
    """``MyNet`` as if defined in the running script: ``__main__.MyNet``."""
    monkeypatch.setattr(MyNet, "__module__", "__main__")
    monkeypatch.setattr(sys.modules["__main__"], "MyNet", MyNet, raising=False)
    return MyNet


def _wrapper(cls):
    return Wrapper(module=cls, inputs=("data.x",), outputs=("model.head_0.logits",), activation="softmax")


class _Rows(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"data": {"sample_id": f"r{i}", "x": torch.full((4,), float(i)), "y": torch.tensor(i % 2)}}


def _fit(model, model_dir):
    from fusefn.losses import CrossEntropy

    return fit(
        model,
        {"ce": CrossEntropy(pred="model.head_0.logits", target="data.y")},
        optim.sgd(lr=0.1),
        _Rows(),
        model_dir=model_dir,
        epochs=1,
        loader=LoaderSettings(batch_size=4),
        device="cpu",
        progress=False,
    )


def test_an_importable_module_class_gives_no_warning(recwarn):
    assert warn_if_unportable(_wrapper(torch.nn.Identity)) is False
    assert not [w for w in recwarn if issubclass(w.category, UnportableModelWarning)]


def test_fit_warns_before_training_a_model_of_a_main_class_with_the_fix(in_main, tmp_path):
    with pytest.warns(UnportableModelWarning, match=r"MyNet, defined in the script.*move MyNet to a module"):
        _fit(_wrapper(in_main), tmp_path)


def test_loading_names_the_class_and_the_fix(in_main, tmp_path):
    with pytest.warns(UnportableModelWarning):
        _fit(_wrapper(in_main), tmp_path)
    assert main_references(json.loads((tmp_path / "model.json").read_text())) == ["__main__:MyNet"]
    with pytest.raises(
        ConfigError, match=r"uses MyNet, defined in the script .*move MyNet to a module.*allowed=\[MyNet\]"
    ):
        load_model(tmp_path, "last")
    model, _ = load_model(tmp_path, "last", allowed=[in_main])  # the same script may load it, as the message says
    assert model.module is in_main


SCRIPT = textwrap.dedent(
    """
    import sys, warnings
    import torch
    from fusefn import optim
    from fusefn.losses import CrossEntropy
    from fusefn.models import Wrapper
    from fusefn.train import LoaderSettings, fit

    class MyNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 2)
        def forward(self, x):
            return self.lin(x)

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return 8
        def __getitem__(self, i):
            return {"data": {"sample_id": f"r{i}", "x": torch.full((4,), float(i)), "y": torch.tensor(i % 2)}}

    model = Wrapper(module=MyNet, inputs=("data.x",), outputs=("model.head_0.logits",), activation="softmax")
    fit(model, {"ce": CrossEntropy(pred="model.head_0.logits", target="data.y")}, optim.sgd(lr=0.1), Rows(),
        model_dir=sys.argv[1], epochs=1, loader=LoaderSettings(batch_size=4), device="cpu", progress=False)
    """
)


@pytest.mark.slow
def test_a_script_model_warns_at_save_and_another_process_is_told_the_fix(tmp_path):
    script = tmp_path / "train_it.py"
    script.write_text(SCRIPT)
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "m")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "UnportableModelWarning" in r.stderr and "move MyNet to a module" in r.stderr
    load = f"from fusefn.train import load_model; load_model({str(tmp_path / 'm')!r}, 'last', allowed=['__main__'])"
    r = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert "MyNet" in last and "move MyNet to a module" in last and "has no attribute" not in last
