import pytest

from tamperaudit.stats import rate, wilson_interval


@pytest.mark.parametrize(
    "successes,trials,low,high",
    [
        (0, 10, 0.0, 0.2775),  # reference values from the closed form
        (5, 10, 0.2366, 0.7634),
        (10, 10, 0.7225, 1.0),
        (68, 100, 0.5834, 0.7633),
    ],
)
def test_wilson_matches_reference_values(successes, trials, low, high):
    got_low, got_high = wilson_interval(successes, trials)
    assert got_low == pytest.approx(low, abs=5e-4)
    assert got_high == pytest.approx(high, abs=5e-4)


def test_wilson_with_no_trials_is_the_whole_range():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert rate(0, 0).rate is None


def test_wilson_rejects_impossible_counts():
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_interval_narrows_with_more_trials():
    small = wilson_interval(5, 10)
    large = wilson_interval(50, 100)
    assert large[1] - large[0] < small[1] - small[0]
