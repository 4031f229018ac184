"""int8 models for a bundle, calibrated on the pipeline's own activations: unclip's fast mode on
CPUs without AMX (`--precision int8`, and `--precision auto` on CPUs with VNNI).

    python export/quantize_bundle.py BUNDLE [--out OUT] [--unclip target/release/unclip]
        [--prompts FILE] [--seeds 0,1] [--steps 25/25/7] [--samples 16] [--capture-dir DIR]
        [--models prior,decoder,super_res_first,...] [--keep-fp32 PATTERN,...] [--fidelity-seeds 100,101]
        [--max-mean-diff 8.0] [--fidelity-only] [--relabel-uint8]

Writes `<model>.int8.onnx` (+ `.int8.onnx.data` above 2 GB) beside each quantized model and
records them in `bundle.json`: each model entry gains an `int8` entry (file, sha256, external
data), and the manifest a `quantization.int8` block with how it was made (calibration prompts,
seeds, steps, samples per model, the nodes kept in fp32) and the fidelity measured at the end. A
bundle without them loads and runs as before; `bundle.json` changes, so images made before carry
the old manifest's sha256.

How (ONNX Runtime's static quantization, `onnxruntime.quantization.quantize_static`):
- QDQ format, int8 weights per output channel, symmetric activations calibrated as int8 and then
  stored as uint8 with zero point 128 (`activations_to_uint8`: the same grid, the same numbers).
  ONNX Runtime's x86 kernels take uint8 activations (u8 x s8, without saturation on VNNI): it
  relabels int8 pairs itself (QDQS8ToU8Transformer) but only for a tensor with one consumer, and
  a Conv whose input and output end up relabeled differently is not fused into QLinearConv; it
  then runs in fp32 on weights dequantized at every call (57 of a Karlo decoder's 93 convolutions,
  which made int8 slower than fp32 there).
- Calibration: `unclip generate --capture-model-inputs DIR` records every call of every model
  (each denoising step's sample, timestep and conditioning, guidance rows included) over
  `--prompts` × `--seeds` at `--steps`; each model is calibrated on `--samples` of its calls
  spread evenly over the run (every timestep range, not just the first), min/max of each tensor.
  Diffusion UNets are more sensitive to int8 than classifiers (Q-Diffusion, arXiv 2302.04304):
  calibration across timesteps is what keeps the early, high-noise steps in range.
- Only Conv, MatMul and Gemm are quantized; the time embedding, the first and last convolutions
  and the prior's output projection stay fp32 (`--keep-fp32`): static quantization of an SD UNet
  has failed at the time projection (onnxruntime#19183), and the last layers set the image's
  range.
- The text encoder, text_proj and the image encoder stay fp32 (small, run once per call).
- Fidelity: after quantizing, `unclip generate` runs both precisions on `--fidelity-seeds` with
  prompts other than the calibration's and records the uint8 pixel difference (mean, max),
  whether the mean is within `--max-mean-diff`, and the seconds of each (the speedup on the
  machine that quantized); `--precision auto` uses int8 only for a bundle whose fidelity passed
  and whose int8 models were faster there (small models can be slower in int8: the quantize and
  dequantize steps cost more than the int8 kernels save).

Needs onnx and onnxruntime (`pip install onnx onnxruntime numpy`), no torch.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bundle_format  # noqa: E402

REPO = HERE.parent
# Calibration captions: the shapes world's vocabulary and general scenes, so that a bundle's
# text-conditioned activations see a spread of prompts. Fidelity is measured on other prompts.
CALIBRATION_PROMPTS = [
    "a red circle on a blue background",
    "a small green star at the left on a white background",
    "a yellow triangle and a purple square on a black background",
    "a photo of a dog on a beach at sunset",
    "an oil painting of a lighthouse in a storm",
    "a bowl of fruit on a wooden table",
    "",
    "a large orange square at the top on a gray background",
]
FIDELITY_PROMPTS = [
    "a blue star on a yellow background",
    "a white circle and a red triangle on a green background",
    "a city street at night in the rain",
]
# Nodes kept in fp32 (substrings of ONNX node names as torch's exporter writes them from module
# paths): the time embedding and projection, the first and last convolutions, the prior's
# output projection.
METHOD = ("onnxruntime quantize_static: QDQ, int8 per-channel weights, symmetric int8 activations "
          "relabeled as uint8 (zero point 128), MinMax, Conv/MatMul/Gemm")
KEEP_FP32 = ["time_embedding", "time_proj", "time_embed", "conv_in", "conv_out", "proj_to_clip_embeddings",
             "class_embedding"]


def model_keys(m: dict) -> list[str]:
    """The models worth quantizing: the prior, the decoder UNet and every upsampler's UNets."""
    keys = [m["prior"]["model"], m["decoder"]["model"]]
    for upsampler in m["upsamplers"]:
        keys += [upsampler["first"], upsampler["last"]]
    return list(dict.fromkeys(keys))


def capture(unclip: Path, bundle: Path, prompts: list[str], seeds: list[int], steps: str, out: Path) -> None:
    """Runs exact-mode generations that write every model call's inputs under `out`."""
    prior, decoder, sr = steps.split("/")
    for seed in seeds:
        for i in range(0, len(prompts), 2):
            batch = prompts[i:i + 2]
            cmd = [str(unclip), "generate", *batch, "--model", str(bundle), "--seed", str(seed),
                   "--prior-steps", prior, "--decoder-steps", decoder, "--sr-steps", sr,
                   "--capture-model-inputs", str(out), "-o", str(out / "calibration.png"), "--quiet"]
            subprocess.run(cmd, check=True)


class Calls:
    """The captured calls of one model: `DIR/<model>/<call>/<input>.npy`, in call order."""

    def __init__(self, root: Path, key: str, inputs: list[str], samples: int):
        import numpy as np

        calls = sorted(p for p in (root / key).iterdir() if p.is_dir())
        if not calls:
            raise SystemExit(f"no captured calls of {key} under {root}")
        picks = sorted(set(np.linspace(0, len(calls) - 1, min(samples, len(calls))).round().astype(int)))
        self.calls = [calls[i] for i in picks]
        self.total = len(calls)
        self.inputs = inputs

    def reader(self):
        import numpy as np
        from onnxruntime.quantization import CalibrationDataReader

        calls, inputs = self.calls, self.inputs

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter(calls)

            def get_next(self):
                call = next(self.it, None)
                if call is None:
                    return None
                return {name: np.load(call / f"{name}.npy") for name in inputs}

            def rewind(self):
                self.it = iter(calls)

        return Reader()


def fp32_nodes(model_path: Path, patterns: list[str]) -> list[str]:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    return [n.name for n in model.graph.node if any(p in n.name for p in patterns)]


def quantize(src: Path, dst: Path, calls: Calls, keep: list[str], large: bool) -> dict:
    """Quantizes `src` into `dst` (and `dst.data` when `large`: weights as external data)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        pre = Path(tmp) / "pre.onnx"
        # Shape inference and graph cleanup first, as onnxruntime's quantization guide asks.
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True, save_as_external_data=large,
                          all_tensors_to_one_file=True)
        excluded = fp32_nodes(pre, keep)
        for stale in (dst, dst.with_name(dst.name + ".data")):
            stale.unlink(missing_ok=True)
        quantize_static(
            str(pre), str(dst), calls.reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["Conv", "MatMul", "Gemm"],
            nodes_to_exclude=excluded,
            calibrate_method=CalibrationMethod.MinMax,
            use_external_data_format=large,
            # The calibration model reduces each tensor to its min and max in the graph
            # (ReduceMin/ReduceMax outputs), so every sample's ranges are kept, not activations.
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
    relabeled = activations_to_uint8(dst)
    return {"excluded_nodes": len(excluded), "calls_captured": calls.total, "calls_used": len(calls.calls),
            "uint8_activations": relabeled}


def activations_to_uint8(path: Path) -> int:
    """Relabels every activation's QuantizeLinear/DequantizeLinear pair from int8 (zero point z) to
    uint8 (zero point z + 128): q_u8 = q_s8 + 128 on the same scale, so every value is unchanged.
    Weights (DequantizeLinear of an initializer) stay int8. Returns the pairs relabeled."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    relabeled: dict[str, str] = {}

    def uint8_zero_point(name: str) -> str:
        if name not in relabeled:
            zp = numpy_helper.to_array(inits[name]).astype(np.int16) + 128
            graph.initializer.append(numpy_helper.from_array(zp.astype(np.uint8), name + "_u8"))
            relabeled[name] = name + "_u8"
        return relabeled[name]

    def int8_zero_point(node) -> bool:
        return len(node.input) > 2 and node.input[2] in inits and inits[node.input[2]].data_type == onnx.TensorProto.INT8

    pairs = 0
    for node in graph.node:
        activation = node.op_type == "QuantizeLinear" or (
            node.op_type == "DequantizeLinear" and getattr(producer.get(node.input[0]), "op_type", "") == "QuantizeLinear")
        if activation and int8_zero_point(node):
            node.input[2] = uint8_zero_point(node.input[2])
            pairs += node.op_type == "QuantizeLinear"
    # zero points no node reads any more
    used = {i for node in graph.node for i in node.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    onnx.save(model, str(path))
    return pairs


def relink_data(bundle: Path, file: str) -> list[dict]:
    """The external-data file quantize_static wrote next to `file`, as manifest entries."""
    data = bundle / (file + ".data")
    if not data.exists():
        return []
    return [{"file": data.name, "sha256": bundle_format.sha256(data)}]


def pixel_diff(a: Path, b: Path) -> tuple[float, int]:
    import numpy as np
    from PIL import Image

    x = np.asarray(Image.open(a).convert("RGB"), dtype=np.int16)
    y = np.asarray(Image.open(b).convert("RGB"), dtype=np.int16)
    d = np.abs(x - y)
    return float(d.mean()), int(d.max())


def fidelity(unclip: Path, bundle: Path, seeds: list[int], steps: str, limit: float) -> dict:
    """int8 against f32 on FIDELITY_PROMPTS × `seeds`: uint8 pixel differences, and the generation
    seconds of each precision (cold processes, this machine) for the speedup."""
    prior, decoder, sr = steps.split("/")
    means, maxes = [], []
    seconds = {"f32": 0.0, "int8": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for k, prompt in enumerate(FIDELITY_PROMPTS):
                out = {}
                for precision in ("f32", "int8"):
                    out[precision] = Path(tmp) / f"{seed}_{k}_{precision}.png"
                    run = subprocess.run([str(unclip), "generate", prompt, "--model", str(bundle), "--seed", str(seed),
                                          "--prior-steps", prior, "--decoder-steps", decoder, "--sr-steps", sr,
                                          "--precision", precision, "-o", str(out[precision]), "--quiet", "--json"],
                                         check=True, capture_output=True, text=True)
                    seconds[precision] += json.loads(run.stdout)["seconds"]
                mean, peak = pixel_diff(out["f32"], out["int8"])
                means.append(mean)
                maxes.append(peak)
    mean = sum(means) / len(means)
    return {"prompts": FIDELITY_PROMPTS, "seeds": seeds, "steps": steps,
            "pixel_diff_mean": round(mean, 3), "pixel_diff_max": max(maxes),
            "max_mean_diff": limit, "passed": mean <= limit,
            "f32_seconds": round(seconds["f32"], 2), "int8_seconds": round(seconds["int8"], 2),
            "speedup": round(seconds["f32"] / max(seconds["int8"], 1e-9), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--out", type=Path, help="write a copy here instead of changing BUNDLE")
    ap.add_argument("--capture-dir", type=Path,
                    help="keep the captured calibration inputs here, and reuse them when it holds some "
                         "(default: a temporary directory)")
    ap.add_argument("--unclip", type=Path, default=REPO / "target" / "release" / "unclip")
    ap.add_argument("--prompts", type=Path, help="calibration prompts, one per line (default: built in)")
    ap.add_argument("--seeds", default="0,1", help="calibration seeds (default 0,1)")
    ap.add_argument("--steps", default="25/25/7", help="prior/decoder/super-res steps of the calibration runs")
    ap.add_argument("--samples", type=int, default=16, help="calls per model to calibrate on (default 16)")
    ap.add_argument("--models", help="model keys to quantize (default: prior, decoder, upsamplers)")
    ap.add_argument("--keep-fp32", default=",".join(KEEP_FP32), help="node-name substrings left in fp32")
    ap.add_argument("--fidelity-seeds", default="100,101", help="seeds of the fidelity check ('' skips it)")
    ap.add_argument("--fidelity-steps", help="steps of the fidelity check (default: --steps)")
    # 8 levels: the shapes model's int8 models differ from f32 by 5.0 levels on average at 1024²
    # (5.4 at 64²) while its paired pixel evaluation finds no significant change in what it draws
    # (docs/benchmarks-epyc.md); random-weight models, which amplify every error, exceed it.
    ap.add_argument("--max-mean-diff", type=float, default=8.0,
                    help="mean uint8 pixel difference int8 vs f32 that passes (default 8.0)")
    ap.add_argument("--fidelity-only", action="store_true",
                    help="keep the bundle's int8 models; measure their fidelity and speed again (this machine)")
    ap.add_argument("--relabel-uint8", action="store_true",
                    help="keep the calibration of int8 models made with int8 activations; relabel them as uint8 "
                         "(activations_to_uint8: the same file a new quantization would write), then the fidelity check")
    args = ap.parse_args()
    if args.relabel_uint8:
        manifest = bundle_format.check(args.bundle)
        if "int8" not in manifest.get("quantization", {}):
            raise SystemExit(f"{args.bundle} has no int8 models to relabel")
        quant = manifest["quantization"]["int8"]
        for key, entry in manifest["models"].items():
            if "int8" in entry:
                path = args.bundle / entry["int8"]["file"]
                quant["models"].setdefault(key, {})["uint8_activations"] = activations_to_uint8(path)
                entry["int8"]["sha256"] = bundle_format.sha256(path)
        quant["method"] = METHOD
        quant.pop("fidelity", None)
        bundle_format.write(args.bundle, manifest)
        if not args.fidelity_seeds:
            print(json.dumps(quant["models"]))
            return
        args.fidelity_only = True
    if args.fidelity_only:
        manifest = bundle_format.check(args.bundle)
        if "int8" not in manifest.get("quantization", {}):
            raise SystemExit(f"{args.bundle} has no int8 models to measure")
        seeds = [int(s) for s in args.fidelity_seeds.split(",") if s]
        result = fidelity(args.unclip, args.bundle, seeds, args.fidelity_steps or args.steps, args.max_mean_diff)
        manifest["quantization"]["int8"]["fidelity"] = result
        bundle_format.write(args.bundle, manifest)
        print(json.dumps(result))
        return

    manifest = bundle_format.check(args.bundle, hashes=False)
    bundle = args.bundle
    if args.out:
        # copied, not hard-linked: onnx refuses external data files with several links
        args.out.mkdir(parents=True, exist_ok=True)
        for item in args.bundle.iterdir():
            if item.is_file() and item.name != bundle_format.MANIFEST:
                target = args.out / item.name
                if not target.exists():
                    shutil.copyfile(item, target)
        shutil.copy(args.bundle / bundle_format.MANIFEST, args.out / bundle_format.MANIFEST)
        bundle = args.out
    prompts = (args.prompts.read_text().splitlines() if args.prompts else CALIBRATION_PROMPTS)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    keys = args.models.split(",") if args.models else model_keys(manifest)
    keep = [p for p in args.keep_fp32.split(",") if p]

    # drop int8 entries of an earlier run before capturing (capture runs exact mode anyway)
    manifest.pop("quantization", None)
    for entry in manifest["models"].values():
        entry.pop("int8", None)
    bundle_format.write(bundle, manifest)

    report = {}
    with tempfile.TemporaryDirectory(dir=bundle) as tmp:
        root = args.capture_dir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        if args.capture_dir and any(args.capture_dir.glob("*/*")):
            print(f"reusing the calibration inputs in {root}", file=sys.stderr)
        else:
            capture(args.unclip, bundle, prompts, seeds, args.steps, root)
            print(f"captured calibration inputs in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        for key in keys:
            entry = manifest["models"][key]
            src = bundle / entry["file"]
            file = str(Path(entry["file"]).with_suffix("")) + ".int8.onnx"
            started = time.perf_counter()
            calls = Calls(root, key, [i["name"] for i in entry["inputs"]], args.samples)
            large = bool(entry.get("external_data")) or src.stat().st_size > (1 << 30)
            report[key] = quantize(src, bundle / file, calls, keep, large)
            report[key]["seconds"] = round(time.perf_counter() - started, 1)
            entry["int8"] = {"file": file, "sha256": bundle_format.sha256(bundle / file),
                             "external_data": relink_data(bundle, file)}
            print(f"{key}: {report[key]}", file=sys.stderr)

    import onnxruntime

    manifest["quantization"] = {"int8": {
        "method": METHOD,
        "onnxruntime": onnxruntime.__version__,
        "calibration": {"prompts": prompts, "seeds": seeds, "steps": args.steps, "samples_per_model": args.samples},
        "keep_fp32": keep,
        "models": report,
    }}
    bundle_format.write(bundle, manifest)
    fidelity_seeds = [int(s) for s in args.fidelity_seeds.split(",") if s]
    if fidelity_seeds:
        result = fidelity(args.unclip, bundle, fidelity_seeds, args.fidelity_steps or args.steps, args.max_mean_diff)
        manifest["quantization"]["int8"]["fidelity"] = result
        bundle_format.write(bundle, manifest)
        print(f"fidelity: {json.dumps(result)}", file=sys.stderr)
    bundle_format.check(bundle)
    print(json.dumps({"bundle": str(bundle), "models": report,
                      "fidelity": manifest["quantization"]["int8"].get("fidelity")}))


if __name__ == "__main__":
    main()
