"""diffusers and unclip side by side on the same checkpoint/bundle, prompt, seed, steps and threads,
in one invocation; writes `docs/benchmarks.md` (table) and `docs/benchmarks.json` (every number).
Run through `scripts/bench-compare`.

    python export/bench_compare.py CHECKPOINT BUNDLE [--unclip target/release/unclip] [--threads 2]
        [--runs 1] [--warmup 1] [--configs 25/25/7x1,5/5/2x1,5/5/2x4] [--ablations 5/5/2x1|none]
        [--modes SUBSTRINGS] [--update] [--out docs/benchmarks] [--title TEXT]

Modes: diffusers fp32 and diffusers bf16 autocast (its fastest CPU setting, `bench_diffusers.py`);
unclip exact (`--device cpu`, f32) and fast: `--device openvino --precision auto` (bf16 on Intel
CPUs) and `--precision int8` (the CPU device on the bundle's int8 models, export/quantize_bundle.py).
A mode that cannot run here (the OpenVINO plugin offers Intel devices only; a bundle without int8
models) is reported with the reason, never replaced by another mode.

Per mode and config: one cold process (load + one generation: the cold start, the image, the
peak RSS from the kernel's rusage of that child) and one warm process (`unclip bench` /
`bench_diffusers.py`, one warmup then --runs timed runs: per-stage and end-to-end medians). Images
use the torch RNG (`--rng torch`), so each mode's first image is compared with diffusers fp32's
pixel by pixel (uint8 as both write PNGs: max and mean absolute difference). Keep the default
`--warmup 1`: a process's first generation is not a warm one. At Karlo size the fast mode's first
run of `unclip bench --warmup 0 --runs 3` (5/5/2x1, OpenVINO bf16, cache populated) took 21.89 s
against 16.22 and 16.36 s for the next two (OpenVINO sets up each model's kernels at its first
inference); the cold-start column measures that first generation separately. Each row records the
runs and warmups it was measured with (column `warm runs`), so rows of an `--update` measured with
other settings say so.

`--modes "unclip exact"` measures only the modes whose name contains one of the comma-separated
substrings; with `--update` the rows measured replace those of an existing OUT.json and the rest
stay (a row measured without diffusers fp32 in the same run has no pixel difference).

Before/after rows (`--ablations CONFIG`, cold `unclip generate` processes, one config): the
OpenVINO compiled-model cache (a first load that compiles vs a load from a populated cache
directory) and `--low-memory` (peak RSS of a generation with every stage's sessions resident vs
one stage at a time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# numpy and Pillow are imported where pixels are compared, so `--help` and `--render` run on the
# standard library alone (export/tests).
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PROMPT = "a red circle on a blue background"
SEED = 0


def run_measured(cmd: list[str], env: dict | None = None) -> tuple[float, float, str]:
    """Runs `cmd` to completion: wall seconds, the peak RSS of exactly this child in MiB (wait4,
    not RUSAGE_CHILDREN, which keeps the maximum over every child so far), stdout."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    code = os.waitstatus_to_exitcode(status)
    if code < 0:  # killed: say by what, the table shows the last line
        name = signal.Signals(-code).name
        why = " (out of memory: the kernel's OOM killer)" if code == -signal.SIGKILL else ""
        raise RuntimeError(f"{' '.join(cmd)}\n{stderr[-2000:]}\nkilled by {name}{why}, peak RSS "
                           f"{usage.ru_maxrss / 1024:.0f} MiB")
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({code}):\n{stderr[-3000:]}")
    return wall, usage.ru_maxrss / 1024, stdout


def parse_config(text: str) -> dict:
    """`25/25/7x1` → prior, decoder, super-res steps and batch."""
    steps, _, batch = text.partition("x")
    prior, decoder, sr = (int(s) for s in steps.split("/"))
    return {"name": text, "prior": prior, "decoder": decoder, "sr": sr, "batch": int(batch or 1)}


def diffusers_mode(args, config: dict, autocast: bool, work: Path) -> dict:
    base = [args.python, str(HERE / "bench_diffusers.py"), str(args.checkpoint), "--prompt", PROMPT,
            "--seed", str(SEED), "--threads", str(args.threads), "--num-images", str(config["batch"]),
            "--prior-steps", str(config["prior"]), "--decoder-steps", str(config["decoder"]),
            "--sr-steps", str(config["sr"])]
    if autocast:
        base += ["--autocast", "bf16"]
    image = work / f"diffusers-{'bf16' if autocast else 'fp32'}-{config['name'].replace('/', '_')}.npy"
    cold, rss, _ = run_measured(base + ["--runs", "1", "--warmup", "0", "--save-image", str(image)])
    _, _, stdout = run_measured(base + ["--runs", str(args.runs), "--warmup", str(args.warmup)])
    warm = json.loads(stdout)
    import numpy as np

    pixels = (np.load(image)[0] * 255).round().astype(np.uint8)  # diffusers' numpy_to_pil
    return {"cold_seconds": cold, "peak_rss_mib": rss, "total": warm["total"]["median"],
            "stages": {k: v["median"] for k, v in warm["stages"].items()}, "pixels": pixels}


def unclip_flags(args, config: dict, device_flags: list[str], threads: int | None = None) -> list[str]:
    return ["--model", str(args.bundle), "--rng", "torch", "--seed", str(SEED), "--threads", str(threads or args.threads),
              "--num-images", str(config["batch"]), "--prior-steps", str(config["prior"]),
              "--decoder-steps", str(config["decoder"]), "--sr-steps", str(config["sr"]), "--size", "256",
              *device_flags]


def unclip_mode(args, config: dict, device_flags: list[str], work: Path) -> dict:
    # The OpenVINO compile cache and the CPU's optimized-graph cache live in this run's work
    # directory: the cold process compiles or optimizes (and fills them), the warm one loads from
    # them, whatever earlier runs left in ~/.cache.
    tag = f"{'_'.join(device_flags) or 'cpu'}-{config['name'].replace('/', '_')}"
    caches = (["--openvino-cache-dir", str(work / "openvino-cache")] if "openvino" in device_flags
              else ["--graph-cache-dir", str(work / f"graphs-{tag}")])
    common = unclip_flags(args, config, [*device_flags, *caches])
    image = work / f"unclip-{tag}.png"
    cold, rss, _ = run_measured([args.unclip, "-q", "generate", PROMPT, "-o", str(image), *common])
    _, _, stdout = run_measured([args.unclip, "-q", "bench", "--runs", str(args.runs), "--warmup", str(args.warmup), PROMPT,
                                 *common])
    warm = json.loads(stdout)
    first = image if config["batch"] == 1 else image.with_name(f"{image.stem}_0{image.suffix}")
    stages = {k: v["median"] for k, v in warm["seconds"].items() if k not in ("total", "load")}
    import numpy as np
    from PIL import Image

    return {"cold_seconds": cold, "peak_rss_mib": rss, "total": warm["seconds"]["total"]["median"],
            "stages": stages, "outside_ort_share": warm.get("outside_ort_share"),
            "precision": warm.get("precision"), "pixels": np.asarray(Image.open(first).convert("RGB"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path, nargs="?", help="Karlo-layout diffusers checkpoint")
    ap.add_argument("bundle", type=Path, nargs="?", help="the unclip bundle exported from it")
    ap.add_argument("--unclip", default=str(REPO / "target" / "release" / "unclip"))
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs before the timed ones (warm process)")
    ap.add_argument("--configs", default="25/25/7x1,5/5/2x1,5/5/2x4")
    ap.add_argument("--ablations", default="5/5/2x1", help="config of the before/after rows, or none")
    ap.add_argument("--rows", default="cache,graph-cache,low-memory,spin,threads,prepack",
                    help="which before/after rows to measure (comma-separated: cache, graph-cache, low-memory, spin, "
                         "threads, prepack)")
    ap.add_argument("--modes", default=None, help="comma-separated substrings of the mode names to run")
    ap.add_argument("--update", action="store_true", help="merge into an existing OUT.json")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks", help="writes OUT.md and OUT.json")
    ap.add_argument("--title", default=None, help="what was benchmarked (default: the checkpoint's name)")
    ap.add_argument("--render", action="store_true", help="only rewrite OUT.md from OUT.json")
    args = ap.parse_args()
    if args.render:
        args.out.with_suffix(".md").write_text(markdown(json.loads(args.out.with_suffix(".json").read_text())))
        return
    if args.checkpoint is None or args.bundle is None:
        ap.error("CHECKPOINT and BUNDLE are required (only --render runs without them)")
    import numpy as np

    previous = args.out.with_suffix(".json")
    previous = json.loads(previous.read_text()) if previous.exists() else None
    old = previous if args.update else None
    configs = [parse_config(c) for c in args.configs.split(",")]
    modes = {
        "diffusers fp32": lambda c, w: diffusers_mode(args, c, False, w),
        "diffusers bf16 autocast": lambda c, w: diffusers_mode(args, c, True, w),
        "unclip exact (cpu f32)": lambda c, w: unclip_mode(args, c, [], w),
        "unclip exact (cpu f32, --spin)": lambda c, w: unclip_mode(args, c, ["--spin"], w),
        "unclip fast (openvino auto)": lambda c, w: unclip_mode(args, c, ["--device", "openvino", "--precision", "auto"], w),
        "unclip fast (cpu int8)": lambda c, w: unclip_mode(args, c, ["--precision", "int8"], w),
    }
    if args.modes:
        wanted = [m.strip() for m in args.modes.split(",")]
        modes = {name: fn for name, fn in modes.items() if any(w in name for w in wanted)}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for config in configs:
            reference = None
            for mode, measure in modes.items():
                print(f"{config['name']}: {mode} …", file=sys.stderr, flush=True)
                try:
                    r = measure(config, work)
                except RuntimeError as e:
                    reason = str(e).strip().splitlines()[-1].removeprefix("error: ")
                    print(f"  unavailable: {reason}", file=sys.stderr)
                    results.append({"config": config["name"], "mode": mode, "unavailable": reason})
                    continue
                pixels = r.pop("pixels")
                if mode == "diffusers fp32":
                    reference = pixels.astype(np.int16)
                if reference is not None and pixels.shape == reference.shape:
                    diff = np.abs(pixels.astype(np.int16) - reference)
                    r["pixel_diff_vs_diffusers_fp32"] = {"max": int(diff.max()), "mean": float(diff.mean())}
                print(f"  {r['total']:.2f} s warm, {r['cold_seconds']:.2f} s cold, {r['peak_rss_mib']:.0f} MiB",
                      file=sys.stderr)
                results.append({"config": config["name"], "mode": mode, "runs": args.runs, "warmup": args.warmup, **r})
        ablations = [] if args.ablations == "none" else measure_ablations(args, parse_config(args.ablations), work)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    for row in [*results, *ablations]:  # a merged report can hold rows from several machines
        row["cpu"] = cpu
    report = {"title": args.title or args.checkpoint.name, "prompt": PROMPT, "seed": SEED, "threads": args.threads,
              "runs": args.runs, "warmup": args.warmup, "cpu": cpu, "date": time.strftime("%Y-%m-%d"), "results": results,
              "ablations": ablations}
    if previous is not None and previous.get("fidelity") is not None:
        # measured by export/shapes/eval.py, not here: kept from the previous report
        report["fidelity"] = previous["fidelity"]
    if previous is not None and previous.get("sections"):
        report["sections"] = previous["sections"]  # written by hand, kept
    if old is not None:
        measured = {(r["config"], r["mode"]) for r in results}
        # rows from before runs/warmup were recorded per row carry the report's
        kept = [{"runs": old["runs"], "warmup": old.get("warmup", 1), **r} for r in old["results"]
                if (r["config"], r["mode"]) not in measured]
        order = {(r["config"], r["mode"]): i for i, r in enumerate(old["results"])}
        report["results"] = sorted(kept + results, key=lambda r: order.get((r["config"], r["mode"]), len(order)))
        # a re-measured row replaces its old self; rows not measured this time (including ones
        # measured by hand, e.g. across two runs of the table) are kept in their place
        changed = {a["change"] for a in ablations}
        report["ablations"] = [a for a in old.get("ablations", []) if a["change"] not in changed] + ablations
        today = time.strftime("%Y-%m-%d")
        with_reference = {r["config"] for r in results if r["mode"] == "diffusers fp32" and "unavailable" not in r}
        elsewhere = "" if cpu == old["cpu"] else f", {cpu}"
        fresh = {f"{c} {m} ({today}{elsewhere}" + ("" if c in with_reference else ", diffusers fp32 not in that run: "
                                                   "no pixel difference") + ")" for c, m in measured}
        stale = [u for u in old.get("updated", []) if not any(u.startswith(f"{c} {m} (") for c, m in measured)]
        report["updated"] = sorted(set(stale) | fresh)
        report["date"] = old["date"]
        report["cpu"] = old["cpu"]
        report["title"] = args.title or old["title"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {args.out.with_suffix('.md')} and {args.out.with_suffix('.json')}", file=sys.stderr)


def measure_ablations(args, config: dict, work: Path) -> list[dict]:
    """Cold `unclip generate` processes with one setting changed: wall seconds and peak RSS."""

    def cold(flags: list[str], threads: int | None = None) -> dict:
        if "--graph-cache-dir" not in flags:  # not ~/.cache's: each row says whether it has one
            flags = [*flags, "--graph-cache-dir", "none"]
        shown = [*flags, *(["--threads", str(threads)] if threads else [])]
        print(f"{config['name']}: unclip generate {' '.join(shown)} …", file=sys.stderr, flush=True)
        image = work / "ablation.png"
        wall, rss, _ = run_measured([args.unclip, "-q", "generate", PROMPT, "-o", str(image),
                                     *unclip_flags(args, config, flags, threads)])
        print(f"  {wall:.2f} s, {rss:.0f} MiB", file=sys.stderr)
        return {"flags": flags, "cold_seconds": wall, "peak_rss_mib": rss}

    rows = []
    wanted = {r.strip() for r in args.rows.split(",")}
    fast = ["--device", "openvino", "--precision", "auto"]
    cache = ["--openvino-cache-dir", str(work / "ablation-cache")]
    if "cache" in wanted:
        try:
            before = cold([*fast, "--openvino-cache-dir", "none"])
            cold([*fast, *cache])  # fills the cache
            after = cold([*fast, *cache])
            rows.append({"config": config["name"], "change": "OpenVINO compiled-model cache (fast mode, cold start)",
                         "before": before, "after": after})
        except RuntimeError as e:
            rows.append({"config": config["name"], "change": "OpenVINO compiled-model cache",
                         "unavailable": str(e).strip().splitlines()[-1]})
    if not wanted & {"graph-cache", "low-memory", "spin", "threads", "prepack"}:
        return rows
    exact = cold([])
    low = cold(["--low-memory"]) if "low-memory" in wanted else None
    if "graph-cache" in wanted:
        graphs = ["--graph-cache-dir", str(work / "ablation-graphs")]
        cold(graphs)  # optimizes every model and saves the graphs
        after = cold(graphs)
        rows.append({"config": config["name"], "change": "ONNX Runtime's optimized graphs cached on disk "
                     "(`--graph-cache-dir`, exact mode, cold start from a filled cache)", "before": exact,
                     "after": after})
        if "low-memory" in wanted:
            after = cold([*graphs, "--low-memory"])
            rows.append({"config": config["name"], "change": "the same with --low-memory (every generation "
                         "creates its stages' sessions again)", "before": low, "after": after})
    if "low-memory" in wanted:
        rows.append({"config": config["name"], "change": "--low-memory (exact mode, peak RSS)", "before": exact,
                     "after": low})
    if "spin" in wanted:
        after = cold(["--spin"])
        rows.append({"config": config["name"], "change": "--spin: idle intra-op threads spin instead of sleeping "
                     "(exact mode)", "before": exact, "after": after})
    if "threads" in wanted and args.threads > 1:
        before = cold([], threads=1)
        rows.append({"config": config["name"], "change": f"threads = cores: --threads 1 → {args.threads} "
                     "(exact mode)", "before": before, "after": exact})
    if "prepack" in wanted:
        before = cold(["--no-prepack"])
        rows.append({"config": config["name"], "change": "weights pre-packed at session creation (ONNX Runtime's "
                     "default; before: --no-prepack), exact mode", "before": before, "after": exact})
    return rows


def markdown(report: dict) -> str:
    lines = [
        f"# Benchmarks: {report['title']}",
        "",
        f"Written by `scripts/bench-compare` on {report['date']}: {report['cpu']}, {report['threads']} threads, "
        f"prompt \"{report['prompt']}\", seed {report['seed']}, torch RNG. `warm runs`: the median of R timed runs "
        "after W untimed warmup runs in one process (R / W). Steps are prior/decoder/super-res × batch. Stage seconds are model time; "
        "`vs fp32` is diffusers fp32's warm total over the mode's; `outside ORT` is unclip's own share of "
        "wall time (tokenizer, schedulers, guidance, noise, images: everything but `Session::run`). Pixel differences are against "
        "diffusers fp32's first image (uint8). `cold start` is a fresh `unclip generate` process: OpenVINO compiles "
        "and the CPU device optimizes its graphs there (filling the run's own caches, as a first run on a machine "
        "does; the warm process then loads from them).",
        *(["", f"Rows re-measured later (`--update`): {'; '.join(report['updated'])}."]
          if report.get("updated") else []),
        "",
        "| steps × batch | mode | warm runs | total (s) | vs fp32 | cold start (s) | peak RSS (MiB) | text | prior "
        "| decoder | sr256 | outside ORT | pixel diff max / mean |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def warm_runs(r: dict) -> tuple[int, int]:
        return r.get("runs", report["runs"]), r.get("warmup", report.get("warmup", 1))

    fp32 = {r["config"]: r for r in report["results"] if r["mode"] == "diffusers fp32" and "total" in r}
    for r in report["results"]:
        if "unavailable" in r:
            lines.append(f"| {r['config']} | {r['mode']} | unavailable: {r['unavailable']} |||||||||||")
            continue
        s = r["stages"]
        diff = r.get("pixel_diff_vs_diffusers_fp32")
        reference = fp32.get(r["config"])
        # a ratio only between rows timed alike: a first generation is not a warm one
        ratio = (f"{reference['total'] / r['total']:.2f}×" if reference and warm_runs(reference) == warm_runs(r)
                 else "—")
        pixel = f"{diff['max']} / {diff['mean']:.3f}" if diff else "—"
        share = r.get("outside_ort_share")
        outside = f"{100 * share:.3f}%" if share is not None else "—"
        lines.append(
            f"| {r['config']} | {r['mode']} | {'{} / {}'.format(*warm_runs(r))} | {r['total']:.2f} | {ratio} | {r['cold_seconds']:.2f} | "
            f"{r['peak_rss_mib']:.0f} | {s.get('text', 0):.2f} | {s.get('prior', 0):.2f} | {s.get('decoder', 0):.2f} | "
            f"{s.get('sr256', 0):.2f} | {outside} | {pixel} |"
        )
    if report.get("ablations"):
        lines += [
            "",
            "## Before / after",
            "",
            "One setting changed, cold `unclip generate` processes (load + one generation), "
            f"{report['ablations'][0]['config']} unless the row says otherwise.",
            "",
            "| change | before: seconds / peak RSS (MiB) | after: seconds / peak RSS (MiB) |",
            "|---|---|---|",
        ]
        for a in report["ablations"]:
            if a.get("cpu", report["cpu"]) != report["cpu"]:
                a = {**a, "change": f"{a['change']}, on {a['cpu']}"}
            if "unavailable" in a:
                lines.append(f"| {a['change']} | unavailable: {a['unavailable']} | |")
                continue
            if "before_text" in a:  # a change measured across two runs, entered by hand in the JSON
                lines.append(f"| {a['change']} | {a['before_text']} | {a['after_text']} |")
                continue
            b, f = a["before"], a["after"]
            lines.append(f"| {a['change']} | {b['cold_seconds']:.2f} / {b['peak_rss_mib']:.0f} | "
                         f"{f['cold_seconds']:.2f} / {f['peak_rss_mib']:.0f} |")
    if report.get("fidelity"):
        lines += fidelity_markdown(report["fidelity"])
    # Written sections kept in the JSON (e.g. how the fast mode was chosen), so --render keeps them.
    for section in report.get("sections", []):
        lines += ["", f"## {section['title']}", "", *section["lines"]]
    return "\n".join(lines) + "\n"


def fidelity_markdown(f: dict) -> list[str]:
    """The fast mode's fidelity on the trained shapes model (issue #9's bar), from export/shapes/eval.py."""
    cols = ["all_attributes", "held_out_all_attributes", "shape", "color", "background", "binding", "position",
            "size"]
    lines = ["", "## Fast mode's fidelity on the trained shapes model", "",
             f"`{f['command']}` on `{f['model']}`, {f['date']}, {f['cpu']}: the default configuration "
             f"({f['rows'][0]['captions']} captions, {f['rows'][0]['pictures']} pictures, the same seeds in both "
             "modes), measured from the pixels as docs/shapes-eval.md.", "",
             "| mode | " + " | ".join(c.replace("_", " ") for c in cols) + " | diversity |",
             "|" + "---|" * (len(cols) + 2)]
    for r in f["rows"]:
        lines.append(f"| {r['mode']} | " + " | ".join(f"{100 * r[c]:.1f}%" for c in cols)
                     + f" | {r['diversity']:.4f} |")
    p = f["paired"]
    lines += ["", f"Paired, picture by picture: the same all-attributes verdict on {p['same_all_attributes_verdict']} "
              f"of {p['pictures']} pictures; mean |pixel difference| {p['mean_abs_pixel_diff']:.2f} levels "
              f"(median picture {p['median_per_picture_mean_abs_pixel_diff']:.2f}, max {p['max_abs_pixel_diff']})."
              + "".join(f" {kind.removesuffix('s').replace('_', '-')} captions: {p[kind]['only_this_run']} pictures right only in the "
                        f"fast mode, {p[kind]['only_other_run']} only in the exact mode (McNemar z = "
                        f"{p[kind]['mcnemar_z']})." for kind in ("one_object", "two_objects") if kind in p)]
    if f.get("note"):
        lines += ["", f"Note: {f['note']}."]
    return lines


if __name__ == "__main__":
    main()
