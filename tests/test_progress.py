"""What long jobs print off a terminal (cvae.progress): the cadence of their lines and the
time spans they quote."""

import pytest

from cvae import progress

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "seconds, said",
    [(0.4, "0 s"), (119, "119 s"), (120, "2 min"), (7199, "120 min"), (7200, "2.0 h")],
)
def test_a_duration_reads_in_seconds_minutes_or_hours(seconds, said):
    assert progress.duration(seconds) == said


@pytest.mark.parametrize("total, every", [(1, 1), (10, 1), (15, 2), (150, 15), (151, 16)])
def test_about_ten_lines_a_loop(total, every):
    assert progress.log_every(total) == every
    assert 1 <= -(-total // every) <= 10
