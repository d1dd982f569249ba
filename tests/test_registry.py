"""The model registry: one entry per model, its settings per profile, early refusals."""

from __future__ import annotations

import pytest

from tasks.models import registry
from tasks.runtime.profiles import ProfileError, load_profile


def test_each_model_is_one_entry_that_says_how_it_trains():
    assert registry.names() == ("patchcore", "efficientad")
    assert not registry.get("patchcore").gradient  # one fit of its memory bank
    assert registry.get("EfficientAD").gradient  # any case: spikes watched, restarts
    assert registry.get("efficientad").display_name == "EfficientAD"


def test_a_profile_gives_each_model_its_own_settings():
    quick, paper = load_profile("quick"), load_profile("paper")
    assert registry.settings_for("efficientad", quick).max_steps == 36
    assert registry.settings_for("efficientad", paper).max_steps == 70_000
    assert registry.settings_for("patchcore", paper).backbone == "wide_resnet50_2"
    assert registry.settings_for("patchcore", quick).backbone == "auto"


def test_overrides_keep_their_original_spelling_and_take_the_new_one():
    old = load_profile("quick", {"efficientad": {"max_steps": 20}})
    new = load_profile("quick", {"models": {"efficientad": {"max_steps": 20}}})
    assert old == new
    settings = registry.settings_for("efficientad", old)
    assert settings.max_steps == 20 and settings.teacher_distill_steps == 150  # the rest kept


def test_unknown_models_and_bad_settings_are_refused_before_a_run(tmp_path):
    quick = load_profile("quick")
    with pytest.raises(registry.UnknownModel, match=r"nosuchmodel.*patchcore.*efficientad"):
        registry.check_models(["patchcore", "nosuchmodel"], quick)
    with pytest.raises(ProfileError, match=r"efficientad\.max_steps"):
        registry.check_models(
            ["efficientad"], load_profile("quick", {"efficientad": {"max_steps": 0}})
        )
    with pytest.raises(ProfileError, match=r"spikes.*neither models"):
        registry.check_models(["patchcore"], load_profile("quick", {"spikes": {"window": 3}}))
    with pytest.raises(ProfileError, match=r"latency_iters"):  # not a dict: still the profile's
        load_profile("quick", {"latency_iters": "many"})


def test_a_gradient_model_needs_a_learning_rate_to_scale_on_restarts():
    entry = registry.get("patchcore")
    with pytest.raises(TypeError, match="lr"):
        type(entry)(**{**entry.__dict__, "name": "broken", "gradient": True})
