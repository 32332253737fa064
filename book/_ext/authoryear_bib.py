"""Bibliography labels in the same author-year form as the in-text citations ("Bergmann et al., 2020").

sphinxcontrib-bibtex cites author-year in the text (``bibtex_reference_style: author_year``), but the
bibliography's own labels come from the pybtex formatting style, ``[BHVS17]`` for ``alpha``.  This
local extension registers a pybtex label style that writes "Author, year" / "A and B, year" /
"A et al., year", and a formatting style ``authoryear`` (unsrt's entries, those labels) that
``_config.yml`` selects with ``bibtex_default_style``.
"""

from __future__ import annotations

import re

from pybtex.plugin import register_plugin
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle


def _last(person) -> str:
    return re.sub(r"[{}\\]", "", " ".join(person.last_names)) or "?"


class AuthorYearLabelStyle(BaseLabelStyle):
    def format_labels(self, sorted_entries):
        seen: dict[str, int] = {}
        for entry in sorted_entries:
            people = entry.persons.get("author") or entry.persons.get("editor") or []
            names = [_last(p) for p in people]
            if not names:
                who = re.sub(r"[{}]", "", entry.fields.get("title", "?")).split(":")[0][:30]
            elif len(names) == 1:
                who = names[0]
            elif len(names) == 2:
                who = f"{names[0]} and {names[1]}"
            else:
                who = f"{names[0]} et al."
            label = f"{who}, {entry.fields.get('year', 'n.d.')}"
            seen[label] = seen.get(label, 0) + 1
            yield label if seen[label] == 1 else f"{label}{chr(ord('a') + seen[label] - 1)}"


class AuthorYearStyle(UnsrtStyle):
    default_label_style = "authoryear"
    default_sorting_style = "author_year_title"


def setup(app):
    register_plugin("pybtex.style.labels", "authoryear", AuthorYearLabelStyle)
    register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
