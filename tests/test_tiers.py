"""Every test module says which tier it is in: ``pytestmark = pytest.mark.unit`` (the fast
tier, ``make test-fast``: no subprocess, no training beyond a few steps) or
``pytest.mark.slow`` (end to end); a slow test in a unit module carries its own mark."""

import ast
import pathlib

import pytest

pytestmark = pytest.mark.unit

TESTS = pathlib.Path(__file__).resolve().parent
TIERS = {"unit", "slow"}


def _declared_tier(module: pathlib.Path) -> str | None:
    """The tier named by the module's top-level ``pytestmark = pytest.mark.<tier>``."""
    for node in ast.parse(module.read_text()).body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and getattr(node.targets[0], "id", None) == "pytestmark"
            and isinstance(node.value, ast.Attribute)
            and node.value.attr in TIERS
        ):
            return node.value.attr
    return None


@pytest.mark.parametrize(
    "module", sorted(TESTS.rglob("test_*.py")), ids=lambda p: str(p.relative_to(TESTS))
)
def test_every_test_module_declares_its_tier(module):
    assert _declared_tier(module) in TIERS, (
        f"{module.name}: add `pytestmark = pytest.mark.unit` (fast, on purpose) or "
        "`pytestmark = pytest.mark.slow` at the top"
    )


def test_every_collected_test_is_in_exactly_one_tier(request):
    untiered = [
        item.nodeid
        for item in request.session.items
        if not {m.name for m in item.iter_markers()} & TIERS
    ]
    assert not untiered, untiered


def test_the_tier_reader_sees_a_module_without_one(tmp_path):
    (tmp_path / "test_x.py").write_text("import pytest\n\ndef test_a():\n    pass\n")
    assert _declared_tier(tmp_path / "test_x.py") is None
