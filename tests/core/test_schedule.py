import pytest

from threestudio.utils.schedule import C, milestone_value


def test_constant():
    assert C(0.5, 0, 1000) == 0.5


def test_linear_between_steps_and_clamped():
    spec = [100, 1.0, 3.0, 300]
    assert C(spec, 0, 0) == 1.0
    assert C(spec, 0, 100) == 1.0
    assert C(spec, 0, 200) == pytest.approx(2.0)
    assert C(spec, 0, 300) == 3.0
    assert C(spec, 0, 10_000) == 3.0


def test_three_values_start_at_step_zero():
    assert C([0.0, 10.0, 100], 0, 50) == pytest.approx(5.0)


def test_piecewise_schedule():
    # MVDream-threestudio's max_step_percent: 0.98 -> 0.5 by step 5000, -> 0.02 by step 8000
    spec = [0, 0.98, 0.5, 5000, 0.02, 8000]
    assert C(spec, 0, 0) == pytest.approx(0.98)
    assert C(spec, 0, 2500) == pytest.approx(0.74)
    assert C(spec, 0, 5000) == pytest.approx(0.5)
    assert C(spec, 0, 6500) == pytest.approx(0.26)
    assert C(spec, 0, 9000) == pytest.approx(0.02)


def test_float_end_step_counts_epochs():
    assert C([0, 0.0, 1.0, 4.0], 2, 999999) == pytest.approx(0.5)


def test_bad_schedule_is_rejected():
    with pytest.raises(ValueError, match="start_step, start_value, end_value, end_step"):
        C([1, 2, 3, 4, 5], 0, 0)
    with pytest.raises(ValueError, match="must be a number or a list"):
        C("fast", 0, 0)


def test_milestones():
    assert [milestone_value([64, 256], [5000], s) for s in (0, 4999, 5000, 9000)] == [64, 64, 256, 256]
    with pytest.raises(ValueError, match="2 values need 1 milestones"):
        milestone_value([1, 2], [3, 4], 0)
