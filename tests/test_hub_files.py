"""The full profile fetches only what runs: one list of patterns per loader (`config.HUB_FILES`);
the Space's `preload_from_hub` in README's front matter names only files whose names are written
down somewhere we can point at (a guessed name fails the Space's build); the rest is fetched by
pattern at the first start, whatever the repository calls it, and a pattern nothing matches is
said in words."""

import fnmatch
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from foresight.config import HUB_FILES, ModelIds
from foresight.models import MissingHubFiles, load_models

ROOT = Path(__file__).resolve().parent.parent
IDS = ModelIds()
# Which parts of HUB_FILES come from which repository.
REPO_PARTS = {IDS.vlm: ["vlm"], IDS.vision: ["vision"], IDS.video: ["video", "text_encoder"]}
DIFFUSERS_LAYOUT = ("diffusers' own example loads this repository with LTXConditionPipeline "
                    "(pipelines/ltx/pipeline_ltx_condition.py), which reads model_index.json and each part's "
                    "config by diffusers' fixed names")
# Every file the front matter may preload by name, and where that name is written down.
CITED = {
    IDS.video_single_file: "the authors' configs/ltxv-2b-0.9.8-distilled.yaml (checkpoint_path), downloaded from "
                           "Lightricks/LTX-Video by their ltx_video/inference.py",
    IDS.video_upscaler: "the authors' configs/ltxv-2b-0.9.8-distilled.yaml (spatial_upscaler_model_path), downloaded "
                        "from Lightricks/LTX-Video by their ltx_video/inference.py",
    **{f"{IDS.video}/{name}": DIFFUSERS_LAYOUT for name in (
        "model_index.json", "scheduler/scheduler_config.json", "transformer/config.json", "vae/config.json",
        "text_encoder/config.json")},
}
# What the front matter once named by guess (docs/PITFALLS.md): names the tiny stand-ins do not have.
GUESSES = {IDS.video: ["text_encoder/model-00001-of-00004.safetensors", "tokenizer/spiece.model",
                       "tokenizer/added_tokens.json"]}


def preloaded() -> dict[str, list[str] | None]:
    """README's front matter: `preload_from_hub`, repository -> the files it names (None: all of it)."""
    front = ROOT.joinpath("README.md").read_text().split("---")[1]
    lines = front.split("preload_from_hub:")[1].splitlines()
    entries = [line.strip()[2:].split() for line in lines if line.strip().startswith("- ")]
    return {repo: files[0].split(",") if files else None for repo, *files in entries}


def listed(part: str, name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in HUB_FILES[part])


def test_the_spaces_preload_names_only_cited_files_of_what_runs():
    preload = preloaded()
    owner, repo, single_file = IDS.video_single_file.split("/", 2)
    upscaler = IDS.video_upscaler.split("/", 2)[2]
    assert preload.pop(f"{owner}/{repo}") == [single_file, upscaler], \
        "the LTX file the transformer and VAE come from, and the second pass's upscaler"
    assert preload.pop(IDS.vlm) is None, "Qwen's repository whole: every file of it runs, and no name is guessed"
    bridges = [p for p in (ROOT / "weights").iterdir() if (p / "bridge.safetensors").exists()]
    assert set(preload) == ({IDS.video, IDS.vision} if bridges else {IDS.video}), "DINOv2 only with a bridge"
    assert IDS.video_single_file in CITED and IDS.video_upscaler in CITED
    for repo_id, files in preload.items():
        for name in files:
            assert f"{repo_id}/{name}" in CITED, f"{repo_id}/{name} is not a name we can cite: fetch it by pattern"
            assert any(listed(part, name) for part in REPO_PARTS[repo_id]), f"{repo_id}/{name} is read by no loader"


def only_listed(source: Path, target: Path, parts_by_folder: dict[str, list[str]]) -> None:
    """A models folder holding only the files HUB_FILES names (tiny stand-ins in the real layout)."""
    for folder, parts in parts_by_folder.items():
        for path in (source / folder).rglob("*"):
            name = path.relative_to(source / folder).as_posix()
            if path.is_file() and any(listed(part, name) for part in parts):
                (target / folder / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target / folder / name)
    for single in (IDS.video_single_file, IDS.video_upscaler):
        (target / single).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / single, target / single)


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
    """The hub cannot be reached here: its two download calls answer from a folder of the tiny
    stand-ins, filtered by the patterns as the hub filters them, and say what was asked of them.
    The stand-ins' T5 and tokenizer files are named otherwise than the real repository's (what the
    front matter once guessed): fetched by pattern, they load all the same."""
    import huggingface_hub

    hub = tmp_path / "hub"
    shutil.copytree(models.settings.models_dir, hub)
    for repo, names in GUESSES.items():
        assert not any((hub / repo / name).exists() for name in names), "a name the real repository has, not these"
    asked = {}

    def snapshot_download(repo_id, allow_patterns):  # as the hub does: the repository's files that match
        asked[repo_id] = sorted(allow_patterns)
        snapshot = tmp_path / "snapshots" / repo_id
        for path in (hub / repo_id).rglob("*"):
            name = path.relative_to(hub / repo_id).as_posix()
            if path.is_file() and any(fnmatch.fnmatch(name, pattern) for pattern in allow_patterns):
                (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, snapshot / name)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, name: str(hub / repo / name))
    settings = replace(models.settings, models_dir=None, text_mode=False)
    assert load_models(settings, log=lambda m: None).modes == ["fused"]
    assert asked == {IDS.vlm: sorted(HUB_FILES["vlm"]), IDS.vision: sorted(HUB_FILES["vision"]),
                     IDS.video: sorted(HUB_FILES["video"])}, "with a bridge and no text mode: no T5"
    asked.clear()
    assert load_models(replace(settings, weights_dir=tmp_path / "no-bridges"), log=lambda m: None).modes == ["text"]
    assert asked == {IDS.vlm: sorted(HUB_FILES["vlm"]), IDS.video: sorted(HUB_FILES["video"] +
                                                                          HUB_FILES["text_encoder"])}, \
        "no bridge: T5 for text mode, and no DINOv2"

    shutil.rmtree(hub / IDS.video / "tokenizer")  # a repository without a file a loader reads
    shutil.rmtree(tmp_path / "snapshots")
    with pytest.raises(MissingHubFiles, match=f"{IDS.video} on the Hugging Face hub has no file matching tokenizer/"):
        load_models(replace(settings, weights_dir=tmp_path / "no-bridges"), log=lambda m: None)
