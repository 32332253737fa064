"""The paper preset's dry run keeps every size of the paper preset and cuts only steps and data."""

from glance_lite.experiments.paper_dry import dry_preset
from glance_lite.common.presets import get_preset, training_fields


def test_dry_run_keeps_the_paper_sizes():
    paper, dry = get_preset("paper"), dry_preset(3)
    for f in ("image_size", "patch_size", "batch_size", "global_channels", "global_strides", "descriptor_dim",
              "teacher_input_size", "dad_hidden", "lr", "mixed_precision"):
        assert getattr(dry, f) == getattr(paper, f), f
    assert dry.global_steps == dry.finetune_steps == dry.pretrain_steps == 3
    changed = {k for k, v in training_fields(dry).items() if training_fields(paper)[k] != v}
    assert changed == {"pretrained", "pretrain_patches", "pretrain_steps", "finetune_patches", "finetune_steps",
                       "global_steps", "max_train_images", "checkpoint_every"}
