"""A long day of use, compressed: hundreds of runs through a running app, watching memory and disk.

    python scripts/soak.py --runs 300

Starts `python app.py --profile tiny` on a free local port with a private Gradio folder (uploads
and runs; a short cache age and size limit, so that the sweep has work to do), sends runs
through `gradio_client` one after another, and samples the server's resident memory and the size
of both folders. After a warm-up, memory should stay flat and the folders bounded; the script
exits 1 when memory grows faster than --max-growth-mb per 100 runs or a folder outgrows its limit.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20 if folder.exists() else 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(env: dict[str, str], *flags: str) -> tuple[subprocess.Popen, str, Path]:
    """`python app.py --profile tiny` on a free port, with `env` and a private Gradio folder:
    (the process, its URL, its work folder with app.log and gradio/, where runs live in foresight-runs/)."""
    work, port = Path(tempfile.mkdtemp(prefix="foresight-app-")), free_port()
    log = open(work / "app.log", "w")
    server = subprocess.Popen([sys.executable, "app.py", "--profile", "tiny", "--port", str(port), *flags], cwd=ROOT,
                              env={**os.environ, "GRADIO_TEMP_DIR": str(work / "gradio"), **env}, stdout=log,
                              stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, f"http://127.0.0.1:{port}", work
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                raise SystemExit(f"the app did not start; see {work / 'app.log'}")
            time.sleep(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30, help="runs before the baseline is taken")
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--cache-ttl", type=int, default=60, help="seconds Gradio's cache keeps a file")
    parser.add_argument("--cache-max-mb", type=int, default=40)
    parser.add_argument("--runs-max-mb", type=int, default=40)
    parser.add_argument("--max-growth-mb", type=float, default=5.0, help="allowed memory growth per 100 runs")
    args = parser.parse_args()

    from gradio_client import Client, handle_file

    server, url, work = start_app({"FORESIGHT_CACHE_TTL": str(args.cache_ttl),
                                   "FORESIGHT_CACHE_MAX_MB": str(args.cache_max_mb),
                                   "FORESIGHT_RUNS_MAX_MB": str(args.runs_max_mb), "FORESIGHT_API_KEEP_S": "30"})
    outputs, cache = work / "gradio" / "foresight-runs", work / "gradio"
    try:
        client = Client(url, verbose=False)
        example = handle_file(str(ROOT / "examples" / "cat.jpg"))
        rows, baseline, started = [], None, time.time()
        print("| runs | server memory (MB) | runs (MB) | Gradio cache, uploads (MB) | seconds |")
        print("|---|---|---|---|---|")
        for number in range(1, args.runs + 1):
            client.predict(example, "", args.preset, api_name="/predict")
            if number == args.warmup or number % 50 == 0 or number == args.runs:
                runs = folder_mb(outputs)
                row = (number, rss_mb(server.pid), runs, folder_mb(cache) - runs, time.time() - started)
                rows.append(row)
                print("| {} | {:.0f} | {:.1f} | {:.1f} | {:.0f} |".format(*row), flush=True)
                if number == args.warmup:
                    baseline = row
        end = rows[-1]
        growth = (end[1] - baseline[1]) / max(1, end[0] - baseline[0]) * 100
        cache_peak = max(row[3] for row in rows)
        print(f"\nmemory: {baseline[1]:.0f} MB after {baseline[0]} runs, {end[1]:.0f} MB after {end[0]}: "
              f"{growth:+.1f} MB per 100 runs (limit {args.max_growth_mb})")
        print(f"Gradio cache: at most {cache_peak:.1f} MB (limit {args.cache_max_mb} MB, checked every "
              f"{min(10, max(1, args.cache_ttl // 2))} s); runs: {end[2]:.1f} MB (within FORESIGHT_RUNS_MAX_MB)")
        ok = growth <= args.max_growth_mb and cache_peak <= args.cache_max_mb * 1.5 and end[2] <= args.runs_max_mb
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
