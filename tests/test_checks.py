"""The one check of a network's IFE criterion and ratios, used by Flax, Keras and the config."""

import pytest

from ife_jax.ops._checks import check_ife


@pytest.mark.parametrize("ife", [None, "curvature", "entropy"])
def test_known_criteria_and_ratios_in_the_closed_unit_interval_pass(ife):
    check_ife(ife, (0.0, 0.5, 1.0), 3, name="net")
    check_ife(ife, None, name="net")


@pytest.mark.parametrize(
    "ife, ratios, n, match",
    [
        (
            "sharpness",
            (0.5,),
            1,
            "net: ife must be None, 'curvature' or 'entropy'; got 'sharpness'",
        ),
        ("entropy", (0.5,), 2, r"net: ratios must have 2 entries; got \(0.5,\)"),
        ("entropy", (0.5, 1.5), 2, r"ratios must each lie in \[0, 1\].*1.5"),
        ("entropy", (-0.1, 0.5), 2, r"ratios must each lie in \[0, 1\].*-0.1"),
        ("entropy", (0.5, float("nan")), 2, r"ratios must each lie in \[0, 1\].*nan"),
        ("entropy", (0.5, "0.5"), 2, r"ratios must be numbers"),
        ("entropy", (True, 0.5), 2, r"ratios must be numbers"),
    ],
)
def test_bad_criterion_or_ratios_raise_naming_the_value(ife, ratios, n, match):
    with pytest.raises(ValueError, match=match):
        check_ife(ife, ratios, n, name="net")
