"""Teachers: the offline EfficientNet-Lite0 really is ImageNet-trained, ResNet-18 loads from a file,
and ``auto`` falls back when ResNet-18 weights cannot be had."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from glance_lite.models import teachers
from glance_lite.common.fileio import GlanceError
from glance_lite.models.teachers import (
    CAT_CLASSES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    load_teacher,
    teacher_features,
)


@pytest.fixture(scope="module")
def lite() -> teachers.Teacher:
    return load_teacher("efficientnet_lite0", input_size=224, verbose=False)


@pytest.fixture()
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache and a download URL that is refused at once."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(teachers, "RESNET18_URL", "http://127.0.0.1:9/resnet18-f37072fd.pth")
    return tmp_path


@pytest.fixture(scope="module")
def random_resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A randomly initialised torchvision resnet18 state dict, saved once per module."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    sd = resnet18(weights=None).state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18_random.pth"
    torch.save(sd, path)
    return path, sd


def test_offline_teacher_classifies_chelsea_as_a_cat(lite: teachers.Teacher) -> None:
    from skimage import data

    img = torch.from_numpy(data.chelsea()).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        logits = lite.classify(img)
    assert logits.shape == (1, 1000)
    assert int(logits.argmax()) in CAT_CLASSES
    assert logits.softmax(1)[0, 281:286].sum() > 0.5
    assert lite.name == "efficientnet_lite0" and lite.dim == 1280


def test_teacher_is_frozen_and_stays_in_eval(lite: teachers.Teacher) -> None:
    assert not any(p.requires_grad for p in lite.parameters())
    x = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        before = lite(x)
        lite.train()
        after = lite(x)
    assert not lite.training
    assert torch.equal(before, after)  # batch norm did not switch to batch statistics


def test_resnet18_from_local_file_matches_torchvision(random_resnet18_file) -> None:
    from torchvision.models import resnet18

    path, sd = random_resnet18_file
    teacher = load_teacher("resnet18", weights=path, input_size=64, verbose=False)
    assert teacher.name == "resnet18" and teacher.dim == 512

    ref = resnet18(weights=None)
    ref.load_state_dict(sd)
    ref.fc = torch.nn.Identity()
    ref.eval()
    torch.manual_seed(1)
    x = torch.rand(3, 3, 33, 47)  # any size: resized to 64 x 64
    resized = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        feats = teacher(x)
        expected = ref((resized - mean) / std)
    assert feats.shape == (3, 512)
    assert torch.allclose(feats, expected, atol=1e-5)
    assert not torch.allclose(feats[0], feats[1])


def test_auto_falls_back_offline(offline_hub: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for allow in (False, True):  # True: the download is attempted and refused
        teacher = load_teacher("auto", input_size=32, allow_download=allow, verbose=True)
        assert teacher.name == "efficientnet_lite0" and teacher.dim == 1280
        line = capsys.readouterr().out.strip()
        # one calm line: no exception text, no URL, no path
        assert line == "teacher: EfficientNet-Lite0 (offline ImageNet weights), 1280-d feature, input 32px; " \
                       "ResNet-18 (the paper's) needs a download", line
    with pytest.raises(GlanceError, match="resnet18-f37072fd.pth"):
        load_teacher("resnet18", allow_download=True, verbose=False)


def test_auto_uses_cached_resnet18(offline_hub: Path, random_resnet18_file) -> None:
    path, _ = random_resnet18_file
    cache = teachers.resnet18_cache_path()
    assert str(cache).startswith(str(offline_hub))
    cache.parent.mkdir(parents=True)
    cache.write_bytes(path.read_bytes())
    teacher = load_teacher("auto", input_size=32, allow_download=False, verbose=False)
    assert teacher.name == "resnet18" and teacher.dim == 512


def test_bad_weights_files_name_the_file(tmp_path: Path, random_resnet18_file) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(GlanceError, match="junk.pth"):
        load_teacher("resnet18", weights=junk, verbose=False)
    path, _ = random_resnet18_file
    with pytest.raises(GlanceError, match="resnet18_random.pth"):
        load_teacher("efficientnet_lite0", weights=path, verbose=False)
    with pytest.raises(ValueError):
        load_teacher("vgg16", verbose=False)


def test_teacher_features_batches_match_one_pass(random_resnet18_file) -> None:
    path, _ = random_resnet18_file
    teacher = load_teacher("resnet18", weights=path, input_size=32, verbose=False)
    torch.manual_seed(2)
    patches = torch.rand(7, 3, 17, 17)
    feats = teacher_features(teacher, patches, batch_size=3, progress=False)
    with torch.no_grad():
        ref = teacher(patches)
    assert feats.shape == (7, 512) and not feats.requires_grad
    assert torch.allclose(feats, ref, atol=1e-5)


def test_resnet18_mid_is_pooled_layer2_and_layer3(random_resnet18_file) -> None:
    """The mid-level variant returns torchvision's own layer2 and layer3 activations, average-pooled
    and concatenated, read here with forward hooks on an independent copy of the network."""
    from torchvision.models import resnet18

    path, sd = random_resnet18_file
    teacher = load_teacher("resnet18_mid", weights=path, input_size=64, verbose=False)
    assert teacher.name == "resnet18_mid" and teacher.dim == 384
    ref = resnet18(weights=None)
    ref.load_state_dict(sd)
    ref.eval()
    seen: dict[str, torch.Tensor] = {}
    ref.layer2.register_forward_hook(lambda m, i, o: seen.__setitem__("l2", o))
    ref.layer3.register_forward_hook(lambda m, i, o: seen.__setitem__("l3", o))
    torch.manual_seed(2)
    x = torch.rand(3, 3, 33, 33)
    resized = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        feats = teacher(x)
        ref((resized - mean) / std)
    expected = torch.cat([seen["l2"].mean(dim=(2, 3)), seen["l3"].mean(dim=(2, 3))], dim=1)
    assert torch.allclose(feats, expected, atol=1e-5)
    with pytest.raises(GlanceError, match="mid-level"):
        teacher.classify(x)


def test_lite0_mid_reads_the_stride_8_and_16_stages(lite: teachers.Teacher) -> None:
    """EfficientNet-Lite0's mid-level feature: the pooled ends of stage 3 (stride 8, 40 channels) and
    stage 5 (stride 16, 112 channels), checked with hooks on the final-feature teacher's own blocks."""
    mid = load_teacher("efficientnet_lite0_mid", input_size=96, verbose=False)
    assert mid.name == "efficientnet_lite0_mid" and mid.dim == 152
    net = lite.body.net
    seen: list[torch.Tensor] = []
    hooks = [net._blocks[i].register_forward_hook(lambda m, i, o: seen.append(o)) for i in (4, 10)]
    x = torch.rand(2, 3, 33, 33)
    try:
        with torch.no_grad():
            lite.body(mid.preprocess(x))
    finally:
        for h in hooks:
            h.remove()
    assert [s.shape[1:] for s in seen] == [(40, 12, 12), (112, 6, 6)]  # strides 8 and 16 of 96 px
    expected = torch.cat([s.mean(dim=(2, 3)) for s in seen], dim=1)
    with torch.no_grad():
        assert torch.allclose(mid(x), expected, atol=1e-5)


def test_unknown_teacher_names_are_refused() -> None:
    from glance_lite.common.presets import get_preset, parse_overrides

    with pytest.raises(ValueError, match="efficientnet_lite0_mid"):
        load_teacher("efficientnet_lite0_high")
    with pytest.raises(ValueError, match="teacher"):
        get_preset("smoke", teacher="vgg16")
    assert get_preset("smoke", **parse_overrides(["teacher=efficientnet_lite0_mid"])).teacher == "efficientnet_lite0_mid"
