"""One colour per recipe, the same in every figure and every sweep.

The shipped recipes have fixed colours (:data:`RECIPE_COLOURS`; the demo's three keep the colours of
its published figure); any other name (a recipe file, an ``[own-float]`` variant, an allocated
mixed-precision recipe) gets one of the :data:`SPARE_COLOURS` chosen by a hash of the name (CRC-32,
the same in every process), so it never takes a shipped recipe's colour. A recipe's colour never
depends on which other recipes a figure shows.
"""

from __future__ import annotations

import zlib

#: the colours of the shipped recipes (matplotlib's tab10, then ColorBrewer's Dark2)
RECIPE_COLOURS = {
    "minmax": "tab:blue", "ptq4sam": "tab:orange", "ptq4vit": "tab:green", "ptq4sam-wide-tau": "tab:red",
    "log-sqrt2": "tab:purple", "repq-vit": "tab:brown", "gptq": "tab:pink", "qdrop": "tab:gray",
    "ptq4sam-l": "tab:olive", "saq-sam": "tab:cyan", "ahcptq": "#1b9e77", "brecq": "#d95f02",
    "adaround": "#7570b3", "ptq4sam-l-reference-bug": "#e7298a",
}
#: the colours of every other recipe name (Dark2's others, two of Paired's, navy): none is a shipped one's
SPARE_COLOURS = ("#66a61e", "#e6ab02", "#a6761d", "#6a3d9a", "#b15928", "#000080")


def recipe_colour(recipe: str) -> str:
    """The colour of ``recipe`` (a name as reports show it) in every figure."""
    if recipe in RECIPE_COLOURS:
        return RECIPE_COLOURS[recipe]
    return SPARE_COLOURS[zlib.crc32(recipe.encode("utf-8")) % len(SPARE_COLOURS)]
