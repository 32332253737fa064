"""Preset fields that make no sense (negative steps, a zero batch, a NaN rate, ...) are refused on
construction, and ``glance-lite fit --set`` turns that into one line on stderr before touching anything."""

from __future__ import annotations

import dataclasses
import math

import pytest

from glance_lite.cli import main
from glance_lite.common.presets import PRESETS, Preset, get_preset

BAD = [
    ("global_steps", {"global_steps": -5}),
    ("global_steps", {"global_steps": 0}),
    ("pretrain_steps", {"pretrain_steps": -1}),
    ("finetune_steps", {"finetune_steps": 0}),
    ("batch_size", {"batch_size": 0}),
    ("batch_size", {"batch_size": 2.5}),
    ("descriptor_dim", {"descriptor_dim": 0}),
    ("dad_hidden", {"dad_hidden": -3}),
    ("checkpoint_every", {"checkpoint_every": 0}),
    ("score_stride", {"score_stride": 0}),
    ("idw_neighbours", {"idw_neighbours": 0}),
    ("pretrain_patches", {"pretrain_patches": 0}),
    ("finetune_patches", {"finetune_patches": -10}),
    ("teacher_input_size", {"teacher_input_size": 0}),
    ("seed", {"seed": -1}),
    ("max_train_images", {"max_train_images": 0}),
    ("max_test_images", {"max_test_images": -1}),
    ("patch_size", {"patch_size": 21}),
    ("image_size", {"image_size": 16}),                                # smaller than smoke's 17-pixel patch
    ("image_size", {"image_size": 32, "extra_patch_sizes": (33,)}),    # smaller than an extra patch size
    ("lr", {"lr": 0.0}),
    ("lr", {"lr": -1e-4}),
    ("lr", {"lr": math.nan}),
    ("lr", {"lr": math.inf}),
    ("global_lr", {"global_lr": math.inf}),
    ("weight_decay", {"weight_decay": -1e-5}),
    ("weight_decay", {"weight_decay": math.nan}),
    ("lambda_k", {"lambda_k": -1.0}),
    ("lambda_c", {"lambda_c": math.inf}),
    ("lambda_t", {"lambda_t": math.nan}),
    ("lambda_s", {"lambda_s": 1.5}),
    ("lambda_s", {"lambda_s": -0.1}),
    ("lambda_s", {"lambda_s": math.nan}),
    ("idw_power", {"idw_power": 0.0}),
    ("idw_power", {"idw_power": math.nan}),
    ("global_strides", {"global_strides": (2, 1)}),                    # 7 channels, 2 strides
    ("global_channels", {"global_channels": (), "global_strides": ()}),
    ("global_channels", {"global_channels": (8, 0, 16, 16, 16, 32, 32)}),
    ("global_strides", {"global_strides": (2, 1, 2, 1, -2, 1, 2)}),
]


@pytest.mark.parametrize("field,changes", BAD, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD)])
def test_nonsense_values_are_refused_naming_the_field(field, changes):
    with pytest.raises(ValueError, match=rf"preset field {field}=") as err:
        get_preset("smoke").replace(**changes)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_constructs(name):
    p = PRESETS[name]
    fields = {f.name: getattr(p, f.name) for f in dataclasses.fields(Preset)}
    assert Preset(**fields) == p
    assert Preset.from_dict(p.to_dict()) == p


def test_edge_values_that_make_sense_are_kept():
    p = get_preset("smoke")
    for changes in ({"global_steps": 1, "batch_size": 1}, {"lambda_s": 0.0}, {"lambda_s": 1.0},
                    {"weight_decay": 0.0, "lambda_t": 0.0}, {"image_size": 17}, {"lr": 1}, {"max_train_images": None},
                    {"global_lr": None}, {"seed": 0}, {"global_channels": (8,), "global_strides": (1,)}):
        assert p.replace(**changes).replace(name="x").name == "x"


def test_fit_refuses_negative_steps_in_one_line_before_touching_anything(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["fit", "--data", str(tmp_path / "no-data"), "--category", "widget", "--out", str(out),
               "--preset", "smoke", "--quiet", "--set", "global_steps=-5"])
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert len(err.splitlines()) == 1 and "global_steps" in err and "-5" in err, err
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
