"""Mixed precision: what a bit assignment costs, exact bit allocation under budgets, recipes with
explicit bits per site, accuracy control and cost-against-accuracy tables."""

from ptqsam.mixed_precision.allocation import Allocation, Budget, Choice, allocate, group_choices, parse_budget
from ptqsam.mixed_precision.control import (ControlResult, ControlStep, HeldOutMeasure, accuracy_control,
                                            ranked_groups)
from ptqsam.mixed_precision.costs import COST_KINDS, ModelCosts, model_costs
from ptqsam.mixed_precision.pareto import RecipeRun, pareto_rows, write_pareto
from ptqsam.mixed_precision.recipes import assemble, mixed_recipe, write_recipe

__all__ = [
    "COST_KINDS", "Allocation", "Budget", "Choice", "ControlResult", "ControlStep", "HeldOutMeasure", "ModelCosts",
    "RecipeRun", "accuracy_control", "allocate", "assemble", "group_choices", "mixed_recipe", "model_costs",
    "pareto_rows", "parse_budget", "ranked_groups", "write_pareto", "write_recipe",
]
