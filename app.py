"""Foresight's web page: drop an image, watch the model think and the future render.

    python app.py [--profile tiny|full] [--host H] [--port P] [--share] [--preset fast|default|high]

Every flag has an environment variable (FORESIGHT_PROFILE, FORESIGHT_HOST, FORESIGHT_PORT,
FORESIGHT_SHARE, FORESIGHT_PRESET) so a Hugging Face Space can set them. This file is UI only:
it turns the pipeline's events (foresight/pipeline.py) into component updates.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio loads: no telemetry unless asked
import gradio as gr  # noqa: E402
from PIL import Image, UnidentifiedImageError  # noqa: E402

from foresight.config import PRESETS  # noqa: E402
from foresight.events import decode_frame  # noqa: E402
from foresight.inputs import MAX_QUESTION_CHARS  # noqa: E402

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
OUTPUT_DIR = Path(os.environ.get("FORESIGHT_OUTPUTS", Path(tempfile.gettempdir()) / "foresight-outputs"))
MAX_OUTPUT_RUNS = int(os.environ.get("FORESIGHT_MAX_OUTPUT_RUNS", 30))  # older videos are deleted
CACHE_TTL_S = int(os.environ.get("FORESIGHT_CACHE_TTL", 3600))  # Gradio's copies of previews and videos
MODE_CHOICES = [("Auto", "auto"), ("Fused (bridge)", "fused"), ("Text (T5)", "text")]
# Gradio sizes gallery columns by item count (one run = one full-width tile): keep thumbnails small.
CSS = "#history .grid-container { --grid-cols: 8 !important; }"

try:  # ZeroGPU Spaces hand out the GPU per call; elsewhere the package is absent and not needed
    import spaces

    gpu = spaces.GPU(duration=120)
except ImportError:
    def gpu(fn):
        return fn


class UploadImage(gr.Image):
    """An image input that passes unreadable uploads on instead of failing inside Gradio.

    Gradio opens each upload with PIL before the handler runs, so a corrupt file would reach the
    user as a bare "Error". Handing its path on lets the pipeline refuse it with a clear message.
    As a template of gr.Image (`is_template`), the page draws it with Gradio's own image widget.
    """

    is_template = True

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            return str(payload.path) if payload is not None and payload.path else None


def status_line(record: dict) -> str:
    if record.get("stopped"):
        return "Stopped."
    parts = [f"**{record['mode']}** mode", f"seed {record['seed']}"]
    for label, key in (("first token", "ttft"), ("first frame", "first_frame"), ("video ready", "video_ready")):
        if record.get(key) is not None:
            parts.append(f"{label} {record[key]:.2f} s")
    line = " · ".join(parts)
    if record.get("video_error"):
        line += f"  \n⚠️ {record['video_error']} Press **Retry video** to render it again."
    if record.get("note"):
        line += f"  \nℹ️ {record['note']}"
    return line


def prune_outputs(folder: Path, keep_runs: int) -> None:
    """Keep the newest `keep_runs` runs' files (video and thumbnail share the run id)."""
    runs: dict[str, float] = {}
    for path in folder.glob("*"):
        run_id = path.name.split(".")[0]
        runs[run_id] = max(runs.get(run_id, 0.0), path.stat().st_mtime)
    for run_id in sorted(runs, key=runs.get)[:-keep_runs or None]:
        for path in folder.glob(f"{run_id}.*"):
            path.unlink(missing_ok=True)


def sweep_cache(demo: gr.Blocks, folder: Path, age_s: float) -> int:
    """Delete files in Gradio's cache older than `age_s`, except those the page itself needs (examples).

    `delete_cache` only sees files Gradio tracks on the page's own blocks; the previews and videos
    that a streaming handler yields are cached without being tracked, so they would pile up.
    """
    keep = set().union(*(getattr(block, "keep_in_cache", set()) for block in demo.blocks.values()))
    now, removed = time.time(), 0
    for path in folder.rglob("*"):
        try:
            if path.is_file() and str(path) not in keep and now - path.stat().st_mtime > age_s:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed


def keep_cache_bounded(demo: gr.Blocks, age_s: float) -> threading.Thread:
    folder = Path(gr.utils.get_upload_folder())

    def loop():
        while True:
            time.sleep(max(1.0, age_s / 2))
            sweep_cache(demo, folder, age_s)

    thread = threading.Thread(target=loop, daemon=True, name="foresight-cache-sweeper")
    thread.start()
    return thread


def build_demo(pipe, default_preset: str = "default", banner: str = "") -> gr.Blocks:
    """The page. `pipe` is a ForesightPipeline; nothing here touches a model directly."""
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    modes = pipe.models.modes

    def refuse(message: str):
        """Record the refusal for the status line, then show it (gr.Error ends the event)."""
        yield gr.skip(), gr.skip(), gr.skip(), {"error": message}
        raise gr.Error(message)

    def run_stream(image, prompt, preset, mode, seed, reasoning=None):
        """Pipeline events -> (text, preview, video, record) updates; raises gr.Error for bad input."""
        if image is None:
            yield from refuse("Please add an image first (upload, webcam or paste).")
        text, record, last_preview, video_path = "", {}, None, None
        events = pipe(image, prompt=prompt or "", preset=preset, mode=None if mode == "auto" else mode,
                      seed=seed, out_dir=OUTPUT_DIR, reasoning=reasoning)
        try:
            for ev in events:
                kind = ev["type"]
                if kind == "thinking_start":
                    record = {"run_id": ev["run_id"], "seed": ev["seed"], "mode": ev["mode"], "note": ev["note"]}
                elif kind == "text_chunk":
                    text += ev["content"]
                    yield text, gr.skip(), gr.skip(), gr.skip()
                elif kind == "video_frame" and ev["kind"] == "preview":
                    last_preview = decode_frame(ev)
                    yield gr.skip(), last_preview, gr.skip(), gr.skip()
                elif kind == "video_complete":
                    video_path = ev["video_url"]
                    yield gr.skip(), gr.skip(), video_path, gr.skip()
                elif kind == "error" and ev["stage"] == "input":
                    yield from refuse(ev["message"])
                elif kind == "error":
                    gr.Warning(ev["message"])
                    if ev["stage"] == "video" and not ev.get("retry_preset"):
                        record["video_error"] = ev["message"]
                elif kind == "thinking_complete":
                    record.update(text=ev["text"], video=ev["video_url"], stopped=ev["stopped"],
                                  ttft=ev["ttft"], first_frame=ev["first_frame"], video_ready=ev["video_ready"])
                    # The whole state once more, so an API client's final result holds every output.
                    yield ev["text"], last_preview, video_path, record
        finally:
            events.close()  # on Stop, ends the GPU work at its next step
            prune_outputs(OUTPUT_DIR, MAX_OUTPUT_RUNS)

    @gpu
    def predict(image, prompt="", preset=default_preset, mode="auto", seed=0, randomize_seed=True):
        """Think about the image and render what happens next; streams (text, preview, video, run record)."""
        yield from run_stream(image, prompt, preset, mode, None if randomize_seed else int(seed))

    @gpu
    def retry_video(image, prompt, preset, mode, record):
        """Render the last run's video again, for its text, without a new reasoning stream."""
        if not record or not record.get("text"):
            raise gr.Error("There is no run to retry yet.")
        for _, preview, video, new_record in run_stream(image, prompt, preset, record["mode"], record["seed"],
                                                           reasoning=record["text"]):
            yield preview, video, new_record

    def begin():
        """Clear the last run and lock Generate until this one ends (a second click would queue behind it)."""
        return "", None, None, "Thinking…", gr.update(visible=False), {}, gr.update(interactive=False)

    def finish(image, record, history):
        unlock = gr.update(interactive=True)
        if not record:  # stopped: the Stop button has said so
            return gr.skip(), history, gr.skip(), gr.skip(), gr.skip(), unlock
        if record.get("error"):
            return f"⚠️ {record['error']}", history, gr.skip(), gr.skip(), gr.skip(), unlock
        if record.get("video") and image is not None:
            thumb = OUTPUT_DIR / f"{record['run_id']}.jpg"
            try:
                with Image.open(image) as im:
                    im.convert("RGB").resize((160, max(1, round(160 * im.height / im.width)))).save(thumb)
                history = [record | {"thumb": str(thumb)}] + history
            except (OSError, ValueError):
                pass
        history = [h for h in history if Path(h["video"]).exists()]
        gallery = [(h["thumb"], h["text"][:60]) for h in history]
        retry = gr.update(visible=bool(record.get("video_error")))
        return status_line(record), history, gallery, retry, record["seed"], unlock

    def show_history(history, evt: gr.SelectData):
        item = history[evt.index]
        return item["text"], item["video"], status_line(item)

    with gr.Blocks(title="Foresight", delete_cache=(CACHE_TTL_S, CACHE_TTL_S)) as demo:
        gr.Markdown("# Foresight\nDrop an image. The model thinks out loud and shows what happens next.")
        if banner:
            gr.Markdown(banner, elem_id="banner")
        with gr.Row():
            with gr.Column(scale=1):
                image = UploadImage(label="Image", type="filepath", sources=["upload", "webcam", "clipboard"],
                                    elem_id="input-image", height=320)
                prompt = gr.Textbox(label="Question (optional)", placeholder="What happens next?",
                                    elem_id="prompt", lines=1, max_length=MAX_QUESTION_CHARS)
                with gr.Row():
                    preset = gr.Radio([(f"{n} · {p.width}² · {p.num_frames} frames", n) for n, p in PRESETS.items()],
                                      value=default_preset, label="Preset", elem_id="preset")
                with gr.Accordion("Options", open=False):
                    mode = gr.Radio([c for c in MODE_CHOICES if c[1] in ["auto", *modes]], value="auto",
                                    label="Conditioning", elem_id="mode")
                    with gr.Row():
                        seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
                        randomize = gr.Checkbox(value=True, label="Randomize seed", elem_id="randomize")
                with gr.Row():
                    generate = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
                gr.Examples([[str(p)] for p in sorted(EXAMPLES_DIR.glob("*.jpg"))], inputs=[image],
                            label="Examples (CC0 / public domain, see examples/LICENSE.md)")
            with gr.Column(scale=2):
                status = gr.Markdown("Ready.", elem_id="status")
                reasoning = gr.Textbox(label="Thinking", lines=8, max_lines=16, elem_id="reasoning",
                                       autoscroll=True)
                with gr.Row():
                    preview = gr.Image(label="Foresight (preview)", elem_id="preview", format="jpeg",
                                       interactive=False, height=320)
                    video = gr.Video(label="Foresight", elem_id="video", autoplay=True, loop=True,
                                     interactive=False, height=320)
                retry = gr.Button("Retry video", visible=False, elem_id="retry")
                history_state = gr.State([])
                record_state = gr.State({})
                gallery = gr.Gallery(label="This session's runs", columns=8, height=150, object_fit="cover",
                                     elem_id="history", allow_preview=False)

        gpu_queue = dict(concurrency_limit=1, concurrency_id="gpu")
        run = generate.click(begin, outputs=[reasoning, preview, video, status, retry, record_state, generate],
                             queue=False, api_visibility="private")
        run = run.then(predict, inputs=[image, prompt, preset, mode, seed, randomize],
                       outputs=[reasoning, preview, video, record_state], api_name="predict",
                       show_progress_on=[reasoning], **gpu_queue)
        # `.then` follows a run that ended or was stopped, `.failure` one that raised (a refused input);
        # Gradio runs exactly one of them.
        finished = dict(fn=finish, inputs=[image, record_state, history_state],
                        outputs=[status, history_state, gallery, retry, seed, generate], api_visibility="private")
        run.then(**finished)
        run.failure(**finished)
        again = retry.click(retry_video, inputs=[image, prompt, preset, mode, record_state],
                            outputs=[preview, video, record_state], api_name="retry_video",
                            show_progress_on=[preview], **gpu_queue)
        again.then(**finished)
        again.failure(**finished)
        stop.click(lambda: ("Stopped.", gr.update(interactive=True)), outputs=[status, generate], cancels=[run, again],
                   queue=False, api_visibility="private")
        gallery.select(show_history, inputs=[history_state], outputs=[reasoning, video, status],
                       api_visibility="private")
    return demo


def parse_args(argv=None):
    env = os.environ.get
    parser = argparse.ArgumentParser(description="Foresight web app")
    parser.add_argument("--profile", choices=["tiny", "full", "random-full"], default=env("FORESIGHT_PROFILE"),
                        help="default: full on a CUDA GPU, tiny elsewhere")
    parser.add_argument("--host", default=env("FORESIGHT_HOST", env("GRADIO_SERVER_NAME", "127.0.0.1")))
    parser.add_argument("--port", type=int, default=int(env("FORESIGHT_PORT", env("GRADIO_SERVER_PORT", 7860))))
    parser.add_argument("--share", action="store_true", default=env("FORESIGHT_SHARE", "") in ("1", "true"))
    parser.add_argument("--preset", choices=list(PRESETS), default=env("FORESIGHT_PRESET", "default"))
    parser.add_argument("--queue-size", type=int, default=int(env("FORESIGHT_QUEUE_SIZE", 16)))
    parser.add_argument("--no-text-mode", action="store_true",
                        help="skip T5-XXL (9.5 GB) when a bridge runs fused mode (also FORESIGHT_TEXT_MODE=0)")
    return parser.parse_args(argv)


def warm_up(pipe) -> None:
    """One fast run before the first user (with the static decode, its compile: about a minute)."""
    start = time.perf_counter()
    print("[foresight] warming up ...", flush=True)
    pipe.warm_up(next(iter(sorted(EXAMPLES_DIR.glob("*.jpg")))), log=lambda m: print(m, flush=True))
    print(f"[foresight] warmed up in {time.perf_counter() - start:.1f}s", flush=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    from foresight.config import on_zero_gpu
    from foresight.pipeline import ForesightPipeline
    from foresight.profiles import load, make_settings

    settings = make_settings(args.profile, **({"text_mode": False} if args.no_text_mode else {}))
    banner = ""
    if settings.profile == "tiny":
        message = ("Tiny profile: the models have random weights, so the text and video are noise. "
                   "On a CUDA GPU, start `python app.py --profile full` for the real models.")
        print(f"[foresight] {message}", flush=True)
        banner = f"⚠️ {message}"
    elif settings.profile == "full":
        print("[foresight] full profile: the first start downloads about 33 GB of weights from the hub.", flush=True)
    models = load(settings, log=lambda m: print(m, flush=True))
    banner = "  \n".join(filter(None, [banner, f"Bridge: {models.bridge_note}."]))
    pipe = ForesightPipeline(models)
    if on_zero_gpu():
        print("[foresight] ZeroGPU: the GPU is lent per call, so there is no warm-up at start", flush=True)
    else:
        warm_up(pipe)
    demo = build_demo(pipe, default_preset=args.preset, banner=banner)
    keep_cache_bounded(demo, CACHE_TTL_S)
    demo.queue(max_size=args.queue_size).launch(
        server_name=args.host, server_port=args.port, share=args.share, allowed_paths=[str(OUTPUT_DIR)],
        show_error=True, css=CSS)


if __name__ == "__main__":
    main()
