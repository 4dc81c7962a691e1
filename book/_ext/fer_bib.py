"""Bibliography labels in the author-year form the text's citations use.

The default pybtex style ("alpha") labels entries like ``[RBF+19]`` while ``{cite}`` in the text
reads "Racoviteanu et al. [2019]"; this style labels them "Racoviteanu et al., 2019" and sorts
them by author and year. Registered as the pybtex style ``fer_authoryear`` (see _config.yml).
"""
from pybtex.plugin import register_plugin
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle


def _last(person) -> str:
    return " ".join(person.last_names).replace("{", "").replace("}", "")


class AuthorYearLabelStyle(BaseLabelStyle):
    def format_labels(self, sorted_entries):
        for entry in sorted_entries:
            people = entry.persons.get("author") or entry.persons.get("editor") or []
            if not people:
                names = entry.fields.get("title", entry.key)
            elif len(people) == 1:
                names = _last(people[0])
            elif len(people) == 2:
                names = f"{_last(people[0])} and {_last(people[1])}"
            else:
                names = f"{_last(people[0])} et al."
            yield f"{names}, {entry.fields.get('year', 'n.d.')}"


class AuthorYearStyle(UnsrtStyle):
    default_label_style = AuthorYearLabelStyle
    default_sorting_style = "author_year_title"


def setup(app):
    register_plugin("pybtex.style.formatting", "fer_authoryear", AuthorYearStyle)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
