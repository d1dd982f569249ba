"""How well the loss-spike detector works on real EfficientAD training runs.

Also replays the stored long clean curves (`benchmarks/data/clean_loss_curves`, made by
`python -m benchmarks.clean_loss_curves`) through the detector: every flag there is a
false alarm. `--replay-only` skips the training runs.

Runs short EfficientAD trainings (anomalib Engine, offline teacher) on one demo category:
`--seeds` clean runs, whose every flag is a false positive, and as many runs with a real
injected divergence (learning rate x1000 from step `--inject-at`), which count as
detected when a spike is flagged within 3 steps after the injection. Prints the
false-positive rate, the detection rate, the detection delay and the spike magnitudes,
then replays the clean curves through the detector at stricter and looser thresholds.

    python -m benchmarks.spike_detection --seeds 5 --steps 40 --inject-at 25
    python -m benchmarks.spike_detection --replay-only --markdown   # into docs/performance.md
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.performance import Table, add_markdown_option, publish
from tasks.data.datamodule import make_datamodule
from tasks.data.demo_data import DEMO_CATEGORIES, ensure_demo_dataset
from tasks.models.registry import settings_for
from tasks.results.types import DatasetSpec
from tasks.runtime.profiles import SpikeSettings, load_profile
from tasks.runtime.quiet import quiet_training
from tasks.training.attempts import fit_attempt
from tasks.training.loss_spikes import LossSpikeDetector
from tests.spike_injection import LearningRateBlowUp

DETECTION_WINDOW = 3  # steps after the injection within which a flag counts as detection


def _replay(curves: list[list[tuple[int, str, float]]], settings: SpikeSettings) -> int:
    """How many clean curves a detector with `settings` would have flagged."""
    flagged = 0
    for losses in curves:
        detector = LossSpikeDetector(settings)
        flagged += any(detector.update(step, name, value) for step, name, value in losses)
    return flagged


def _shift_sweep(rows: list[tuple[int, float]], factor: float, settings: SpikeSettings):
    """Multiply the curve by `factor` from each 3rd step after warm-up on; per shift: None
    (missed) or (onset - shift, confirming step - shift) of the first event."""
    outcomes = []
    for at in range(100, len(rows) - settings.shift_steps, 3):
        detector = LossSpikeDetector(settings)
        first = next(
            (
                e
                for i, (step, value) in enumerate(rows)
                if (e := detector.update(step, "train_loss", value * (factor if i >= at else 1)))
            ),
            None,
        )
        shift = rows[at][0]
        outcomes.append(None if first is None else (first.first_step - shift, first.step - shift))
    return outcomes


def replay_stored() -> list[Table]:
    """False alarms of the detector on the stored long clean curves, at several settings,
    and how it catches lasting shifts injected into them."""
    from benchmarks.clean_loss_curves import DATA_DIR, read_curve

    curves = {p.name: read_curve(p) for p in sorted(DATA_DIR.glob("*.csv.gz"))}
    for name, rows in curves.items():
        steps = len({s for s, n, _ in rows if n == "train_loss"})
        print(f"stored clean curve {name}: {steps} steps")
    default = SpikeSettings()
    variants = [
        ("defaults", {}),
        ("persistence 1", {"persistence": 1}),
        ("robust_z 6", {"robust_z": 6.0}),
        ("ratio 5", {"ratio": 5.0}),
        ("shift_steps 5", {"shift_steps": 5}),
        ("shift_steps 4", {"shift_steps": 4}),
        ("shift_ratio 1.5", {"shift_ratio": 1.5}),
    ]
    alarms_table = Table(
        "spike_detection_replay",
        f"False alarms on the stored clean curves ({', '.join(curves)})",
        ["detector settings", "curves with a false alarm"],
    )
    shifts_table = Table(
        "spike_detection_shifts",
        "Lasting shifts injected at every 3rd step from step 100 on (default settings)",
        ["curve", "shift", "positions", "missed", "dated after the shift",
         "confirmed after, median / max steps"],
    )  # fmt: skip
    for label, update in variants:
        alarms = _replay(list(curves.values()), default.model_copy(update=update))
        print(f"replay at {label:>16}: {alarms}/{len(curves)} curves with a false alarm")
        alarms_table.add(label, f"{alarms} of {len(curves)}")
    for name, rows in curves.items():
        loss = [(s, v) for s, n, v in rows if n == "train_loss"]
        for factor in (3.0, 5.0, 10.0, 100.0):
            outcomes = _shift_sweep(loss, factor, default)
            caught = [o for o in outcomes if o is not None]
            late = sum(onset > 0 for onset, _ in caught)
            delays = [confirm for _, confirm in caught]
            print(
                f"{name}: lasting x{factor:g} shift at {len(outcomes)} positions: "
                f"missed {len(outcomes) - len(caught)}, dated after the shift {late}, "
                f"confirmed after median {statistics.median(delays):g} / max {max(delays)} steps"
            )
            shifts_table.add(name, f"x{factor:g}", len(outcomes), len(outcomes) - len(caught),
                             late, f"{statistics.median(delays):g} / {max(delays)}")  # fmt: skip
    return [alarms_table, shifts_table]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--replay-only", action="store_true", help="only the stored curves")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--inject-at", type=int, default=25)
    parser.add_argument("--category", default=DEMO_CATEGORIES[0])
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temp folder")
    parser.add_argument("--weights-dir", default=None, help="offline teacher cache")
    parser.add_argument(
        "--teacher-distill-steps", type=int, default=None, help="fallback teacher; default: profile"
    )
    add_markdown_option(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    replay = replay_stored()
    if args.replay_only:
        publish(replay, args.markdown, kind="computed")
        return
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="spike_benchmark_"))
    root = ensure_demo_dataset(work / "demo")
    spec = DatasetSpec(kind="demo", root=root, categories=(args.category,))
    overrides: dict = {"efficientad": {"max_steps": args.steps}}
    if args.weights_dir:
        overrides["weights_dir"] = args.weights_dir
    if args.teacher_distill_steps:
        overrides["efficientad"]["teacher_distill_steps"] = args.teacher_distill_steps
    profile = load_profile("quick", overrides)
    datamodule, _, _ = make_datamodule(spec, args.category, profile, train_batch_size=1)
    settings = settings_for("efficientad", profile)
    print(
        f"EfficientAD-{settings.model_size}, {args.steps} steps, category "
        f"{args.category}, detector {profile.spike.model_dump()}, torch threads "
        f"{torch.get_num_threads()}"
    )

    clean_curves, false_alarms, delays, magnitudes, detected = [], [], [], [], 0
    started = time.perf_counter()
    with quiet_training():
        for i in range(args.seeds):
            seed = profile.seed + i
            for inject in (None, args.inject_at):
                callbacks = [] if inject is None else [LearningRateBlowUp(inject)]
                trained, watcher = fit_attempt(
                    "efficientad",
                    i + 1,
                    seed,
                    settings,
                    datamodule,
                    profile,
                    work / "runs" / f"seed{seed}_{'spike' if inject else 'clean'}",
                    callbacks,
                    {"max_steps": args.steps, "precision": settings.training_precision},
                )
                # the first event: a rollback, or a stop for a fresh restart
                event = watcher.recoveries[0] if watcher.recoveries else watcher.spike
                onset = None
                if watcher.recoveries:
                    onset, magnitude = event.onset_step, event.magnitude
                    text = event.describe()
                elif event is not None:
                    onset, magnitude, text = event.first_step, event.magnitude, event.describe()
                kind = "clean" if inject is None else f"lr x1000 at step {inject}"
                print(
                    f"seed {seed} {kind:>22}: steps {trained.attempt.steps:3d}, "
                    f"event {text if onset is not None else 'none'}"
                )
                if inject is None:
                    clean_curves.append(watcher.losses)
                    false_alarms.append(onset is not None)
                elif onset is not None and inject < onset <= inject + DETECTION_WINDOW:
                    detected += 1
                    delays.append(onset - inject)
                    magnitudes.append(magnitude or float("inf"))
    elapsed = time.perf_counter() - started

    n = args.seeds
    print(f"\nfalse-positive rate: {sum(false_alarms)}/{n} clean runs flagged")
    print(
        f"detection rate:      {detected}/{n} injected spikes flagged within "
        f"{DETECTION_WINDOW} steps"
    )
    if delays:
        print(
            f"detection delay:     median {statistics.median(delays)} steps after the "
            f"blow-up (the first loss on blown-up weights is 1 step after)"
        )
        print(
            f"spike magnitude:     min {min(magnitudes):.1f}, median "
            f"{statistics.median(magnitudes):.1f} (robust z or ratio; thresholds "
            f"z>{profile.spike.robust_z}, ratio>{profile.spike.ratio})"
        )
    for z in (4.0, 6.0, profile.spike.robust_z, 12.0):
        looser = profile.spike.model_copy(update={"robust_z": z})
        print(
            f"replay clean curves at robust_z {z:4.1f}: {_replay(clean_curves, looser)}/{n} flagged"
        )
    print(f"wall time {elapsed:.0f} s for {2 * n} runs")
    runs = Table(
        f"spike_detection-{args.category}",
        f"Short EfficientAD-{settings.model_size} trainings on {args.category}, {args.steps} "
        f"steps, learning rate x1000 at step {args.inject_at} in the injected runs",
        ["clean runs flagged", "injected spikes flagged", "median delay, steps", "wall s"],
    )
    runs.add(f"{sum(false_alarms)} of {n}", f"{detected} of {n}",
             statistics.median(delays) if delays else None, round(elapsed))  # fmt: skip
    publish([*replay, runs], args.markdown, name=runs.name)


if __name__ == "__main__":
    main()
