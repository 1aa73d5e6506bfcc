import dataclasses

import pytest

from cluster.config import ConfigError, config_from_dict, load_config


def test_overrides_and_round_trip():
    cfg = load_config("tiny", ["stage1.beta=0.5", "model.num_categories=7", "run.name=abc"])
    assert cfg.stage1.beta == 0.5 and cfg.model.num_categories == 7 and cfg.run_name == "abc"
    again = config_from_dict(cfg.to_dict())
    assert again == cfg


@pytest.mark.parametrize("override, message", [
    ("stage1.bet=1", "unknown config key 'stage1.bet'"),
    ("nosection.x=1", "unknown config key 'nosection'"),
    ("stage1.beta=-0.1", "stage1.beta must be >= 0"),
    ("model.num_categories=0", "num_categories (N) must be >= 1"),
    ("model.resolution=48", "power of two from 16 to 2048"),
    ("model.resolution=4096", "power of two from 16 to 2048"),
    ("model.resolution=8", "power of two from 16 to 2048"),
    ("model.resolution=abc", "model.resolution must be an integer"),
    ("model.variant=pi3", "model.variant must be one of ds-comgan, comgan, pi1, pi2, redo, got 'pi3'"),
    ("stage1.batch_size=7", "divide evenly"),
    ("stage1.mask_border_weight=-1", "stage1.mask_border_weight must be >= 0"),
    ("stage1.composite_info_weight=-0.5", "stage1.composite_info_weight must be >= 0"),
    ("stage1.mask_area_min=0.1", "'stage1.mask_area_min' was retired: no longer a setting (0.05 changed nothing"),
    ("stage2.self_train_confidence=0.8", "'stage2.self_train_confidence' was retired"),
    ("stage1.augment=color,blur", "stage1.augment: unknown augmentation blur"),
    ("stage2.self_train.colour_bins=-1", "stage2.self_train.colour_bins must be in 0..64"),
    ("stage2.self_train.area_guard=1", "stage2.self_train.area_guard must be in [0, 1)"),
    ("stage1.lr=nan", "stage1.lr must be a finite number, got nan"),
    ("stage2.lam=inf", "stage2.lam must be a finite number, got inf"),
    ("stage1.beta=-.inf", "stage1.beta must be a finite number, got -inf"),
    ("model.z_scale=4", "'model.z_scale' was retired"),
    ("model.dm_width=32", "'model.dm_width' was retired: no longer a setting (D_m has D_z's width"),
    ("stage2.adam_beta1=0.5", "'stage2.adam_beta1' was retired"),
    ("stage1.bn_recalibration_batches=1", "'stage1.bn_recalibration_batches' was retired"),
    ("run.workers=0", "run.workers must be >= 1, got 0"),
    ("run.inference_batch=64", "'run.inference_batch' was retired"),
    ("data.eval_flip=true", "'data.eval_flip' was retired: no longer a setting (score a run's segmenter with "
                            "jobs/evaluate.py --flip)"),
    ("run.collapse_restarts=-1", "run.collapse_restarts must be >= 0"),
    ("run.watch_patience=0", "run.watch_patience >= 1"),
    ("beta", "not of the form key=value"),
])
def test_bad_values_are_one_line_errors(override, message):
    overrides = [override] + (["run.workers=2"] if "batch_size" in override else [])
    with pytest.raises(ConfigError) as e:
        load_config("default", overrides)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown config 'nope'"):
        load_config("nope")


def test_storage_options_hold_no_credentials():
    cfg = load_config("tiny", ["storage.endpoint_url=http://127.0.0.1:9000", "storage.region=eu-west-1"])
    assert cfg.storage.endpoint_url == "http://127.0.0.1:9000" and cfg.storage.region == "eu-west-1"
    assert not any("secret" in k or "key" in k for k in cfg.to_dict()["storage"])
    with pytest.raises(ConfigError, match="must start with http"):
        load_config("tiny", ["storage.endpoint_url=127.0.0.1:9000"])
    with pytest.raises(ConfigError, match="must not carry credentials"):
        load_config("tiny", ["storage.endpoint_url=http://AKIA:secret@127.0.0.1:9000"])


def test_comgan_keeps_only_the_model_and_stage_settings():
    """comgan's config is the mathematics (and how its steps compute it); data, storage and run
    settings belong to their layers."""
    from comgan.config import ComGANConfig

    assert [f.name for f in dataclasses.fields(ComGANConfig)] == ["model", "stage1", "stage2", "speed"]
    assert {"data", "storage", "run"} <= {f.name for f in dataclasses.fields(load_config("tiny"))}


def test_a_config_written_before_the_aux_head_was_retired_still_loads():
    old = load_config("tiny").to_dict()
    old["model"]["dz_aux_logits"] = 20
    assert config_from_dict(old).model.num_categories == 3


def test_a_retired_key_given_by_the_user_is_one_line_naming_what_replaced_it(tmp_path):
    with pytest.raises(ConfigError, match="'model.dz_aux_logits' was retired: no longer a setting") as e:
        load_config("tiny", ["model.dz_aux_logits=20"])
    assert "\n" not in str(e.value)
    path = tmp_path / "old.yaml"
    path.write_text("model:\n  dz_aux_logits: 20\n")
    with pytest.raises(ConfigError, match="'model.dz_aux_logits' was retired"):
        load_config(str(path))


def leaf_keys(obj, prefix: str = "") -> set[str]:
    """Every dotted key of a (nested) config dataclass."""
    out = set()
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        out |= leaf_keys(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else {prefix + f.name}
    return out


def test_the_run_config_has_at_most_65_keys():
    """Issue 28 point 7 / issue 26 point 5 cut 88 keys to 65: a new key has to earn its place (or
    replace one), so the count cannot creep back up unnoticed."""
    keys = leaf_keys(load_config("default"))
    assert len(keys) <= 65, f"{len(keys)} config keys"


def test_every_retired_key_is_gone_and_every_rename_names_a_current_key():
    from comgan.config import RETIRED_KEYS, renamed_to

    current = leaf_keys(load_config("default"))
    assert not current & set(RETIRED_KEYS)
    assert {renamed_to(k) for k in RETIRED_KEYS} - {""} <= current


def test_speed_keys_and_configs_written_before_they_existed():
    """Two speed keys are left (the opt-in ones); the switches that keep the mathematics are not
    settings any more, and a run folder written with them still loads."""
    cfg = load_config("tiny", ["speed.compile=true"])
    assert cfg.speed.compile and not cfg.speed.winograd
    assert [f.name for f in dataclasses.fields(cfg.speed)] == ["winograd", "compile"]
    old = load_config("tiny").to_dict()
    del old["speed"]  # checkpoints and run folders written before issue 12
    assert config_from_dict(old).speed == load_config("tiny").speed
    old["speed"] = {"channels_last": False, "code_as_bias": True, "tf32": False, "cudnn_benchmark": True}
    assert config_from_dict(old).speed == load_config("tiny").speed
    with pytest.raises(ConfigError, match="speed.compile must be true or false"):
        load_config("tiny", ["speed.compile=3"])
    with pytest.raises(ConfigError, match="'speed.channels_last' was retired: no longer a setting .always on"):
        load_config("tiny", ["speed.channels_last=false"])


def test_the_self_training_keys_are_one_section_and_their_old_names_say_where_they_went():
    cfg = load_config("default", ["stage2.self_train.weight=0", "stage2.self_train.start=10"])
    assert (cfg.stage2.self_train.weight, cfg.stage2.self_train.start) == (0, 10)
    with pytest.raises(ConfigError) as e:
        load_config("default", ["stage2.self_train_weight=0"])
    assert str(e.value) == "config key 'stage2.self_train_weight' is now stage2.self_train.weight"
    with pytest.raises(ConfigError, match="'stage2.export_teacher' is now stage2.self_train.export_teacher"):
        load_config("default", ["stage2.export_teacher=true"])
    with pytest.raises(ConfigError, match="stage2.self_train is a section"):
        load_config("default", ["stage2.self_train=0"])
    photos = load_config("photos").stage2.self_train
    assert (photos.weight, photos.start, photos.colour_bins, photos.area_guard, photos.export_teacher) == (
        1, 600, 8, 0.5, True)
    assert load_config("tiny").stage2.self_train.start == 2 and load_config("paper").stage2.self_train.weight == 0


def old_flat_config(**self_train) -> dict:
    """The tiny preset's config as a run folder or checkpoint written before issue 28 point 7
    holds it: self-training's keys flat in stage2 (with `self_train` overriding today's values),
    and every key retired then, at the value it had."""
    old = load_config("tiny").to_dict()
    st = {**old["stage2"].pop("self_train"), **self_train}
    old["stage2"].update({k if k == "export_teacher" else f"self_train_{k}": v for k, v in st.items()})
    old["model"].update(z_scale=4.0, dm_width=8)
    old["stage1"].update(adam_beta1=0.5, adam_beta2=0.999, mask_border_ring=0.0625, ema_decay=0.999,
                         bn_recalibration_batches=20)
    old["stage2"].update(adam_beta1=0.5, adam_beta2=0.999, lr_decay=0.0, self_train_confidence=0.8,
                         self_train_ema=0.99, self_train_augment="color,translation")
    old["speed"].update(channels_last=True, code_as_bias=True, fused_glu=True, fused_optimizer=True, tf32=False,
                        cudnn_benchmark=True)
    old["data"].update(eval_flip=False, eval_colour_refine=False)
    old["run"].update(inference_batch=32, watch_samples=256)
    return old


def test_a_config_in_the_old_flat_form_loads_under_the_new_names():
    old = old_flat_config(weight=0.5, export_teacher=True)
    assert "self_train" not in old["stage2"] and old["stage2"]["self_train_weight"] == 0.5
    assert config_from_dict(old) == load_config("tiny", ["stage2.self_train.weight=0.5",
                                                         "stage2.self_train.export_teacher=true"])


def test_a_run_started_before_the_keys_were_renamed_still_resumes(tmp_path):
    """The run check reads the old run's config.yaml in today's keys: the same settings under the
    new names resume it, other ones are refused naming the new key."""
    import yaml

    from cluster.pipeline import check_run_config
    from cluster.storage import RunLayout

    layout = RunLayout(str(tmp_path), "run")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(old_flat_config(weight=0.5), sort_keys=False))
    check_run_config(load_config("tiny", ["stage2.self_train.weight=0.5"]), layout)
    with pytest.raises(ConfigError, match=r"was started with stage2.self_train.weight=0.5, now 1.0"):
        check_run_config(load_config("tiny"), layout)


def test_paper_preset_turns_off_every_term_the_paper_does_not_have():
    """The default adds terms the paper lacks; the paper preset must train the paper's losses only."""
    cfg = load_config("paper")
    s1, s2 = cfg.stage1, cfg.stage2
    assert (s1.mask_area_weight, s1.mask_border_weight, s1.composite_info_weight) == (0, 0, 0)
    assert s1.augment == ""
    assert s2.self_train.weight == 0 and s2.adv_weight == 1 and not s2.self_train.export_teacher


def test_the_saved_config_hides_url_credentials_and_a_rerun_still_resumes(tmp_path):
    """config.yaml keeps URLs without user:password@ or a presigned signature; the run check
    compares it redacted, so the same command (or one with a freshly signed URL) resumes the run."""
    from cluster.pipeline import check_run_config
    from cluster.storage import RunLayout

    presigned = ("https://bucket.s3.amazonaws.com/eval?X-Amz-Credential=AKIAEXAMPLE%2F20260101"
                 "&X-Amz-Security-Token=sessiontoken&X-Amz-Signature={}")
    overrides = ["data.train=s3://AKIA:secret@bucket/x", f"data.eval={presigned.format('feedface0123')}"]
    layout = RunLayout(str(tmp_path), "run")
    cfg = load_config("tiny", overrides)
    check_run_config(cfg, layout)
    saved = (tmp_path / "run" / "config.yaml").read_text()
    for secret in ("secret", "AKIAEXAMPLE", "sessiontoken", "feedface0123"):
        assert secret not in saved
    assert "s3://REDACTED@bucket/x" in saved and "X-Amz-Signature=REDACTED" in saved
    assert cfg.data.train == "s3://AKIA:secret@bucket/x", "the config in memory keeps the URL it opens"

    check_run_config(load_config("tiny", overrides), layout)  # the same command again: resumes
    resigned = [overrides[0], f"data.eval={presigned.format('0badcafe4567')}"]
    check_run_config(load_config("tiny", resigned), layout)   # a new signature for the same object
    other = r"data.train='s3://REDACTED@bucket/x', now 's3://REDACTED@other/x'"
    with pytest.raises(ConfigError, match=other) as refused:
        check_run_config(load_config("tiny", ["data.train=s3://AKIA:secret@other/x", overrides[1]]), layout)
    assert "secret" not in str(refused.value)


def test_the_driver_log_names_data_urls_without_their_credentials(capsys):
    """Issue 27 point 13, 'the logs': ensure_data's lines name the shard sets it found."""
    from cluster.pipeline import ensure_data
    from data_shards.writer import write_synthetic

    train, held_out = "memory://AKIA:secret@bucket/train", "memory://AKIA:secret@bucket/eval"
    cfg = load_config("tiny", [f"data.train={train}", f"data.eval={held_out}", "data.synthetic=false"])
    write_synthetic(train, 8, cfg.model.resolution, cfg.data.synthetic_styles, 1, samples_per_shard=4, progress=False)
    write_synthetic(held_out, 4, cfg.model.resolution, cfg.data.synthetic_styles, 2, samples_per_shard=4,
                    progress=False)
    ensure_data(cfg)
    out = capsys.readouterr().out
    assert "training shards: memory://REDACTED@bucket/train" in out
    assert "secret" not in out


def test_redo_checks_only_the_stage_it_runs_and_needs_two_images_a_worker():
    """ReDO runs no stage 1 (its batch is not checked) and redraws each of its 2 regions on part of
    every worker's batch."""
    cfg = load_config("redo", ["run.workers=5"])  # 25 splits 5 ways; stage 1's 32 would not
    assert cfg.stage2.batch_size == 25
    with pytest.raises(ConfigError, match="fewer than 2 images"):
        load_config("redo", ["stage2.batch_size=5", "run.workers=5"])
    with pytest.raises(ConfigError, match="stage2.batch_size=25 is the global batch"):
        load_config("redo", ["run.workers=2"])


def test_a_redo_sweep_counts_only_redos_images():
    from cluster.sweep import planned_images

    cfg = load_config("redo")
    assert planned_images(cfg) == cfg.stage2.steps * cfg.stage2.batch_size
    default = load_config("default")
    assert planned_images(default) == default.stage1.steps * 32 + default.stage2.steps * 32
