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

from pathlib import PurePath
from typing import Any

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

SPLITS = ("train", "test", "ground_truth")
# rows of a profile's validation.directory: a category name no dataset can have
VALIDATION_CATEGORY = "<validation>"
VALIDATION_SPLIT = "validation"
LABELS = ("good", "defect")
# torchvision's IMG_EXTENSIONS: what anomalib's Folder datamodule globs (any case)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# PIL modes that anomalib's read_image (convert("RGB")) and read_mask (convert("L") > 0)
# take without loss: 8 bits per channel. I;16, I and F would be clipped to white.
IMAGE_MODES = ("L", "RGB", "RGBA")
MASK_MODES = ("1", "L")
MAX_FILE_BYTES = 128 * 2**20
MAX_PIXELS = 64 * 2**20
MAX_PATH_CHARS = 512  # anomalib's validate_path limit
PRINTABLE_ASCII = r"^[\x20-\x7E]+$"  # anomalib's validate_path refuses anything else

RULES: dict[str, str] = {
    "regular_file": "every entry is a regular file or a folder: no FIFO, socket or device "
    "(reading one would block or never end), no folder that cannot be listed",
    "no_empty_folders": "every folder inside a split holds files (anomalib stops on an empty "
    "class folder)",
    "no_symlinks": "no file or folder inside a category is a symlink (link the dataset root "
    "or a whole category instead)",
    "no_hidden_files": "no file or folder inside a split starts with '.' (anomalib would train "
    "on macOS ._* files)",
    "image_extension": f"every file has an image extension anomalib reads: "
    f"{', '.join(IMAGE_EXTENSIONS)}",
    "in_class_folder": "every file sits directly in <split>/<class>/ (no files loose in a "
    "split, no nested folders)",
    "printable_ascii_path": f"every path is printable ASCII, at most {MAX_PATH_CHARS} "
    "characters (anomalib refuses other paths)",
    "file_within_size_cap": f"every file holds at most {MAX_FILE_BYTES // 2**20} MiB and "
    f"{MAX_PIXELS // 2**20} megapixels",
    "file_not_empty": "every file has content (more than 0 bytes)",
    "file_opens_as_image": "every file decodes fully as an image (not truncated, not text)",
    "pixel_format": f"images are 8-bit {'/'.join(IMAGE_MODES)} and masks 8-bit "
    f"{'/'.join(MASK_MODES)} (16-bit and float images would be clipped when read)",
    "known_split": f"files sit in a known split folder: {', '.join(SPLITS)}",
    "no_validation_test_overlap": "no image of validation.directory has the content (sha256) "
    "of a test image",
    "known_label": f"the label is one of {', '.join(LABELS)}",
    "label_matches_folder": "the label agrees with the folder (good/ means good)",
    "defect_has_mask": "every defective test image has its mask ground_truth/<defect>/"
    "<stem>_mask.png when masks are expected",
    "mask_has_image": "every mask in ground_truth/<defect>/ belongs to an image test/<defect>/"
    "<stem>.png",
    "mask_matches_image_size": "a mask has the same width and height as its image",
    "mask_order_matches_images": "sorted by path, the n-th mask belongs to the n-th defective "
    "test image (anomalib pairs them by position)",
    "mask_is_binary": "a mask holds only 0 and 255, or only 0 and 1 (anomalib reads every "
    "non-zero pixel as defect)",
    "mask_marks_defect": "a mask marks at least one defect pixel",
}


def _is_file(df: pd.DataFrame) -> pd.Series:
    return df["file_type"] == "file"


class ManifestSchema(pa.DataFrameModel):
    """One row per file, as built by `tasks.validation.manifest.build_manifest`."""

    category: Series[str]
    split: Series[str]
    label: Series[str]
    defect_type: Series[str]
    path: Series[str] = pa.Field(unique=True)
    relpath: Series[str]
    file_type: Series[str]
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
    mask_empty: Series[pd.BooleanDtype] = pa.Field(nullable=True)
    masks_expected: Series[bool]

    @pa.dataframe_check(name="regular_file", error=RULES["regular_file"])
    def regular_file(cls, df: pd.DataFrame) -> Series[bool]:
        return df["file_type"].isin(["file", "symlink", "empty_folder"])

    @pa.dataframe_check(name="no_empty_folders", error=RULES["no_empty_folders"])
    def no_empty_folders(cls, df: pd.DataFrame) -> Series[bool]:
        return df["file_type"] != "empty_folder"

    @pa.dataframe_check(name="no_symlinks", error=RULES["no_symlinks"])
    def no_symlinks(cls, df: pd.DataFrame) -> Series[bool]:
        return df["file_type"] != "symlink"

    @pa.dataframe_check(name="no_hidden_files", error=RULES["no_hidden_files"])
    def no_hidden_files(cls, df: pd.DataFrame) -> Series[bool]:
        return ~df["relpath"].map(lambda p: any(part.startswith(".") for part in p.split("/")))

    @pa.dataframe_check(name="image_extension", error=RULES["image_extension"])
    def image_extension(cls, df: pd.DataFrame) -> Series[bool]:
        suffix = df["path"].map(lambda p: PurePath(p).suffix.lower())
        return ~_is_file(df) | suffix.isin(IMAGE_EXTENSIONS)

    @pa.dataframe_check(name="in_class_folder", error=RULES["in_class_folder"])
    def in_class_folder(cls, df: pd.DataFrame) -> Series[bool]:
        depth = df["relpath"].str.count("/")  # category/split/class/name
        return (depth == 3) | ((depth == 2) & ~_is_file(df))

    @pa.dataframe_check(name="printable_ascii_path", error=RULES["printable_ascii_path"])
    def printable_ascii_path(cls, df: pd.DataFrame) -> Series[bool]:
        path = df["path"]
        return path.str.fullmatch(PRINTABLE_ASCII).fillna(False).astype(bool) & (
            path.str.len() <= MAX_PATH_CHARS
        )

    @pa.dataframe_check(name="file_within_size_cap", error=RULES["file_within_size_cap"])
    def file_within_size_cap(cls, df: pd.DataFrame) -> Series[bool]:
        pixels = (df["width"] * df["height"]).fillna(0)
        return ~_is_file(df) | ((df["bytes"] <= MAX_FILE_BYTES) & (pixels <= MAX_PIXELS))

    @pa.dataframe_check(name="file_not_empty", error=RULES["file_not_empty"])
    def file_not_empty(cls, df: pd.DataFrame) -> Series[bool]:
        return ~_is_file(df) | (df["bytes"] > 0)

    @pa.dataframe_check(name="file_opens_as_image", error=RULES["file_opens_as_image"])
    def file_opens_as_image(cls, df: pd.DataFrame) -> Series[bool]:
        return ~_is_file(df) | df["readable"]

    @pa.dataframe_check(name="pixel_format", error=RULES["pixel_format"])
    def pixel_format(cls, df: pd.DataFrame) -> Series[bool]:
        is_mask = df["split"] == "ground_truth"
        ok = df["mode"].isin(MASK_MODES).where(is_mask, df["mode"].isin(IMAGE_MODES))
        return ~(_is_file(df) & df["mode"].notna()) | ok.astype(bool)

    @pa.dataframe_check(name="known_split", error=RULES["known_split"])
    def known_split(cls, df: pd.DataFrame) -> Series[bool]:
        validation = (df["category"] == VALIDATION_CATEGORY) & (df["split"] == VALIDATION_SPLIT)
        return df["split"].isin(SPLITS) | validation

    @pa.dataframe_check(
        name="no_validation_test_overlap", error=RULES["no_validation_test_overlap"]
    )
    def no_validation_test_overlap(cls, df: pd.DataFrame) -> Series[bool]:
        test = set(df.loc[df["split"] == "test", "sha256"].dropna())
        return (df["split"] != VALIDATION_SPLIT) | ~df["sha256"].isin(test)

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

    @pa.dataframe_check(name="mask_order_matches_images", error=RULES["mask_order_matches_images"])
    def mask_order_matches_images(cls, df: pd.DataFrame) -> Series[bool]:
        """anomalib's Folder sorts the defective images and the masks by path and pairs
        them by position; a mask whose partner there is not its image would be scored
        against another image (or stop training). Judged when each side is complete."""
        ok = pd.Series(True, index=df.index)
        files = df[_is_file(df) & df["masks_expected"]]
        for _, own in files.groupby("category"):
            images = own[(own["split"] == "test") & (own["label"] == "defect")]
            masks = own[own["split"] == "ground_truth"]
            if len(images) != len(masks) or images["mask_path"].isna().any():
                continue  # defect_has_mask / mask_has_image say what is missing
            by_path = sorted(images["path"], key=lambda p: PurePath(p).parts)
            mask_by_path = sorted(masks["path"], key=lambda p: PurePath(p).parts)
            linked = dict(zip(images["path"], images["mask_path"], strict=True))
            for image, mask in zip(by_path, mask_by_path, strict=True):
                if linked[image] != mask:
                    ok[masks.index[masks["path"] == mask]] = False
        return ok

    @pa.dataframe_check(name="mask_is_binary", error=RULES["mask_is_binary"])
    def mask_is_binary(cls, df: pd.DataFrame) -> Series[bool]:
        judged = (df["split"] == "ground_truth") & df["readable"]
        return ~judged | df["mask_binary"].fillna(False).astype(bool)

    @pa.dataframe_check(name="mask_marks_defect", error=RULES["mask_marks_defect"])
    def mask_marks_defect(cls, df: pd.DataFrame) -> Series[bool]:
        judged = (df["split"] == "ground_truth") & df["readable"]
        return ~judged | ~df["mask_empty"].fillna(True).astype(bool)

    class Config:
        strict = False
        coerce = False
