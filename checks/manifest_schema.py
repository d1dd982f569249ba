"""Per-file rules for the dataset manifest, as a pandera `DataFrameModel`.

Each rule is a named pandera check; the check name is the stable rule name reported by
the gate and `RULES` holds its message. Rules that span columns (a mask and its image)
are dataframe-level checks that return one boolean per row, so a failure names the file.
Run it with `lazy=True` to collect every failure, not only the first.

Example:
    >>> try:
    ...     ManifestSchema.validate(manifest, lazy=True)
    ... except pa.errors.SchemaErrors as errors:
    ...     errors.failure_cases[["check", "index"]]
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

SPLITS = ("train", "test", "ground_truth")
LABELS = ("good", "defect")

RULES: dict[str, str] = {
    "file_not_empty": "every file has content (more than 0 bytes)",
    "file_opens_as_image": "every file decodes fully as an image (not truncated, not text)",
    "known_split": f"files sit in a known split folder: {', '.join(SPLITS)}",
    "known_label": f"the label is one of {', '.join(LABELS)}",
    "label_matches_folder": "the label agrees with the folder (good/ means good)",
    "defect_has_mask": "every defective test image has its mask ground_truth/<defect>/"
    "<stem>_mask.png when masks are expected",
    "mask_has_image": "every mask in ground_truth/<defect>/ belongs to an image test/<defect>/"
    "<stem>.png",
    "mask_matches_image_size": "a mask has the same width and height as its image",
    "mask_is_binary": "a mask holds only 0 and 255 (or 0 and 1)",
}


class ManifestSchema(pa.DataFrameModel):
    """One row per file, as built by `tasks.manifest.build_manifest`."""

    category: Series[str]
    split: Series[str]
    label: Series[str]
    defect_type: Series[str]
    path: Series[str] = pa.Field(unique=True)
    relpath: Series[str]
    mask_path: Series[Any] = pa.Field(nullable=True)
    image_path: Series[Any] = pa.Field(nullable=True)
    width: Series[pd.Int64Dtype] = pa.Field(nullable=True, gt=0)
    height: Series[pd.Int64Dtype] = pa.Field(nullable=True, gt=0)
    mode: Series[str] = pa.Field(nullable=True)
    channels: Series[pd.Int64Dtype] = pa.Field(nullable=True, isin=[1, 2, 3, 4])
    bytes: Series[int] = pa.Field(ge=0)
    sha256: Series[str] = pa.Field(nullable=True, str_matches=r"^[0-9a-f]{64}$")
    readable: Series[bool]
    read_error: Series[Any] = pa.Field(nullable=True)
    mask_binary: Series[pd.BooleanDtype] = pa.Field(nullable=True)
    masks_expected: Series[bool]

    @pa.check("bytes", name="file_not_empty", error=RULES["file_not_empty"])
    def file_not_empty(cls, size: Series[int]) -> Series[bool]:
        return size > 0

    @pa.check("readable", name="file_opens_as_image", error=RULES["file_opens_as_image"])
    def file_opens_as_image(cls, readable: Series[bool]) -> Series[bool]:
        return readable

    @pa.check("split", name="known_split", error=RULES["known_split"])
    def known_split(cls, split: Series[str]) -> Series[bool]:
        return split.isin(SPLITS)

    @pa.check("label", name="known_label", error=RULES["known_label"])
    def known_label(cls, label: Series[str]) -> Series[bool]:
        return label.isin(LABELS)

    @pa.dataframe_check(name="label_matches_folder", error=RULES["label_matches_folder"])
    def label_matches_folder(cls, df: pd.DataFrame) -> Series[bool]:
        in_good_folder = (df["defect_type"] == "good") & (df["split"] != "ground_truth")
        return df["label"] == in_good_folder.map({True: "good", False: "defect"})

    @pa.dataframe_check(name="defect_has_mask", error=RULES["defect_has_mask"])
    def defect_has_mask(cls, df: pd.DataFrame) -> Series[bool]:
        needs_mask = (df["split"] == "test") & (df["label"] == "defect") & df["masks_expected"]
        return ~needs_mask | df["mask_path"].notna()

    @pa.dataframe_check(name="mask_has_image", error=RULES["mask_has_image"])
    def mask_has_image(cls, df: pd.DataFrame) -> Series[bool]:
        return (df["split"] != "ground_truth") | df["image_path"].notna()

    @pa.dataframe_check(name="mask_matches_image_size", error=RULES["mask_matches_image_size"])
    def mask_matches_image_size(cls, df: pd.DataFrame) -> Series[bool]:
        sizes = df.set_index("path")[["width", "height"]]
        sizes = sizes[~sizes.index.duplicated()]
        image = sizes.reindex(df["image_path"].fillna("")).set_axis(df.index)
        same = (df["width"] == image["width"]) & (df["height"] == image["height"])
        judged = (df["split"] == "ground_truth") & df["readable"] & image["width"].notna()
        return ~judged | same.fillna(False).astype(bool)

    @pa.dataframe_check(name="mask_is_binary", error=RULES["mask_is_binary"])
    def mask_is_binary(cls, df: pd.DataFrame) -> Series[bool]:
        judged = (df["split"] == "ground_truth") & df["readable"]
        return ~judged | df["mask_binary"].fillna(False).astype(bool)

    class Config:
        strict = False
        coerce = False
