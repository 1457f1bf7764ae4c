"""streamline: layer pruning of decoder-only LLMs (LLM-Streamline), one stage per module."""

__version__ = "0.2.0"
DISTRIBUTION = "llm-streamline"  # the name pip knows it by: "streamline" on PyPI is an unrelated project


def foreign_install() -> str | None:
    """The unrelated PyPI project "streamline" shares this import name: installed beside (or over) this package,
    its files and its `streamline` command would silently replace ours. Say so rather than fail oddly."""
    from importlib import metadata
    from pathlib import Path

    checkout = Path(__file__).resolve().parent.parent
    for other in metadata.distributions(name="streamline"):
        where = Path(getattr(other, "_path", "")).resolve()
        if where.parent == checkout and where.suffix == ".egg-info":
            continue  # build metadata this checkout's own editable install left under its old name: inert
        break
    else:
        return None
    return (
        f"a distribution named 'streamline' ({other.version}) is installed here beside {DISTRIBUTION}: the "
        f"unrelated PyPI project, or this package under its old name; it shares the import name and the "
        f"`streamline` command, so run `pip uninstall -y streamline` and reinstall this one (pip install -e .)"
    )
