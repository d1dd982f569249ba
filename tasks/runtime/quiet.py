"""The one silencer: no progress bars and no repeated framework chatter in the logs.

Runs are watched in the Prefect UI and in log files, where tqdm's carriage returns and
Lightning's per-run advice are noise. `silent_tqdm(module)` turns off the tqdm bars a
library module draws (anomalib's EfficientAD draws two); `quiet_training()` lowers
Lightning's loggers to warnings and filters the warnings a benchmark run meets every
time, for the duration of a training.

Example:
    >>> with quiet_training(), silent_tqdm(anomalib_efficientad):
    ...     engine.fit(model, datamodule=datamodule)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import logging
import types
import warnings
from collections.abc import Iterator

# warnings every run meets; nothing a user can act on
TRAINING_WARNINGS = (
    ".*no logger configured.*",
    ".*will override existing callbacks.*",
    ".*does not have many workers.*",
    ".*ckpt_path is not provided.*",
    ".*configure_optimizers` returned `None`.*",
    ".*module\\(s\\) in eval mode.*",
    ".*LeafSpec.*",
    ".*infer the `batch_size` from an ambiguous collection.*",
    ".*`weights_only` was not set.*",
    ".*`check_val_every_n_epoch`.*",
    # pixel metrics without masks: anomalib skips them and they come back None
    ".*was called before the ``update`` method.*",
)
CHATTY_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning_fabric")


@contextlib.contextmanager
def silent_tqdm(module: types.ModuleType) -> Iterator[None]:
    """`module.tqdm` (a module that did `import tqdm`) draws no bars inside the block."""
    import tqdm

    original = module.tqdm
    module.tqdm = types.SimpleNamespace(tqdm=functools.partial(tqdm.tqdm, disable=True))
    try:
        yield
    finally:
        module.tqdm = original


@contextlib.contextmanager
def quiet_training() -> Iterator[None]:
    """Lightning's loggers at WARNING and the routine warnings filtered, then restored."""
    chatty = [logging.getLogger(name) for name in CHATTY_LOGGERS]
    levels = [lg.level for lg in chatty]
    for lg in chatty:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for message in TRAINING_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        for lg, level in zip(chatty, levels, strict=True):
            lg.setLevel(level)
