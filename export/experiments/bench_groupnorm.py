"""GroupNorm in ONNX Runtime's CPU provider: torch's export (InstanceNormalization, whose CPU
kernel runs on one thread) against two exports that ORT runs on every intra-op thread. Answers
whether the exporter should rewrite GroupNorm (export/experiments/README.md: it should not).

    python export/experiments/bench_groupnorm.py [--channels 320] [--size 256] [--threads 2] [--runs 12]

Each variant is timed alone (GroupNorm + SiLU, as every diffusers ResnetBlock2D has it) and
inside a resnet-like block (3×3 conv → GroupNorm + SiLU → 3×3 conv, the same weights for every
variant), so ORT's NCHWc layout pass and the reorders it adds around non-NCHWc ops are included.
Variants:
- `instance_norm`: what torch.onnx (opset 17) emits for nn.GroupNorm: Reshape(N, G, −1) →
  InstanceNormalization(scale 1, bias 0) → Reshape back → per-channel Mul, Add.
- `group_norm_21`: ONNX GroupNormalization (opset 21, per-channel scale and bias).
- `reduce_mean`: the same statistics from ReduceMean, Sub, Mul, Sqrt, Div.
Prints the minimum over --runs of each and the largest difference from `instance_norm`.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

GROUPS, EPS = 32, 1e-5


def initializer(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def variant(name: str, channels: int, weight: np.ndarray, bias: np.ndarray):
    """Nodes from x to y (GroupNorm + SiLU), their initializers, the opset they need."""
    affine = [helper.make_node("Mul", ["nr", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y0"])]
    silu = [helper.make_node("Sigmoid", ["y0"], ["sg"]), helper.make_node("Mul", ["y0", "sg"], ["y"])]
    per_channel = [initializer("w", weight.reshape(channels, 1, 1)), initializer("b", bias.reshape(channels, 1, 1))]
    grouped = initializer("shape", np.array([0, GROUPS, -1], np.int64))
    back = [helper.make_node("Shape", ["x"], ["xs"]), helper.make_node("Reshape", ["n", "xs"], ["nr"])]
    if name == "instance_norm":
        nodes = [helper.make_node("Reshape", ["x", "shape"], ["xr"]),
                 helper.make_node("InstanceNormalization", ["xr", "ones", "zeros"], ["n"], epsilon=EPS),
                 *back, *affine, *silu]
        inits = [grouped, initializer("ones", np.ones(GROUPS, np.float32)),
                 initializer("zeros", np.zeros(GROUPS, np.float32)), *per_channel]
        return nodes, inits, 17
    if name == "group_norm_21":
        nodes = [helper.make_node("GroupNormalization", ["x", "w", "b"], ["y0"], num_groups=GROUPS, epsilon=EPS),
                 *silu]
        return nodes, [initializer("w", weight), initializer("b", bias)], 21
    if name == "reduce_mean":
        nodes = [helper.make_node("Reshape", ["x", "shape"], ["xr"]),
                 helper.make_node("ReduceMean", ["xr", "axes"], ["mean"]),
                 helper.make_node("Sub", ["xr", "mean"], ["d"]),
                 helper.make_node("Mul", ["d", "d"], ["d2"]),
                 helper.make_node("ReduceMean", ["d2", "axes"], ["var"]),
                 helper.make_node("Add", ["var", "eps"], ["var_eps"]),
                 helper.make_node("Sqrt", ["var_eps"], ["std"]),
                 helper.make_node("Div", ["d", "std"], ["n"]),
                 *back, *affine, *silu]
        inits = [grouped, initializer("axes", np.array([-1], np.int64)), initializer("eps", np.array(EPS, np.float32)),
                 *per_channel]
        return nodes, inits, 18
    raise ValueError(name)


def session(nodes, inits, opset: int, inp: str, out: str, channels: int, size: int, threads: int):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(inp, TensorProto.FLOAT, [1, channels, size, size])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--channels", type=int, default=320, help="Karlo's super-res UNet at 256²: 320")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=12)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    c = args.channels
    weight = (rng.random(c) + 0.5).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    kernel = (rng.standard_normal((c, c, 3, 3)) * 0.02).astype(np.float32)
    x = rng.standard_normal((1, c, args.size, args.size)).astype(np.float32)
    reference = {}
    for in_block in (False, True):
        for name in ("instance_norm", "group_norm_21", "reduce_mean"):
            nodes, inits, opset = variant(name, c, weight, bias)
            inp, out = "x", "y"
            if in_block:
                nodes = [helper.make_node("Conv", ["input", "k"], ["x"], pads=[1, 1, 1, 1]), *nodes,
                         helper.make_node("Conv", ["y", "k"], ["output"], pads=[1, 1, 1, 1])]
                inits = [*inits, initializer("k", kernel)]
                inp, out = "input", "output"
            s = session(nodes, inits, opset, inp, out, c, args.size, args.threads)
            y = s.run(None, {inp: x})[0]
            seconds = []
            for _ in range(args.runs):
                started = time.perf_counter()
                s.run(None, {inp: x})
                seconds.append(time.perf_counter() - started)
            reference.setdefault(in_block, y)
            diff = float(np.abs(y - reference[in_block]).max())
            where = "conv → GroupNorm + SiLU → conv" if in_block else "GroupNorm + SiLU"
            print(f"{where:32} {name:14} {min(seconds) * 1e3:8.1f} ms   max |Δ| vs instance_norm {diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
