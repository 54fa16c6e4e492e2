"""The package map in docs/ARCHITECTURE.md and the README's map of the code name every package folder, and
only folders that exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("engine_service", "tokenizer_service", "router", "pagoda")


def package_folders() -> set[str]:
    """Every folder of the four packages that holds Python, generated stubs (…/v1) aside."""
    folders = set()
    for top in PACKAGES:
        for init in (REPO / top).rglob("__init__.py"):
            folder = init.parent.relative_to(REPO).as_posix()
            if "__pycache__" not in folder and not folder.endswith("/v1"):
                folders.add(folder + "/")
    return folders


def architecture_map() -> set[str]:
    """The folders of the code block under "## Package map", two spaces of indent a level."""
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    block = text.split("## Package map", 1)[1].split("```", 2)[1]
    folders, parents = set(), []
    for line in block.splitlines():
        match = re.match(r"( *)(\S+/)", line)
        if not match:
            continue
        depth = len(match[1]) // 2
        parents[depth:] = [match[2]]
        folders.add("".join(parents))
    return folders


def test_architecture_package_map_matches_the_tree():
    assert architecture_map() == package_folders()


def test_readme_map_names_every_package_folder():
    text = (REPO / "README.md").read_text()
    section = text.split("## Map of the code", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([a-z_]+(?:/[a-z_]+)*/)`", section))
    subfolders = {"discovery/", "policies/"}  # named inside the router/upstream/ line
    named = (named - subfolders) | {f"router/upstream/{sub}" for sub in named & subfolders}
    assert package_folders() - named == set()
    assert {folder for folder in named if not (REPO / folder).is_dir()} == set()
