"""The full profile fetches only what runs: one list of files per loader (`config.HUB_FILES`), the
Space's `preload_from_hub` in README's front matter agreeing with it, and loaders that read
nothing else."""

import fnmatch
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from foresight.config import HUB_FILES, ModelIds
from foresight.models import load_models

ROOT = Path(__file__).resolve().parent.parent
IDS = ModelIds()
# Which parts of HUB_FILES come from which repository.
REPO_PARTS = {IDS.vlm: ["vlm"], IDS.vision: ["vision"], IDS.video: ["video", "text_encoder"]}


def preloaded() -> dict[str, list[str]]:
    """README's front matter: `preload_from_hub`, repository -> the files it names."""
    front = ROOT.joinpath("README.md").read_text().split("---")[1]
    lines = front.split("preload_from_hub:")[1].splitlines()
    entries = [line.strip()[2:].split() for line in lines if line.strip().startswith("- ")]
    return {repo: files[0].split(",") for repo, *files in entries}


def listed(part: str, name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in HUB_FILES[part])


def test_the_spaces_preload_names_what_the_loaders_read_and_nothing_else():
    preload = preloaded()
    owner, repo, single_file = IDS.video_single_file.split("/", 2)
    assert preload.pop(f"{owner}/{repo}") == [single_file], "the one LTX file the transformer and VAE come from"
    bridges = [p for p in (ROOT / "weights").iterdir() if (p / "bridge.safetensors").exists()]
    expected = {repo for repo in REPO_PARTS if repo != IDS.vision or bridges}
    assert set(preload) == expected, "DINOv2 only with a bridge (weights/ holds none)"
    for repo, files in preload.items():
        parts = REPO_PARTS[repo]
        assert all(any(listed(part, name) for part in parts) for name in files), (repo, files)
        for part in parts:
            assert all(any(fnmatch.fnmatch(name, pattern) for name in files) for pattern in HUB_FILES[part]), \
                f"every file {part} reads is preloaded"


def only_listed(source: Path, target: Path, parts_by_folder: dict[str, list[str]]) -> None:
    """A models folder holding only the files HUB_FILES names (tiny stand-ins in the real layout)."""
    for folder, parts in parts_by_folder.items():
        for path in (source / folder).rglob("*"):
            name = path.relative_to(source / folder).as_posix()
            if path.is_file() and any(listed(part, name) for part in parts):
                (target / folder / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target / folder / name)
    single = source / IDS.video_single_file
    (target / IDS.video_single_file).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(single, target / IDS.video_single_file)


def test_the_loaders_read_only_listed_files_and_load_from_them_alone(models, tmp_path):
    tiny = models.settings.models_dir
    watched, opened = [str(tiny)], []

    def watch(event, args):
        if watched and event == "open" and isinstance(args[0], (str, os.PathLike)) and \
                str(args[0]).startswith(watched[0]):
            opened.append(Path(args[0]).relative_to(tiny).as_posix())

    sys.addaudithook(watch)  # Python's own opens (configs, tokenizers); weights are memory-mapped by Rust
    try:
        load_models(models.settings, log=lambda m: None)
    finally:
        watched.clear()  # an audit hook stays for the process: it watches nothing from here on
    assert "Qwen/Qwen2.5-VL-7B-Instruct/config.json" in opened
    for name in {name for name in opened if not name.startswith("weights/")}:
        repo = next(repo for repo in REPO_PARTS if name.startswith(repo + "/"))
        assert any(listed(part, name[len(repo) + 1:]) for part in REPO_PARTS[repo]), f"{name} is read but not listed"
    full = tmp_path / "full"
    only_listed(tiny, full, {repo: parts for repo, parts in REPO_PARTS.items()})
    loaded = load_models(replace(models.settings, models_dir=full), log=lambda m: None)
    assert loaded.modes == ["fused", "text"], "weights included: everything loads from the listed files"
    lean = tmp_path / "lean"  # no text mode, so no T5: its files need not be there
    only_listed(tiny, lean, {IDS.vlm: ["vlm"], IDS.vision: ["vision"], IDS.video: ["video"]})
    assert load_models(replace(models.settings, models_dir=lean, text_mode=False), log=lambda m: None).modes == \
        ["fused"]
    with pytest.raises(Exception):
        load_models(replace(models.settings, models_dir=lean), log=lambda m: None)


def test_from_the_hub_each_loader_asks_only_for_the_files_of_what_runs(models, tmp_path, monkeypatch):
    """The hub cannot be reached here: its two download calls answer from a folder of the listed
    files, and say what was asked of them."""
    import huggingface_hub

    only_listed(models.settings.models_dir, tmp_path, REPO_PARTS)
    asked = {}

    def snapshot_download(repo_id, allow_patterns):
        asked[repo_id] = sorted(allow_patterns)
        return str(tmp_path / repo_id)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, name: str(tmp_path / repo / name))
    hub = replace(models.settings, models_dir=None, text_mode=False)
    assert load_models(hub, log=lambda m: None).modes == ["fused"]
    assert asked == {IDS.vlm: sorted(HUB_FILES["vlm"]), IDS.vision: sorted(HUB_FILES["vision"]),
                     IDS.video: sorted(HUB_FILES["video"])}, "with a bridge and no text mode: no T5"
    asked.clear()
    load_models(replace(hub, weights_dir=tmp_path / "no-bridges"), log=lambda m: None)
    assert asked == {IDS.vlm: sorted(HUB_FILES["vlm"]), IDS.video: sorted(HUB_FILES["video"] +
                                                                          HUB_FILES["text_encoder"])}, \
        "no bridge: T5 for text mode, and no DINOv2"
