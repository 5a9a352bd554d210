import pytest

from ddbackdoor.config_build import parse_override
from ddbackdoor.errors import ConfigError
from ddbackdoor.profiles import PROFILES, dc_loops
from ddbackdoor.resolve import build_config


def test_profiles_never_touch_the_attack_settings():
    for name, profile in PROFILES.items():
        assert "poison" not in profile, name
        quick_doorping = profile.get("doorping", {})
        assert name == "smoke" or not quick_doorping, name
    quick = build_config({"profile": "quick"})
    paper = build_config({"profile": "paper"})
    assert quick.poison == paper.poison
    assert quick.doorping == paper.doorping


def test_paper_profile_is_the_authors_defaults():
    cfg = build_config({"profile": "paper"})
    assert (cfg.iterations, cfg.ipc, cfg.net.width, cfg.dc.batch_real) == (1000, 10, 128, 256)
    assert (cfg.dc.lr_img, cfg.dc.momentum_img, cfg.dc.lr_net) == (0.1, 0.5, 0.01)
    assert (cfg.poison.portion, cfg.poison.trigger_size, cfg.poison.target) == (0.01, 2, 0)
    assert (cfg.doorping.alpha, cfg.doorping.lr, cfg.doorping.max_steps, cfg.doorping.stop_loss) == (
        10.0,
        0.08,
        1000,
        0.5,
    )
    assert (cfg.eval.num_victims, cfg.eval.epochs) == (10, 300)


def test_medium_is_quick_at_width_32_from_real_images():
    """The proving ground (docs/results-medium.md) differs from quick in exactly the two settings it names."""
    for distill in ("dc", "dsa", "dm", "idm", "rdm_dc", "dd", "kip", "mtt"):
        quick = build_config({"profile": "quick", "distill": distill}).model_dump()
        medium = build_config({"profile": "medium", "distill": distill}).model_dump()
        assert medium.pop("profile") == "medium" and quick.pop("profile") == "quick"
        assert medium["net"].pop("width") == 32 and quick["net"].pop("width") == 16
        assert medium["dc"].pop("init") == "real"
        quick["dc"].pop("init")
        assert medium == quick, distill


def test_outer_inner_schedule_by_ipc():
    assert dc_loops(1) == (1, 1)
    assert dc_loops(10) == (10, 50)
    assert dc_loops(50) == (50, 10)
    assert dc_loops(15) == (10, 50)


def test_overrides_are_dotted_and_typed():
    cfg = build_config(None, ["ipc=20", "poison.portion=0.05", "eval.victims=[convnet,mlp]", "attack=naive"])
    assert cfg.ipc == 20 and cfg.poison.portion == 0.05 and cfg.eval.victims == ["convnet", "mlp"]
    assert parse_override("a.b=1") == (["a", "b"], 1)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("dataset=imagenet", "unknown dataset 'imagenet'; accepted: cifar10"),
        ("network=transformer", "unknown network 'transformer'; accepted: alexnet"),
        (
            "attack=magic",
            "unknown attack 'magic'; accepted: blend, doorping, inkdrop, invisible, naive, none, "
            "poisoned_distillation, relax_trigger, seeded, sneakdoor, target_patch",
        ),
        (
            "distill=gan",
            "unknown distillation method 'gan'; accepted: dc, dd, dm, dsa, idm, kip, mtt, rdm_dc, rematch",
        ),
        ("poison.portion=-0.1", "poison.portion"),
        ("ipc=0", "ipc"),
        ("poison.trigger_size=40", "must fit inside the 32x32 image"),
        ("poison.target=10", "classes 0..9"),
        ("poison.pattern=checkerboard", "has no effect with attack=doorping"),
        ("poison.pattern=stripes", "poison.pattern"),
        ("profile=huge", "accepted: paper, quick, medium, smoke"),
        ("colour=red", "unknown config key 'colour'"),
        ("dc.lr_img=fast", "dc.lr_img"),
        ("noequals", "not key=value"),
        ("net.norm=fancy", "unknown convnet norm 'fancy'"),
        ("eval.victims=[convnet,gpt]", "unknown network 'gpt'"),
    ],
)
def test_bad_values_give_one_line_errors(override, expected):
    with pytest.raises(ConfigError) as info:
        build_config(None, [override])
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def without_typical(config) -> dict:
    """The config as a version from before `seeded.typical` wrote it."""
    data = config.model_dump(mode="json")
    del data["seeded"]["typical"]
    return data


def test_an_old_seeded_run_is_read_as_the_random_start_it_was():
    """`seeded.typical` changed what attack=seeded does: a config.yaml without it is a random-start
    run and must not resume as a typical-start one; for other attacks the key changes nothing."""
    from ddbackdoor.identity import config_differences, with_new_defaults

    seeded = build_config({"profile": "smoke", "attack": "seeded"})
    differences = config_differences(
        with_new_defaults(without_typical(seeded)), seeded.model_dump(mode="json")
    )
    assert differences == ["seeded.typical (False there, True now)"]
    random_start = build_config({"profile": "smoke", "attack": "seeded", "seeded": {"typical": False}})
    assert not config_differences(
        with_new_defaults(without_typical(random_start)), random_start.model_dump(mode="json")
    )
    clean = build_config({"profile": "smoke", "attack": "none"})
    assert not config_differences(with_new_defaults(without_typical(clean)), clean.model_dump(mode="json"))
