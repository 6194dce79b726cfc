"""The documentation: a short README whose pages exist, and an API reference whose every
public function says what it takes and what it returns (Args/Returns, Google style).

``mkdocs build --strict`` (in ``make test``) checks the links and renders the pages; this
checks what a build does not: the README's length and the docstrings' sections.
"""

import re

import griffe
import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.unit

API_PAGES = sorted((ROOT / "docs" / "api").glob("*.md"))


def test_the_readme_is_a_front_door_and_its_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    missing = [t for t in targets if not t.startswith("http") and not (ROOT / t).exists()]
    assert targets and not missing, f"README links to missing files: {missing}"
    assert "../shared" not in readme  # nothing a user reads points outside the repository


def _documented_modules() -> list[str]:
    return [
        name for page in API_PAGES for name in re.findall(r"^::: (\S+)", page.read_text(), re.M)
    ]


def _public_functions(package, module_name: str):
    """(dotted name, griffe function) of a module's public functions and of the public
    methods of its public classes: its ``__all__`` where it has one."""
    module = package if module_name == "cvae" else package[module_name.split(".", 1)[1]]
    names = (
        [n if isinstance(n, str) else n.name for n in module.exports]
        if module.exports is not None
        else [n for n in module.members if not n.startswith("_")]
    )
    for name in names:
        member = module.members.get(name)
        if member is None or (member.is_alias and module.exports is None):
            continue
        member = member.final_target if member.is_alias else member
        if member.is_function:
            yield f"{module_name}.{name}", member
        elif member.is_class:
            for method_name, method in member.members.items():
                if (
                    not method_name.startswith("_")
                    and not method.is_alias
                    and method.is_function
                    and "property" not in method.labels
                    and method_name != "setup"
                ):  # flax's set-up hook
                    yield f"{module_name}.{name}.{method_name}", method


def _missing_sections(function) -> list[str]:
    docstring = function.docstring
    if docstring is None:
        return ["a docstring"]
    sections = {section.kind.value for section in docstring.parsed}
    params = [p for p in function.parameters if p.name not in ("self", "cls")]
    returns = function.returns is not None and str(function.returns) != "None"
    missing = []
    if params and "parameters" not in sections:
        missing.append("Args")
    if returns and not sections & {"returns", "yields"}:
        missing.append("Returns")
    return missing


def test_every_public_function_of_the_api_pages_has_args_and_returns():
    assert API_PAGES, "docs/api holds no page"
    package = griffe.load(
        "cvae",
        search_paths=[str(ROOT)],
        docstring_parser="google",
        docstring_options={"warn_missing_types": False},
    )
    checked, problems = 0, []
    for module_name in _documented_modules():
        for name, function in _public_functions(package, module_name):
            checked += 1
            if missing := _missing_sections(function):
                problems.append(f"{name}: no {' or '.join(missing)}")
    assert checked > 100, f"only {checked} functions found: the walk is broken"
    assert not problems, "\n".join(problems)


def test_the_check_sees_a_function_without_sections(tmp_path):
    """The checker itself fails on what it should fail on."""
    (tmp_path / "mod.py").write_text('def f(x) -> int:\n    """Adds."""\n    return x\n')
    function = griffe.load("mod", search_paths=[str(tmp_path)], docstring_parser="google")["f"]
    assert _missing_sections(function) == ["Args", "Returns"]


@pytest.mark.parametrize("page", sorted((ROOT / "docs").glob("*.md")), ids=lambda p: p.name)
def test_pages_speak_to_users(page):
    """Pages say what was run and where, not the story of our work."""
    text = page.read_text()
    assert not re.search(r"\bissue #?\d+|#\d\d\b(?!\d)|this session", text, re.I), page.name
    assert "../shared" not in text
