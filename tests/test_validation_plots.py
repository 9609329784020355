"""Science validation verdicts and their figure: targets applied to hand-made metrics."""

from __future__ import annotations

import io
import math

import matplotlib.colors
import matplotlib.image

from dcflow.validation_plots import (
    FAIL_COLOUR,
    PASS_COLOUR,
    SCIENCE_TARGETS,
    target_verdicts,
    validation_summary_figure,
)

VISITS = {
    "1001": {
        "band": "g",
        "astrom_rms_mas": 12.0,
        "mag_rms_mmag": 8.0,
        "mag_median_mmag": -4.9,
        "completeness": 0.97,
    },
    "1002": {
        "band": "r",
        "astrom_rms_mas": 25.0,  # fails <= 20 mas
        "mag_rms_mmag": math.nan,  # no bright star: never a pass
        "mag_median_mmag": 5.1,  # fails |x| <= 5 mmag
        "completeness": 0.95,  # on the limit: passes >= 0.95
    },
}


def test_verdicts_follow_each_target_bound():
    verdicts = target_verdicts(VISITS)
    assert verdicts["1001"] == dict.fromkeys((t.metric for t in SCIENCE_TARGETS), True)
    assert verdicts["1002"] == {
        "astrom_rms_mas": False,
        "mag_rms_mmag": False,
        "mag_median_mmag": False,
        "completeness": True,
    }


def test_summary_figure_draws_failures_red_and_passes_green():
    figure = validation_summary_figure(VISITS)
    titles = [ax.get_title() for ax in figure.axes]
    assert "target <= 20 mas: 1/2 visits pass" in titles[0]
    assert "target >= 0.95: 2/2 visits pass" in titles[3]
    colours = [
        [matplotlib.colors.to_hex(bar.get_facecolor()) for bar in ax.patches] for ax in figure.axes
    ]
    assert colours == [
        [PASS_COLOUR, FAIL_COLOUR],
        [PASS_COLOUR, FAIL_COLOUR],
        [PASS_COLOUR, FAIL_COLOUR],
        [PASS_COLOUR, PASS_COLOUR],
    ]
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    pixels = matplotlib.image.imread(io.BytesIO(buffer.getvalue()), format="png")
    assert pixels.shape[0] >= 300 and pixels[..., :3].std() > 0.05
