"""matplotlib as simtrain draws with it: names are never read as mathtext.

Scenario, variant, record and plan names reach titles, labels, legends and tick labels;
matplotlib read a name holding two ``$`` (``$x^$``) as a formula and raised a
ParseSyntaxException when the PNG was drawn (a fuzz campaign). Turning mathtext off for the
whole process printed the log axes' tick labels, which matplotlib writes as mathtext
(``$\\mathdefault{10^{5}}$``), as that text (a review). So every writer of a PNG calls
:func:`plain_text` on the figure first: its texts are plain, but what the axes' formatters
write as mathtext on purpose."""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import Formatter, LogFormatterMathtext, ScalarFormatter


def writes_mathtext(formatter: Formatter) -> bool:
    """Whether ``formatter``'s tick labels are mathtext: a log axis's (LogFormatterMathtext and
    its LogFormatterSciNotation), a ScalarFormatter's with useMathText."""
    return isinstance(formatter, LogFormatterMathtext) or (
        isinstance(formatter, ScalarFormatter) and formatter.get_useMathText()
    )


def plain_text(fig: Figure) -> None:
    """Every text of ``fig`` (titles, labels, legends, annotations, tick labels given as names)
    read as plain text, but the tick labels of formatters that write mathtext
    (:func:`writes_mathtext`) and the axes' offset texts."""
    formatted: set[int] = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            formatted.add(id(axis.offsetText))
            for ticks, formatter in (
                (axis.get_major_ticks(), axis.get_major_formatter()),
                (axis.get_minor_ticks(), axis.get_minor_formatter()),
            ):
                if writes_mathtext(formatter):
                    formatted.update(id(t) for tick in ticks for t in (tick.label1, tick.label2))
    for text in fig.findobj(Text):
        if id(text) not in formatted:
            text.set_parse_math(False)
