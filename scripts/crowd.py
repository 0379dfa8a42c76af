"""A crowd at once: browsers and API clients sharing one app's GPU queue, measured as they see it.

    python scripts/crowd.py --browsers 2 --clients 4 --runs 50

Starts `python app.py --profile tiny` (soak.start_app) and sends the runs from every visitor at
once: each browser (headless Chromium, its own session) uploads, presses Generate and waits for
Generate to unlock, again and again; each API client (gradio_client) submits `/predict` runs one
after another. The runs are shared out round-robin. What each visitor saw is recorded with one
clock: when it asked, when its run started (its first update; in a browser, the status leaving
"Waiting"), when it ended (the mp4; in a browser, the status summary) and when Generate unlocked.

It holds when: every run is served in the order it asked (runs asked for within 0.2 s of each
other count as together), every run that waited saw its place (a browser's "Waiting: N runs
ahead", a client's queue rank), there are no raw errors (a toast, an API exception) and no
traceback in the server's log, no Generate stays locked 60 s after its run ended, no run starts
more than 1 s after the one before it ended, the server's memory ends within 200 MB of where it was
after the warm-up, and the runs' folder within its budget. Exits 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from dataclasses import dataclass, field

from soak import ROOT, folder_mb, rss_mb, start_app

EXAMPLE = str(ROOT / "examples" / "cat.jpg")
TOGETHER_S = 0.2  # asked within this of each other: the queue may take them in either order
MAX_GAP_S, MAX_LOCKED_S, MAX_GROWTH_MB = 1.0, 60.0, 200.0
GIVE_UP_S = 600.0  # a browser run that has not ended by then is given up on
WAITED_S = 2.0  # a run that started this long after it asked waited in the queue (the page's line ticks each second)


@dataclass
class Run:
    visitor: str
    asked: float
    started: float | None = None
    ended: float | None = None
    unlocked: float | None = None
    saw_place: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def waited(self) -> bool:
        return self.started is not None and self.started - self.asked > WAITED_S


def api_visitor(url: str, name: str, count: int, preset: str, runs: list[Run], start: threading.Barrier) -> None:
    from gradio_client import Client, handle_file
    from gradio_client.utils import Status

    client = Client(url, verbose=False)
    start.wait()
    for _ in range(count):
        run = Run(name, time.monotonic())
        runs.append(run)
        job = client.submit(handle_file(EXAMPLE), "", preset, api_name="/predict")
        try:
            while not job.done():
                status = job.status()
                if status.code == Status.IN_QUEUE and status.rank is not None:  # 0: next in line
                    run.saw_place = True
                if run.started is None and status.code in (Status.PROCESSING, Status.ITERATING):
                    run.started = time.monotonic()
                time.sleep(0.02)
            text, preview, video = job.result()
            run.ended = run.unlocked = time.monotonic()
            if not video:
                run.errors.append("no video")
        except Exception as exc:  # noqa: BLE001 - a raw error, as this client sees it
            run.errors.append(str(exc))


def browser_visitor(url: str, name: str, count: int, preset: str, runs: list[Run], start: threading.Barrier) -> None:
    from playwright import sync_api as playwright

    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.wait_for_selector("#generate")
        page.locator("#input-image input[type=file]").set_input_files(EXAMPLE)
        page.wait_for_selector("#input-image img", timeout=30_000)
        page.click(f"#preset label:has-text('{preset.capitalize()}')")
        start.wait()
        for _ in range(count):
            run = Run(name, time.monotonic())
            runs.append(run)
            page.click("#generate")
            watch_browser_run(page, run)
            run.errors += [text for text in page.locator(".toast-body").all_inner_texts()]
        browser.close()


def watch_browser_run(page, run: Run, poll_s: float = 0.02) -> None:
    """Follow one browser run through the page's status line and buttons, on the crowd's clock."""
    while True:
        state = page.evaluate("""() => ({status: document.querySelector('#status').innerText,
                                         queue: document.querySelector('#queue').innerText,
                                         locked: document.querySelector('#generate').disabled})""")
        now = time.monotonic()
        if "Waiting:" in state["queue"]:
            run.saw_place = True
        if run.started is None and state["status"].startswith(("Thinking", "Rendering")):
            run.started = now
        if run.started and run.ended is None and ("mode · seed" in state["status"] or "⚠️" in state["status"]):
            run.ended = now
            if "⚠️" in state["status"]:
                run.errors.append(state["status"])
        if run.ended is not None and not state["locked"]:
            run.unlocked = now
            return
        if run.ended is not None and now - run.ended > MAX_LOCKED_S:  # still locked: the verdict counts it
            return
        if run.ended is None and now - run.asked > GIVE_UP_S:  # never ended: counted as an error
            run.errors.append(f"no end after {GIVE_UP_S:.0f} s: {state['status']!r}")
            return
        time.sleep(poll_s)


def verdict(runs: list[Run], log: str, memory: tuple[float, float], runs_mb: float, budget_mb: float) -> list[str]:
    """What did not hold, in words (empty: all held)."""
    failures = []
    served = sorted(runs, key=lambda run: run.started or float("inf"))
    out_of_order = [(a, b) for a, b in zip(served, served[1:]) if b.asked < a.asked - TOGETHER_S]
    if out_of_order:
        failures.append(f"{len(out_of_order)} runs served before one that asked earlier")
    if unseen := [run for run in runs if run.waited and not run.saw_place]:
        failures.append(f"{len(unseen)} runs waited without seeing their place: "
                        f"{[(run.visitor, round(run.started - run.asked, 1)) for run in unseen]}")
    if errors := [error for run in runs for error in run.errors]:
        failures.append(f"{len(errors)} raw errors: {errors[:3]}")
    if "Traceback" in log:
        failures.append("a traceback in the server's log")
    if locked := [run for run in runs if run.unlocked is None or run.unlocked - run.ended > MAX_LOCKED_S]:
        failures.append(f"{len(locked)} pages still locked {MAX_LOCKED_S:.0f} s after their run")
    gaps = [b.started - a.ended for a, b in zip(served, served[1:]) if a.ended and b.started and b.asked < a.ended]
    if gaps and max(gaps) > MAX_GAP_S:
        failures.append(f"a run waited {max(gaps):.2f} s after the one before it ended")
    if memory[1] - memory[0] > MAX_GROWTH_MB:
        failures.append(f"server memory grew {memory[1] - memory[0]:.0f} MB")
    if runs_mb > budget_mb:
        failures.append(f"runs take {runs_mb:.1f} MB, over their {budget_mb} MB")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--browsers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--runs", type=int, default=50, help="runs in all, shared out round-robin")
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--runs-max-mb", type=int, default=40)
    args = parser.parse_args()

    server, url, work = start_app({"FORESIGHT_RUNS_MAX_MB": str(args.runs_max_mb), "FORESIGHT_API_KEEP_S": "60",
                                   "FORESIGHT_QUEUE_SIZE": str(args.browsers + args.clients + 1)})
    try:
        from gradio_client import Client, handle_file

        Client(url, verbose=False).predict(handle_file(EXAMPLE), "", args.preset, api_name="/predict")  # warm-up
        memory_before = rss_mb(server.pid)
        visitors = [("browser", browser_visitor, i) for i in range(args.browsers)] + \
                   [("client", api_visitor, i) for i in range(args.clients)]
        shares = [len(range(i, args.runs, len(visitors))) for i in range(len(visitors))]
        runs: list[Run] = []
        start = threading.Barrier(len(visitors))
        threads = [threading.Thread(target=fn, args=(url, f"{kind} {i + 1}", share, args.preset, runs, start))
                   for (kind, fn, i), share in zip(visitors, shares)]
        began = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.monotonic() - began
        memory_after, runs_mb = rss_mb(server.pid), folder_mb(work / "gradio" / "foresight-runs")
        log = (work / "app.log").read_text()
    finally:
        server.terminate()
        server.wait(timeout=30)
    report(runs, seconds, (memory_before, memory_after), runs_mb, args)
    failures = verdict(runs, log, (memory_before, memory_after), runs_mb, args.runs_max_mb)
    print("\n".join(["PASS"] if not failures else ["FAIL:", *failures]))
    return 1 if failures else 0


def report(runs: list[Run], seconds: float, memory: tuple[float, float], runs_mb: float, args) -> None:
    served = sorted((run for run in runs if run.started), key=lambda run: run.started)
    gaps = [b.started - a.ended for a, b in zip(served, served[1:]) if a.ended and b.asked < a.ended]
    waits = sorted(run.started - run.asked for run in served)
    locked = [run.unlocked - run.ended for run in runs if run.unlocked and run.ended]
    print(f"{len(runs)} runs ({args.browsers} browsers, {args.clients} API clients, {args.preset}) in {seconds:.0f} s")
    print("| measure | value |\n|---|---|")
    print(f"| runs served / without an error | {len(served)} / {sum(not run.errors for run in runs)} |")
    print(f"| waited over {WAITED_S:.0f} s / of those, saw their place | {sum(run.waited for run in runs)} / "
          f"{sum(run.waited and run.saw_place for run in runs)} |")
    print(f"| wait before starting: median / max | {waits[len(waits) // 2]:.1f} s / {waits[-1]:.1f} s |")
    print(f"| gap after the run before: median / max | {sorted(gaps)[len(gaps) // 2]:.2f} s / {max(gaps):.2f} s |"
          if gaps else "| gap after the run before | none measured |")
    print(f"| Generate locked after its run: max | {max(locked, default=0):.2f} s |")
    print(f"| server memory after warm-up / at the end | {memory[0]:.0f} MB / {memory[1]:.0f} MB |")
    print(f"| runs' folder / budget | {runs_mb:.1f} MB / {args.runs_max_mb} MB |")


if __name__ == "__main__":
    sys.exit(main())
