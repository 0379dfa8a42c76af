"""Foresight's web page: drop an image, watch the model think and the future render.

    python app.py [--profile tiny|full|random-full] [--host H] [--port P] [--share] [--preset NAME] [--mcp]

Every flag has an environment variable (FORESIGHT_PROFILE, FORESIGHT_HOST, FORESIGHT_PORT,
FORESIGHT_SHARE, FORESIGHT_PRESET, ...) so a Hugging Face Space can set them. This file is the
page's components, their layout and their wiring: what each event does is foresight/page.py's,
the models start in foresight/serving.py, files are kept bounded by foresight/storage.py, and each
run is the pipeline's stream of events (foresight/pipeline.py).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import logging
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio loads: no telemetry unless asked
import gradio as gr  # noqa: E402
from gradio import processing_utils  # noqa: E402
from gradio.data_classes import FileData  # noqa: E402

from foresight import storage  # noqa: E402
from foresight.config import PRESETS  # noqa: E402
from foresight.inputs import MAX_QUESTION_CHARS, MAX_UPLOAD_MB  # noqa: E402
from foresight.page import Components, Page  # noqa: E402
from foresight.serving import PROFILES, MissingHubFiles, start  # noqa: E402
from foresight.session import RunRecord  # noqa: E402

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
# Run folders live inside Gradio's upload folder (GRADIO_TEMP_DIR) and are served from there as they
# are, never copied or hashed: a page that still shows a run whose files were deleted then reaches the
# handlers, which say so in words (Gradio refuses an event naming a file outside that folder
# before any handler runs). storage.RunStore decides what stays.
RUNS_DIR = Path(gr.utils.get_upload_folder()) / "foresight-runs"
# What a visitor sent (their bytes, under a name of theirs) is kept outside anything Gradio serves.
PRIVATE_DIR = Path(tempfile.gettempdir()) / "foresight-private"
RUNS_MAX_MB = int(os.environ.get("FORESIGHT_RUNS_MAX_MB", 2048))  # all sessions' runs together
API_KEEP_S = int(os.environ.get("FORESIGHT_API_KEEP_S", 900))  # an API or MCP run's files, to download them
SESSION_TTL_S = int(os.environ.get("FORESIGHT_SESSION_TTL", 24 * 3600))  # a page's runs, after its last run
CACHE_TTL_S = int(os.environ.get("FORESIGHT_CACHE_TTL", 3600))  # uploads in Gradio's cache are kept for this long...
CACHE_MAX_MB = int(os.environ.get("FORESIGHT_CACHE_MAX_MB", 1024))  # ...and to this size
MODE_CHOICES = [("Auto", "auto"), ("Fused (bridge)", "fused"), ("Text (T5)", "text")]
# Gradio sizes gallery columns by item count (one run = one full-width tile): keep thumbnails small.
CSS = """
#history .grid-container { --grid-cols: 8 !important; }
#output:has(#video video[src]) #preview { display: none; }  /* the preview becomes the video where it stands */
#video:not(:has(video[src])) { display: none; }
"""
# On a narrow screen the output stacks below the inputs, examples and About: bring it into view.
SHOW_OUTPUT_ON_PHONES = """() => {
  if (window.innerWidth < 768) document.querySelector('#status')?.scrollIntoView({block: 'start'});
}"""

class UploadImage(gr.Image):
    """An image input that hands the uploaded file's path on, untouched.

    Gradio's own preprocessing opens each upload with PIL and, for any mode but RGB (and for every
    inline `data:` image an API call sends), decodes and re-encodes it before the handler runs: a
    stranger's file decoded with no budget, and a corrupt one reaching the user as a bare "Error".
    The pipeline reads the header first and refuses what does not fit with a clear message
    (`inputs.open_image`). As a template of gr.Image (`is_template`), the page draws it with
    Gradio's own image widget.
    """

    is_template = True

    def preprocess(self, payload):
        if payload is None:
            return None
        if payload.path:
            return str(payload.path)
        if payload.url and payload.url.startswith("data:"):  # an API call's inline image: its bytes, as a file
            if len(payload.url) * 3 / 4 > MAX_UPLOAD_MB * 2**20:
                raise gr.Error(f"That file is over {MAX_UPLOAD_MB} MB; files up to {MAX_UPLOAD_MB} MB can be used.",
                               print_exception=False)
            return processing_utils.save_base64_to_cache(payload.url, cache_dir=self.GRADIO_CACHE)
        return super().preprocess(payload)


class RunVideo(gr.Video):
    """The pipeline's own mp4, shown as it is.

    gr.Video probes every file it is given with ffprobe (a subprocess) on every update, to decide
    whether to convert it; a streaming handler yields the finished mp4 again with each text update
    after it. The pipeline writes H.264 in yuv420p with the index up front (`media.Mp4Writer`),
    which browsers play as it is, so nothing needs deciding: each update hands the page the file
    as it is, served from the run's folder (inside Gradio's upload folder, so never copied)."""

    is_template = True

    def postprocess(self, value):
        return None if value is None else FileData(path=str(value), orig_name=Path(value).name)


def preset_label(name: str) -> str:
    preset = PRESETS[name]
    return f"{name.capitalize()} · {preset.width}×{preset.height} · {preset.seconds:.1f} s"


def make_page(pipe, default_preset: str = "default") -> Page:
    """The page's handlers, with this app's run store: its folders and budget, from the environment."""
    return Page(pipe, default_preset, functools.partial(storage.RunStore, RUNS_DIR, PRIVATE_DIR,
                                                        RUNS_MAX_MB * 2**20, API_KEEP_S))


def build_demo(page: Page, about: str = "") -> gr.Blocks:
    """The page's layout and wiring; `page` holds what each event does. The preview and the video
    share one place through CSS (the video hides the preview once it has a source)."""
    pipe, default_preset = page.pipe, page.default_preset
    gr.set_static_paths([RUNS_DIR])  # untracked by Gradio's delete_cache: RunStore alone decides what goes
    with gr.Blocks(title="Foresight", delete_cache=(CACHE_TTL_S, CACHE_TTL_S)) as demo:
        gr.Markdown("# Foresight\nDrop an image. The model thinks out loud and shows what happens next.")
        with gr.Row():
            with gr.Column(scale=1):
                image = UploadImage(label="Image", type="filepath", sources=["upload", "webcam", "clipboard"],
                                    elem_id="input-image", height=320)
                question = gr.Textbox(label="Question (optional)", placeholder="What happens next?",
                                      elem_id="prompt", lines=1, max_length=MAX_QUESTION_CHARS)
                preset = gr.Radio([(preset_label(name), name) for name in PRESETS], value=default_preset,
                                  label="Video", elem_id="preset")
                sharper = gr.Checkbox(value=False, label="Sharper: LTX's second pass, as its authors recommend "
                                      "for a final clip (slower)", elem_id="sharper", visible=2 in pipe.models.passes)
                with gr.Accordion("Options", open=False):
                    mode = gr.Radio([c for c in MODE_CHOICES if c[1] in ["auto", *pipe.models.modes]], value="auto",
                                    label="Conditioning", elem_id="mode")
                    with gr.Row():
                        seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed", interactive=False)
                        randomize = gr.Checkbox(value=True, label="Randomize seed", elem_id="randomize")
                with gr.Row():
                    generate = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop", interactive=False)
                gr.Examples([[str(p)] for p in sorted(EXAMPLES_DIR.glob("*.jpg"))], inputs=[image],
                            label="Examples (CC0 / public domain, see examples/LICENSE.md)")
                with gr.Accordion("About", open=False, elem_id="about"):
                    gr.Markdown(about)
            with gr.Column(scale=2):
                status = gr.Markdown("Ready.", elem_id="status")
                queue_note = gr.Markdown("", elem_id="queue")
                reasoning = gr.Textbox(label="Thinking", lines=8, max_lines=16, elem_id="reasoning",
                                       autoscroll=True)
                with gr.Group(elem_id="output"):
                    preview = gr.Image(label="What happens next", elem_id="preview", format="jpeg", type="filepath",
                                       interactive=False, height=360)
                    video = RunVideo(label="What happens next", elem_id="video", autoplay=True, loop=True,
                                     interactive=False, height=360)
                    shown = gr.Markdown("", elem_id="caption")
                with gr.Row():
                    retry = gr.Button("Retry video", visible=False, elem_id="retry")
                    and_then = gr.Button("And then?", visible=False, variant="primary", elem_id="and-then")
                gallery = gr.Gallery(label="This session's runs", columns=8, height=150, object_fit="cover",
                                     elem_id="history", allow_preview=False)
        # What a session shows is its own until it ends (its tab closed for an hour, or idle past
        # SESSION_TTL_S): then its runs are let go. Sessions Gradio drops for capacity skip these
        # callbacks; RunStore finds their runs by `Page.is_live`.
        control = gr.State(None)  # the Stop of the run on its way, if one is
        record = gr.State(RunRecord(), time_to_live=SESSION_TTL_S,
                          delete_callback=lambda r: page.runs.let_go([r.folder]))
        history = gr.State([], time_to_live=SESSION_TTL_S,
                           delete_callback=lambda h: page.runs.let_go([item.folder for item in h]))
        timer = gr.Timer(1.0, active=False)
        api_trigger = gr.Button(visible=False)
        api_clip = gr.File(visible=False, file_types=[".mp4"], type="filepath", label="Clip to continue")
        page.ui = Components(image, question, preset, seed, randomize, generate, stop, status, queue_note,
                             reasoning, preview, video, shown, retry, and_then, gallery, control, record, history,
                             timer)

        gpu_queue = dict(concurrency_limit=1, concurrency_id="gpu")
        private = dict(api_visibility="private", show_progress="hidden")  # the status line says it in words
        locking = [generate, stop, retry, and_then, timer]
        ended = dict(fn=page.on_run_end, inputs=[record, history],
                     outputs=[history, gallery, retry, and_then, generate, stop, timer, queue_note, record, control],
                     **private)
        started = generate.click(page.on_generate, outputs=[reasoning, preview, video, shown, status, control, record,
                                                            *locking], queue=False, **private)
        generate.click(None, js=SHOW_OUTPUT_ON_PHONES, **private)
        started.then(page.generate, inputs=[image, question, preset, sharper, mode, seed, randomize, control],
                     outputs=list(page.run_outputs), validator=page.admit_generate, **gpu_queue, **private
                     ).then(**ended)
        going_on = and_then.click(page.on_and_then, outputs=[preview, video, status, control, *locking], queue=False,
                                  **private)
        and_then.click(None, js=SHOW_OUTPUT_ON_PHONES, **private)
        going_on.then(page.and_then, inputs=[question, sharper, mode, seed, randomize, record, control],
                      outputs=list(page.run_outputs), validator=page.admit_and_then, **gpu_queue, **private
                      ).then(**ended)
        stop.click(page.on_stop, inputs=[control], outputs=[status, stop], queue=False, **private)
        again = retry.click(page.on_retry, outputs=[status, control, *locking], queue=False, **private)
        again.then(page.retry_video, inputs=[record, control], outputs=list(page.retry_outputs),
                   validator=page.admit_retry, **gpu_queue, **private).then(**ended)
        timer.tick(page.on_tick, outputs=[queue_note], queue=False, **private)
        image.upload(page.on_upload, inputs=[image], outputs=[image, status], queue=False, **private)
        randomize.change(lambda on: gr.update(interactive=not on), inputs=[randomize], outputs=[seed], **private)
        gallery.select(page.on_history_select, inputs=[history, control],
                       outputs=[image, question, preset, seed, randomize, reasoning, preview, video, shown, status,
                                record, history, gallery, and_then, retry], **private)
        gallery.select(None, js=SHOW_OUTPUT_ON_PHONES, **private)
        api_sharper = gr.Checkbox(visible=False, value=False, label="Sharper (two passes)")
        api_trigger.click(page.predict, inputs=[image, question, preset, api_clip, api_sharper],
                          outputs=[reasoning, preview, video],
                          api_name="predict", validator=page.admit_predict, **gpu_queue)
    page.demo = demo
    return demo


def kept_files(demo: gr.Blocks) -> set[str]:
    """Files in Gradio's cache that the page itself needs (the examples)."""
    return set().union(*(getattr(block, "keep_in_cache", set()) for block in demo.blocks.values()))


def parse_args(argv=None):
    env = os.environ.get
    parser = argparse.ArgumentParser(description="Foresight web app")
    parser.add_argument("--profile", choices=PROFILES, default=env("FORESIGHT_PROFILE"),
                        help="default: full on a CUDA GPU, tiny elsewhere")
    parser.add_argument("--host", default=env("FORESIGHT_HOST", env("GRADIO_SERVER_NAME", "127.0.0.1")))
    parser.add_argument("--port", type=int, default=int(env("FORESIGHT_PORT", env("GRADIO_SERVER_PORT", 7860))))
    parser.add_argument("--share", action="store_true", default=env("FORESIGHT_SHARE", "") in ("1", "true"))
    parser.add_argument("--preset", choices=list(PRESETS), default=env("FORESIGHT_PRESET", "default"))
    parser.add_argument("--queue-size", type=int, default=int(env("FORESIGHT_QUEUE_SIZE", 16)))
    parser.add_argument("--weights", default=env("FORESIGHT_WEIGHTS"), metavar="DIR",
                        help="a bridge checkpoint folder for fused mode (default: the first fitting one in weights/)")
    parser.add_argument("--no-text-mode", action="store_true",
                        help="skip T5-XXL (9.5 GB) when a bridge runs fused mode (also FORESIGHT_TEXT_MODE=0)")
    parser.add_argument("--mcp", action="store_true", default=env("FORESIGHT_MCP", "") in ("1", "true"),
                        help="also serve /predict as a tool for agents (Model Context Protocol), at /gradio_api/mcp/")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[foresight] %(message)s"))
    logging.getLogger("foresight").addHandler(handler)  # the page's and the pipeline's lines
    logging.getLogger("foresight").setLevel(logging.INFO)
    started = time.perf_counter()
    try:
        pipe, about = start(args.profile, text_mode=not args.no_text_mode, weights=args.weights,
                            log=lambda message: print(message, flush=True))
    except MissingHubFiles as exc:  # said in words, not as a traceback
        raise SystemExit(f"[foresight] cannot start: {exc}") from None
    demo = build_demo(make_page(pipe, args.preset), about=about)
    storage.keep_swept(Path(gr.utils.get_upload_folder()), CACHE_TTL_S, CACHE_MAX_MB * 2**20,
                       keep=lambda: kept_files(demo), skip=RUNS_DIR)
    with contextlib.redirect_stdout(io.StringIO()):  # Gradio's own lines; `ready_line` says what they would
        demo.queue(max_size=args.queue_size, api_open=False).launch(  # every call through the queue and its share
            server_name=args.host, server_port=args.port, share=args.share,
            max_file_size=f"{MAX_UPLOAD_MB}mb", mcp_server=args.mcp, quiet=True, prevent_thread_lock=True,
            show_error=True, css=CSS, footer_links=["api", "gradio", "settings"], run_history=False)
    print(ready_line(demo, time.perf_counter() - started, args.mcp), flush=True)
    demo.block_thread()


def ready_line(demo: gr.Blocks, seconds: float, mcp: bool) -> str:
    """The console's last start-up line, in place of Gradio's: where the page is, and how to share it."""
    public = f"public link {demo.share_url}" if demo.share_url else "`python app.py --share` for a public link"
    tool = f" · MCP tool `predict` at {demo.local_url}gradio_api/mcp/" if mcp else ""
    return f"[foresight] ready in {seconds:.1f}s at {demo.local_url} · {public}{tool}"


if __name__ == "__main__":
    main()
