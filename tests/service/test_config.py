import json

import pytest
from pydantic import ValidationError

from service.config import Settings


def test_defaults_serve_the_shipped_checkpoints_evenly():
    settings = Settings()
    assert [(v.name, v.artifact.name, v.mode, v.weight) for v in settings.variants] == [
        ("blockdrop", "cifar10-resnet32-blockdrop", "blockdrop", 20),
        ("full", "cifar10-resnet32-e200", "full", 20),
        ("slim", "cifar10-resnet32-slim", "full", 20),
        ("slim-blockdrop", "cifar10-resnet32-slim-blockdrop", "blockdrop", 20),
        ("biglittle", "cifar10-blresnet", "full", 20),
    ]


def test_environment_variables_with_one_prefix(monkeypatch, tmp_path):
    monkeypatch.setenv("BLOCKDROP_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("BLOCKDROP_VARIANTS", json.dumps([{"name": "a", "artifact": str(tmp_path), "weight": 2}]))
    settings = Settings()
    assert settings.max_batch_size == 7 and settings.variants[0].name == "a"


def test_settings_file_then_environment(monkeypatch, tmp_path):
    (tmp_path / "s.toml").write_text(
        'queue_limit = 90\nmax_batch_wait_ms = 4.5\n[[variants]]\nname = "x"\nartifact = "/m/x"\nmode = "full"\n'
    )
    monkeypatch.setenv("BLOCKDROP_SETTINGS_FILE", str(tmp_path / "s.toml"))
    monkeypatch.setenv("BLOCKDROP_QUEUE_LIMIT", "110")
    settings = Settings()
    assert settings.queue_limit == 110 and settings.max_batch_wait_ms == 4.5 and settings.variants[0].name == "x"


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"device": "tpu"}, "device must be"),
        ({"shadow_variant": "ghost"}, "not one of the variants"),
        ({"variants": []}, "at least one variant"),
        ({"max_batch_size": 0}, "greater than or equal to 1"),
        ({"unknown_setting": 1}, "Extra inputs are not permitted"),
        ({"queue_limit": 2}, r"queue_limit \(2\) must be at least max_images_per_request \(64\)"),
    ],
)
def test_invalid_settings_are_refused_clearly(overrides, fragment):
    with pytest.raises(ValidationError, match=fragment):
        Settings(**overrides)


def test_api_servers_default_to_one_per_four_cores_and_are_bounded():
    from service.config import Settings, default_api_servers

    assert [default_api_servers(cores) for cores in (1, 2, 7, 8, 16, 64)] == [1, 1, 1, 2, 4, 16]
    assert Settings().api_servers is None  # chosen from the cores when serving
    with pytest.raises(ValueError):
        Settings(api_servers=0)
