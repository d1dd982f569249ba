"""The gate on real MVTec AD images (the grid/leather subset beside the checkout)."""

from __future__ import annotations

from checks.manifest_schema import RULES
from tasks.data.datasets import prepare_dataset
from tasks.validation.rules import validate_dataset


def test_real_files_pass_every_per_file_rule_and_counts_say_subset(shared_mvtec):
    spec = prepare_dataset("mvtec", shared_mvtec, ["grid", "leather"])
    manifest, report = validate_dataset(spec)
    pandera = [r for r in report.rules if r.tool == "pandera"]
    assert {(r.category, r.rule) for r in pandera} == {
        (c, rule) for c in ("grid", "leather") for rule in RULES
    }
    assert all(r.passed for r in pandera), report.summary()
    assert manifest["readable"].all()
    assert set(manifest.loc[manifest["split"] == "ground_truth", "mask_binary"]) == {True}

    counts = {r.category: r for r in report.rules if r.rule == "official_counts"}
    assert counts["grid"].passed and "subset: 39 of 342" in counts["grid"].message
    assert counts["leather"].passed and "subset: 19 of 369" in counts["leather"].message
    assert "MVTec grid is a subset: 39 of 342 official images" in " ".join(report.notes)
    assert report.passed, report.summary()
