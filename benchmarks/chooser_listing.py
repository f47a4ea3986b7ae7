"""How long the app's window freezes when its file chooser opens a folder of many films.

    python benchmarks/chooser_listing.py [--files 2000] [--rounds 3] [--out benchmarks/CHOOSER_LISTING.md] [--force]

Side by side in one run, each round in a fresh process (a Kivy app runs once per process), headless
(SDL offscreen, Mesa): Kivy's FileChooserListView, which the app used before, and the app's own
FileChooserPopup (a worker thread lists the folder into a RecycleView). For each, the folder is
opened once the window is up and the script records the longest gap between two frames of the Kivy
clock (how long the window could not redraw or take input) and the time until the list was
complete. The folder holds copies of one small PNG; only names and counts matter here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHILD = r'''
import json, os, sys, time
os.environ.setdefault("KIVY_NO_ARGS", "1")
sys.path.insert(0, os.path.join(sys.argv[3], "mobile_app"))
kind, folder, out, expected = sys.argv[1], sys.argv[2], sys.argv[4], int(sys.argv[5])
warm = os.path.join(os.path.dirname(folder), "warm-up")  # a small folder: first-use costs happen there
from edgecxr_app import configure_kivy
configure_kivy(size=(800, 480))
from kivy.clock import Clock
from kivy.uix.popup import Popup
from edgecxr_app.app import EdgeCXRApp, FileChooserPopup

gaps, state = [], {"t0": None, "last": None, "done": None}

def tick(_dt):
    now = time.perf_counter()
    if state["t0"] is not None and state["last"] is not None:
        gaps.append(now - state["last"])
    state["last"] = now

class Bench(EdgeCXRApp):
    """The real app (same window, theme and rules), with one chooser or the other opened."""

    kv_file = os.path.join(sys.argv[3], "mobile_app", "edgecxr_app", "edgecxr.kv")

    def on_start(self):
        super().on_start()
        Clock.schedule_interval(tick, 0)
        Clock.schedule_once(self.open_folder, 0.5)
        Clock.schedule_interval(self.check, 0)

    def open_folder(self, _dt):
        if kind == "kivy":
            from kivy.uix.filechooser import FileChooserListView
            self.view = FileChooserListView(filters=["*.png", "*.PNG"], path=warm)
            Popup(title="Open a chest X-ray", content=self.view, size_hint=(0.94, 0.94)).open()
        else:
            self.view = FileChooserPopup(title="Open a chest X-ray", filters=["*.png"], start_path=warm,
                                         callback=print)
            self.view.open()
        Clock.schedule_once(self.open_big_folder, 1.5)

    def open_big_folder(self, _dt):
        state["t0"] = state["last"] = time.perf_counter()
        if kind == "kivy":
            self.view.path = folder
        else:
            self.view.go(folder)

    def check(self, _dt):
        if state["t0"] is None or state["done"] is not None:
            return
        if kind == "kivy":
            done = len(self.view.files) >= expected and self.view._gitems_gen is None
        else:
            done = not self.view.listing and len(self.view.rows) >= expected
        if done:
            state["done"] = time.perf_counter() - state["t0"]
            Clock.schedule_once(self.finish, 0.3)

    def finish(self, _dt):
        listed = (len([f for f in self.view.files if f.endswith(".png")]) if kind == "kivy"
                  else len(self.view.rows))
        with open(out, "w") as fh:
            json.dump({"kind": kind, "listed": listed, "complete_s": state["done"],
                       "longest_frame_gap_s": max(gaps) if gaps else None, "frames": len(gaps)}, fh)
        self.stop()

Bench().run()
'''


def run_one(kind: str, folder: Path, tmp: Path) -> dict:
    out = tmp / f"{kind}.json"
    env = {**os.environ, "SDL_VIDEODRIVER": "offscreen", "KIVY_HOME": str(tmp / "kivy"),
           "XDG_CONFIG_HOME": str(tmp / "config"),
           "PYTHONPATH": str(REPO / "toolkit")}
    child = tmp / "chooser_child.py"  # a file, not -c: Kivy's App looks for its source file
    child.write_text(CHILD)
    expected = len(list(folder.iterdir()))
    done = subprocess.run([sys.executable, str(child), kind, str(folder), str(REPO), str(out), str(expected)], env=env,
                          timeout=600, capture_output=True, text=True)
    if done.returncode != 0 or not out.is_file():
        raise SystemExit(f"error: the {kind} round failed:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def cpu_name() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    if args.out and args.out.exists() and not args.force:
        print(f"error: {args.out} exists; pass --force to overwrite", file=sys.stderr)
        return 1
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folder = tmp / "films"
        folder.mkdir()
        (tmp / "warm-up").mkdir()
        Image.new("L", (64, 64), 90).save(tmp / "one.png")
        data = (tmp / "one.png").read_bytes()
        for i in range(args.files):
            (folder / f"film{i:05d}.png").write_bytes(data)
        for i in range(3):
            (tmp / "warm-up" / f"film{i}.png").write_bytes(data)
        results = {"kivy": [], "app": []}
        for _ in range(args.rounds):  # interleaved, so load changes hit both alike
            for kind in results:
                results[kind].append(run_one(kind, folder, tmp))
    load = os.getloadavg()[0]
    names = {"kivy": "Kivy FileChooserListView (before)", "app": "the app's FileChooserPopup (now)"}
    lines = [
        "# File chooser: a folder of many films",
        "",
        f"Reproduce: `python benchmarks/chooser_listing.py --files {args.files} --rounds {args.rounds}"
        f"{' --out ' + str(args.out) + ' --force' if args.out else ''}` "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {cpu_name()}, {os.cpu_count()} CPUs, "
        f"load average {load:.2f} at the end; headless SDL offscreen, Mesa).",
        "",
        f"One folder of {args.files} PNG files, opened {args.rounds} times per chooser in a fresh process each, "
        "interleaved. Longest frame gap: the longest time between two frames of the Kivy clock after the "
        "folder was opened (the window can neither redraw nor take input meanwhile). Median, min-max in brackets.",
        "",
        "| chooser | entries listed | longest frame gap, s | list complete after, s |",
        "|---|---:|---:|---:|",
    ]
    for kind, rows in results.items():
        gaps = [r["longest_frame_gap_s"] for r in rows]
        done = [r["complete_s"] for r in rows]
        lines.append(f"| {names[kind]} | {rows[0]['listed']} | {statistics.median(gaps):.2f} "
                     f"({min(gaps):.2f}-{max(gaps):.2f}) | {statistics.median(done):.2f} "
                     f"({min(done):.2f}-{max(done):.2f}) |")
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
