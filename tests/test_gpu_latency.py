"""The GPU latency benchmark times what the paper times: the last half of the runs."""

import time

import pytest

from benchmarks.gpu_latency import main, time_latency


def test_the_warm_up_half_of_the_runs_is_not_timed():
    calls = []

    def score(image):
        calls.append(image.shape)
        time.sleep(0.2 if len(calls) <= 5 else 0.001)

    figures = time_latency(score, "cpu", runs=10)
    assert len(calls) == 10 and calls[0] == (1, 3, 256, 256)
    assert figures["timed_runs"] == 5
    assert figures["mean_last_half_ms"] < 50  # the five slow warm-up runs are left out
    assert figures["images_per_s"] == pytest.approx(1000 / figures["mean_last_half_ms"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--runs", "1"], "--runs must be at least 2"),
        (["--device", "cpu", "--variants", "fp16"], "fp16 variants need a GPU"),
    ],
)
def test_nonsense_settings_are_refused(monkeypatch, capsys, argv, message):
    monkeypatch.setattr("sys.argv", ["gpu_latency", "--device", "cpu", *argv])
    with pytest.raises(SystemExit):
        main()
    assert message in capsys.readouterr().err
