"""Device handling (glance_lite.common.devices): naming a device, one-line errors for a missing GPU,
device-free checkpoints, and mixed precision that is off on the CPU.

The tests marked ``cuda`` need a GPU and are skipped without one (the CPU-only CI never runs them).
"""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch

from glance_lite.common.devices import Precision, resolve_device
from glance_lite.common.fileio import GlanceError, cpu_state, load_torch, save_torch
from glance_lite.common.presets import get_preset

from test_cli import _tiny_dataset

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_auto_is_cuda_only_when_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    monkeypatch.setenv("GLANCE_DEVICE", "cpu")
    assert resolve_device(None) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("GLANCE_DEVICE")
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")


def test_a_missing_gpu_is_an_error_not_a_cpu_run(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for spec in ("cuda", "cuda:0"):
        with pytest.raises(GlanceError, match="CUDA is not available"):
            resolve_device(spec)
    monkeypatch.setenv("GLANCE_DEVICE", "cuda")
    with pytest.raises(GlanceError, match="CUDA is not available"):
        resolve_device(None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(GlanceError, match="2 CUDA device"):
        resolve_device("cuda:2")
    with pytest.raises(GlanceError, match="expected"):
        resolve_device("tpu")
    with pytest.raises(GlanceError, match="expected"):
        resolve_device("gpu please")


def test_cli_refuses_a_missing_gpu_before_starting(tmp_path, capsys, monkeypatch):
    from glance_lite.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    root = _tiny_dataset(tmp_path / "ds")
    run = tmp_path / "run"
    rc = main(["fit", "--data", str(root), "--category", "widget", "--out", str(run), "--preset", "smoke",
               "--device", "cuda", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "CUDA is not available" in err
    assert not run.exists()


def test_checkpoints_hold_cpu_tensors_and_keep_state_dict_metadata(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    sd = net.state_dict()
    c = cpu_state({"model": sd, "list": [torch.ones(2)], "n": 3})
    assert isinstance(c["model"], OrderedDict) and c["model"]._metadata == sd._metadata
    assert all(t.device.type == "cpu" for t in c["model"].values())
    save_torch(tmp_path / "x.pt", {"model": sd})
    back = load_torch(tmp_path / "x.pt", map_location=torch.device("cpu"))
    assert all(torch.equal(back["model"][k], sd[k]) for k in sd)


def test_precision_is_float32_on_the_cpu():
    prec = Precision(torch.device("cpu"), enabled=True)
    assert not prec.enabled and prec.describe() == "float32" and prec.scaler is None
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.5)
    with prec.autocast():
        y = (w * torch.arange(3.0)).sum()
    assert y.dtype == torch.float32
    prec.backward(y, opt)
    assert torch.equal(w.detach(), torch.tensor([1.0, 0.5, 0.0]))


def test_paper_preset_has_mixed_precision_and_cpu_presets_do_not():
    assert get_preset("paper").mixed_precision
    assert not get_preset("cpu").mixed_precision and not get_preset("smoke").mixed_precision


def test_fit_records_its_device_and_the_same_seed_gives_the_same_run(tmp_path, monkeypatch):
    from glance_lite.models.model import GlanceModel
    from glance_lite.train.training import fit

    monkeypatch.setenv("GLANCE_DATA", str(tmp_path / "data"))
    root = _tiny_dataset(tmp_path / "ds")
    p = get_preset("smoke")
    fit(root, "widget", tmp_path / "a", p, progress=False, device="cpu")
    monkeypatch.delenv("GLANCE_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fit(root, "widget", tmp_path / "b", p, progress=False)  # the default path (auto: the CPU here)
    assert json.loads((tmp_path / "a" / "config.json").read_text())["device"] == "cpu"
    a, b = GlanceModel.load(tmp_path / "a").state_dict(), GlanceModel.load(tmp_path / "b").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@cuda
def test_a_run_trained_on_the_gpu_evaluates_and_resumes_on_the_cpu(tmp_path, monkeypatch):  # pragma: no cover
    from glance_lite.evaluate.evaluation import evaluate_run
    from glance_lite.models.model import GlanceModel
    from glance_lite.train.training import fit

    monkeypatch.setenv("GLANCE_DATA", str(tmp_path / "data"))
    root = _tiny_dataset(tmp_path / "ds")
    p = get_preset("smoke")
    fit(root, "widget", tmp_path / "gpu", p, progress=False, device="cuda")
    ck = load_torch(tmp_path / "gpu" / "checkpoints" / "global.pt")
    assert all(t.device.type == "cpu" for t in ck["modules"]["global_net"].values())
    g = GlanceModel.load(tmp_path / "gpu")
    m_gpu = evaluate_run(tmp_path / "gpu", root, "widget", progress=False, write_maps=False, device="cuda")
    m_cpu = evaluate_run(tmp_path / "gpu", root, "widget", progress=False, write_maps=False, device="cpu")
    assert m_gpu["AU-PRO"] == pytest.approx(m_cpu["AU-PRO"], abs=1e-3)
    assert all(t.device.type == "cpu" for t in g.state_dict().values())


@cuda
def test_mixed_precision_on_cuda_uses_bf16_or_a_scaler():  # pragma: no cover
    prec = Precision(torch.device("cuda"), enabled=True)
    assert prec.enabled and (prec.dtype == torch.bfloat16 or prec.scaler is not None)


def test_no_training_stage_ignores_the_device():
    # every optimiser loop goes through run_stage; each call must say where it runs (its Precision is
    # built from the device of the modules it trains)
    import re
    from pathlib import Path

    import glance_lite

    calls = []
    for f in Path(glance_lite.__file__).parent.rglob("*.py"):
        src = f.read_text()
        for m in re.finditer(r"run_stage\(", src):
            if src[max(0, m.start() - 4):m.start()] == "def ":
                continue
            depth, i = 0, m.end() - 1
            while True:
                depth += {"(": 1, ")": -1}.get(src[i], 0)
                if depth == 0:
                    break
                i += 1
            calls.append((f.name, src[m.start():i + 1]))
    assert len(calls) >= 4, calls
    for name, call in calls:
        assert "precision=" in call, f"{name}: a run_stage call without precision= (device): {call[:80]}"


def test_cpu_model_reads_the_model_name(tmp_path):
    from glance_lite.common.presets import cpu_model, hardware_info

    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nvendor_id\t: X\nmodel name\t: Some CPU @ 2.0GHz\n\nprocessor\t: 1\nmodel name\t: Other\n")
    assert cpu_model(f) == "Some CPU @ 2.0GHz"  # the first one
    f.write_text("processor\t: 0\nmodel name\t:   \n")  # an empty name is no name
    import platform

    assert cpu_model(f) == (platform.processor() or None)
    assert cpu_model(tmp_path / "missing") == (platform.processor() or None)
    assert hardware_info()["cpu_model"] == cpu_model()
