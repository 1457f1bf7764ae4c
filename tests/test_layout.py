"""One Variant and Paths model (streamline/layout.py): names are built and parsed there only, and every path the
workflow's rules use comes from it."""

import itertools
import re
from pathlib import Path

import pytest

from streamline import layout
from streamline.layout import Paths, Variant

ROOT = Path(__file__).resolve().parent.parent
EVERY_VARIANT = layout.variants(list(layout.NETS), [1, 2, 3, 12], list(layout.LOSSES), list(layout.STARTS))


def test_every_variant_name_parses_back_to_itself():
    # transformer x 4 k, ffn, swiglu, linear's patch: 5 loss/start pairs; none, linear (training-free)
    assert len(EVERY_VARIANT) == 4 * 5 + 3 * 5 + 2
    for v in EVERY_VARIANT:
        assert Variant.parse(v.name) == v
        assert re.fullmatch(layout.variant_pattern(trained=False), v.name)
        assert layout.parse_replacement(v.replacement) == (v.net, v.k)
    assert [v.name for v in layout.variants(["transformer", "none"], [2], ["mse", "kd"], ["inherit", "mse"])] == [
        "transformerx2-mse",
        "transformerx2-kd",
        "transformerx2-mse+kd",
        "none",
    ]


@pytest.mark.parametrize(
    "name",
    [
        "transformerx1-mse",
        "transformerx0-llm",
        "transformerx02-kd",
        "ffnx2-mse",
        "none-mse",
        "linearx2-kd",
        "linear-kd-r2",  # a trained linear patch in rounds is not built
        "transformer-mse+mse",
        "transformer",
        "ffn-distil",
        "transformer-kd+mse",
    ],
)
def test_names_that_are_no_variant_are_refused(name):
    with pytest.raises(ValueError):
        Variant.parse(name)
    assert not re.fullmatch(layout.variant_pattern(trained=False), name)


def test_inconsistent_variants_cannot_be_built():
    for args in (
        ("none", 1, None),
        ("transformer", 0, "mse"),
        ("ffn", 2, "mse"),
        ("linear", 1, "mse"),
        ("none", 0, "kd"),
        ("transformer", 1, None),
        ("transformer", 1, "kd", "both"),
    ):
        with pytest.raises(ValueError):
            Variant(*args)


def test_scores_and_pairs_names_invert():
    for k in (0, 1, 2, 13):
        assert layout.kept_of(layout.scores_name(k)) == k
        if k:
            assert layout.kept_of(layout.pairs_name(k)) == k
            assert re.fullmatch(layout.PAIRS_RE, layout.pairs_name(k))
        assert re.fullmatch(layout.SCORES_RE, layout.scores_name(k))
    assert not re.fullmatch(layout.SCORES_RE, "scores_k1") and not re.fullmatch(layout.PAIRS_RE, "pairs_k1")


def test_paths_are_the_artifact_contract():
    p = Paths("M", 8)
    staged = Variant.parse("transformerx2-mse+kd")
    assert p.model_out(Variant.parse("none")) == "results/M/n8/none/init"
    assert p.model_out(staged) == "results/M/n8/transformerx2-mse+kd/model"
    assert p.model_out(staged.upstream) == "results/M/n8/transformerx2-mse/model"
    assert p.init(staged.replacement) == "results/M/n8/transformerx2/init"
    assert p.scores(layout.scores_name(2)) == "results/M/n8/scores_k2.json"
    assert p.pairs(layout.pairs_name(1)) == "results/M/n8/pairs.json"
    assert Paths("{model}").eval("{variant}") == "results/{model}/n{n}/{variant}/eval.json"  # a rule's pattern


def _code_lines(path: Path):
    for number, line in enumerate(path.read_text().splitlines(), 1):
        code = line.split("#", 1)[0]
        if code.strip():
            yield number, code


def test_no_rule_spells_a_path_of_its_own():
    """Paths live in layout.py: a rule file holds no results/, resources/ or logs/ literal."""
    files = [ROOT / "workflow/Snakefile", *sorted((ROOT / "workflow/rules").glob("*.smk"))]
    found = [
        f"{f.name}:{n}: {code.strip()}"
        for f in files
        for n, code in _code_lines(f)
        if re.search(r"[\"'](results|resources|logs)/", code)
    ]
    assert not found, found


def test_no_variant_name_is_parsed_outside_layout():
    pattern = re.compile(
        r"(ends|starts)with\([\"'](mse|kd|llm|transformer)|rpartition\([\"'](\+|x|_k)"
        r"|replace\([\"'](pairs|scores)|split\([\"'](\+|-)"
    )
    files = [
        f
        for f in itertools.chain(
            (ROOT / "streamline").rglob("*.py"), (ROOT / "workflow").rglob("*.smk"), (ROOT / "benchmarks").glob("*.py")
        )
        if f.name != "layout.py"
    ]
    found = [f"{f.relative_to(ROOT)}:{n}" for f in files for n, code in _code_lines(f) if pattern.search(code)]
    assert not found, found
