"""Preset fields that make no sense (negative steps, a zero batch, a NaN rate, ...) are refused on
construction, and ``glance-lite fit --set`` turns that into one line on stderr before touching anything."""

from __future__ import annotations

import dataclasses
import json
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
                    {"seed": 0}, {"global_channels": (8,), "global_strides": (1,)}):
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


# ------------------------------------------------------------------ settings removed from the package

REMOVED_VALUES = {"global_lr": 1e-3, "global_schedule": "cosine", "global_holes": 4, "global_readout": "hole",
                  "iad_target_smoothing": 3, "dad_negatives": "stain+swap", "calibration_images": 16}
"""A value other than the former default of each removed field: what the appendix's variants ran."""


def test_removed_fields_are_gone_and_read_at_their_former_default():
    from glance_lite.common.presets import REMOVED_FIELDS, same_preset

    assert set(REMOVED_VALUES) == set(REMOVED_FIELDS)
    names = {f.name for f in dataclasses.fields(Preset)}
    assert not names & set(REMOVED_FIELDS)
    for p in PRESETS.values():
        old = {**p.to_dict(), **REMOVED_FIELDS}      # a results file written before the removal
        assert Preset.from_dict(old) == p and same_preset(old, p)
        assert Preset.from_dict(p.to_dict()) == p


@pytest.mark.parametrize("field", sorted(REMOVED_VALUES))
def test_a_removed_setting_is_refused_in_one_line(field, tmp_path, capsys):
    from glance_lite.common.fileio import GlanceError
    from glance_lite.common.presets import same_preset

    p = get_preset("cpu")
    stored = {**p.to_dict(), field: REMOVED_VALUES[field]}
    for read in (Preset.from_dict, lambda d: same_preset(d, p)):
        with pytest.raises(GlanceError) as err:
            read(stored)
        msg = str(err.value)
        assert "\n" not in msg and f"preset field {field}=" in msg
        assert "removed from the package" in msg and 'appendix "Settings we tried"' in msg and "commit" in msg
    # a --preset-file holding it: one line on stderr, non-zero exit, before touching anything
    f = tmp_path / "preset.json"
    f.write_text(json.dumps(stored))
    rc = main(["reproduce", "--preset-file", str(f), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and field in err and "removed" in err, err
    assert not (tmp_path / "out").exists()
    # --set FIELD=...: the same
    rc = main(["fit", "--data", str(tmp_path / "no-data"), "--category", "widget", "--out", str(tmp_path / "run"),
               "--preset", "smoke", "--quiet", "--set", f"{field}={REMOVED_VALUES[field]}"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and field in err and "removed from the package" in err, err


def test_a_removed_field_at_its_former_default_reads_from_a_preset_file(tmp_path):
    from glance_lite.cli import _preset_from_file
    from glance_lite.common.presets import REMOVED_FIELDS

    f = tmp_path / "preset.json"
    f.write_text(json.dumps({**get_preset("cpu").to_dict(), **REMOVED_FIELDS}))
    assert _preset_from_file(str(f)) == get_preset("cpu")


# Run keys of today's presets, recorded before the removal: a key hashes the removed fields back in at their
# former defaults, so that no run folder (and no validation row) was renamed.  (A new shipped Local-Net would
# change the validation keys of presets with pretrained="shipped" on purpose: see validation.run_key.)
VALIDATION_KEYS = {  # validation.run_key(preset, teacher, "fixed-data-id")
    ("smoke", "auto"): "7d0b5a60", ("smoke", "efficientnet_lite0"): "e0b915f1", ("smoke", "resnet18"): "e485baaf",
    ("cpu", "auto"): "4e9829f4", ("cpu", "efficientnet_lite0"): "f0635caa", ("cpu", "resnet18"): "eb40dc25",
    ("paper", "auto"): "15eca240", ("paper", "efficientnet_lite0"): "48857453", ("paper", "resnet18"): "82a725a6",
}
ONE_CLASS_KEYS = {"smoke": "60787fa0", "cpu": "036245ea", "paper": "8bc0b5b1"}
PRETRAIN_KEYS = {"smoke": "b11ff909", "cpu": "ed31b0f6", "paper": "0ce4655e"}


def test_run_keys_did_not_change_when_fields_were_removed():
    from glance_lite.common.fileio import short_hash
    from glance_lite.common.presets import REMOVED_FIELDS, keyed_training_fields, training_fields
    from glance_lite.experiments import one_class, validation
    from glance_lite.train.training import pretrain_key

    for (name, teacher), key in VALIDATION_KEYS.items():
        assert validation.run_key(get_preset(name), teacher, "fixed-data-id") == key, (name, teacher)
    for name, key in ONE_CLASS_KEYS.items():
        p = get_preset(name)
        assert one_class.run_key(p, one_class.one_class_settings(p)) == key, name
        # how: the whole preset as it was, the removed fields at their former defaults
        assert short_hash({"preset": {**p.to_dict(), **REMOVED_FIELDS},
                           "settings": one_class.one_class_settings(p).to_dict()}) == key
    for name, key in PRETRAIN_KEYS.items():
        assert pretrain_key(get_preset(name)) == key, name
    # the training fields carried global_holes = 1; the other removed fields were left out at their default
    cpu = get_preset("cpu")
    assert keyed_training_fields(cpu) == {**training_fields(cpu), "global_holes": 1}
    # a scoring field changes no validation key; a training field does
    assert validation.run_key(cpu.replace(score_norm="zscore"), "auto", "d") == validation.run_key(cpu, "auto", "d")
    assert validation.run_key(cpu.replace(global_steps=1000), "auto", "d") != validation.run_key(cpu, "auto", "d")
