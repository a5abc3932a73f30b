"""A recipe's colour is the same in every figure; figures say what they show."""

from __future__ import annotations

import pytest
from matplotlib.colors import to_hex

from ptqsam.instrument.recipe import shipped_recipes
from ptqsam.plots import charts, plot_degradation, plot_sensitivity
from ptqsam.plots.colours import RECIPE_COLOURS, SPARE_COLOURS, recipe_colour


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions draw, in order (read back from their artists)."""
    drawn = []
    real = charts._save

    def keep(fig, out_stem):
        drawn.append(fig)
        return real(fig, out_stem)

    monkeypatch.setattr(charts, "_save", keep)
    return drawn


def _rows(recipes, **extra):
    rows = [{"model": "testbed", "recipe": "float", "bits": "float", "miou": 0.6, "agreement": 1.0,
             "num_prompts": 168, "num_images": 24}]
    for index, recipe in enumerate(recipes):
        rows += [{"model": "testbed", "recipe": recipe, "bits": bits, "miou": 0.5 - 0.01 * index - drop,
                  "agreement": 0.9 - drop, "num_prompts": 168, "num_images": 24, **extra}
                 for bits, drop in (("W8A8", 0.0), ("W4A4", 0.1))]
    return rows


def _line_colours(fig) -> dict[str, str]:
    return {line.get_label(): to_hex(line.get_color()) for line in fig.axes[0].get_lines()
            if not line.get_label().startswith("_")}


def test_a_recipe_keeps_its_colour_in_figures_of_different_recipe_sets(tmp_path, figures):
    plot_degradation(_rows(["minmax", "ptq4sam"]), tmp_path / "a")
    plot_degradation(_rows(["ptq4sam", "ptq4vit", "my-recipe.yaml"]), tmp_path / "b")
    first, second = (_line_colours(fig) for fig in figures)
    # ptq4sam is second alphabetically in the first figure, first in the second: the same colour
    assert first["ptq4sam"] == second["ptq4sam"] == to_hex(recipe_colour("ptq4sam"))
    assert len(set(second.values())) == len(second)
    assert first["minmax"] != first["ptq4sam"] and second["my-recipe.yaml"] in {to_hex(c) for c in SPARE_COLOURS}


def test_every_shipped_recipe_has_a_colour_of_its_own_and_other_names_a_spare_one():
    assert set(RECIPE_COLOURS) == set(shipped_recipes())
    shipped = {to_hex(c) for c in RECIPE_COLOURS.values()}
    assert len(shipped) == len(RECIPE_COLOURS) and not shipped & {to_hex(c) for c in SPARE_COLOURS}
    for name in ("my.yaml", "ptq4vit[own-float]", "mixed-w5a5"):
        assert recipe_colour(name) in SPARE_COLOURS and recipe_colour(name) == recipe_colour(str(name))


def test_degradation_labels_say_what_agreement_is_and_what_the_bars_are(tmp_path, figures):
    intervals = {"miou_ci_low": 0.3, "miou_ci_high": 0.55}
    plot_degradation(_rows(["minmax"], **intervals), tmp_path / "ci")
    spread = {"miou_min": 0.35, "miou_max": 0.52, "agreement_min": 0.7, "agreement_max": 0.95, "calib_sets": 3}
    plot_degradation(_rows(["minmax"], **spread), tmp_path / "sets")
    with_ci, with_sets = figures
    assert with_ci.get_suptitle() == "Degradation against bit-width (testbed; 168 instances in 24 images)"
    miou, agreement = with_ci.axes[:2]
    assert "mean IoU with the float model's masks" in agreement.get_ylabel()
    assert "95% bootstrap interval over the instances" in miou.get_title() and "bars" not in agreement.get_title()
    assert len(miou.containers) == 1 and not agreement.containers  # error bars where the rows have them only
    assert all("min … max over 3 calibration sets" in ax.get_title() for ax in with_sets.axes[:2])


def test_sensitivity_title_names_the_cell(tmp_path, figures):
    plot_sensitivity({"a.weight": 0.1, "b.input": 0.2}, tmp_path / "s", subject="ptq4sam W4A4; 4 calibration images")
    assert figures[0].axes[0].get_title().endswith("\nptq4sam W4A4; 4 calibration images")


def test_one_calibration_set_gives_bootstrap_bars_not_empty_ranges(tmp_path, figures):
    single = {"miou_min": 0.4, "miou_max": 0.4, "calib_sets": 1, "miou_ci_low": 0.3, "miou_ci_high": 0.55}
    plot_degradation([{**row, "miou_min": row["miou"], "miou_max": row["miou"]} if row["recipe"] != "float" else row
                      for row in _rows(["minmax"], **single)], tmp_path / "one")
    assert "bootstrap interval" in figures[0].axes[0].get_title()
