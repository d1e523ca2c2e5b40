"""matplotlib as simtrain draws with it: text is never read as mathtext.

Scenario, variant, record and plan names reach titles, labels and legends; matplotlib read a
name holding two ``$`` (``$x^$``) as a formula and raised a ParseSyntaxException when the PNG
was drawn (a fuzz campaign). Every module that draws imports this one first."""

from __future__ import annotations

from matplotlib import rcParams

rcParams["text.parse_math"] = False
