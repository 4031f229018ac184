"""Exports a Karlo-layout diffusers unCLIP checkpoint to an unclip ONNX bundle (docs/architecture.md,
"Bundle format").

    python export/export_bundle.py CHECKPOINT_DIR OUT_DIR [--fp16] [--opset N]
                                   [--external-data auto|always|never] [--name NAME]
                                   [--no-image-encoder] [--prior-guidance-scale F]
                                   [--decoder-guidance-scale F]
    python export/export_bundle.py DECODER_DIR OUT_DIR --prior PRIOR_DIR [--fp16] [--opset N] [--name NAME]

The second form exports Kandinsky 2.2 (the decoder and prior checkpoints as diffusers saves
`KandinskyV22Pipeline` and `KandinskyV22PriorPipeline`) into a bundle of family `kandinsky2.2`
(format version 2, `bundle_format.py`): text and image encoders, the prior, the latent UNet, the
MoVQ decoder and encoder as their own models, and the image encoder's embedding of an all-zero
image (the negative embedding without a negative prompt, diffusers' `get_zero_embed`) as a tensor.

Every component becomes one ONNX file with a dynamic batch dimension (torch's legacy TorchScript
exporter: the one that works for every unCLIP component). Each file is checked in ONNX
Runtime against the torch module on random inputs at batch sizes other than the traced one; the
export fails above 1e-4 (fp32) / 1e-2 (fp16) max abs difference. `bundle.json` records names,
dtypes and shapes of every input and output, scheduler configs, defaults, constants and the
sha256 of every file, so the Rust loader can validate a bundle before its first run. The format
itself (field order, version, the loader's checks) lives in `bundle_format.py`, which needs no torch.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import register_text_proj  # noqa: E402
import bundle_format  # noqa: E402
from bundle_format import FORMAT_VERSION, sha256  # noqa: E402,F401  (FORMAT_VERSION: re-exported)

EXPORTER_VERSION = "0.1.0"
TWO_GB = 2**31 - 1
TRACE_BATCH = 2
CHECK_BATCHES = (1, 3)
TOLERANCE = {"float32": 1e-4, "float16": 1e-2}

# Karlo's sampling defaults (diffusers UnCLIPPipeline.__call__ signature).
DEFAULTS = {"prior": (25, 4.0), "decoder": (25, 8.0), "super_res": (7, None)}
# Kandinsky 2.2's (KandinskyV22PriorPipeline / KandinskyV22Pipeline.__call__).
KANDINSKY_DEFAULTS = {"prior": (25, 4.0), "decoder": (100, 4.0), "size": 512}


# ---- wrappers: plain tensors in, plain tensors out, names fixed by the bundle format ----------


class TextEncoder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        # diffusers' UnCLIPPipeline._encode_prompt calls the text encoder without an attention
        # mask (CLIP's causal mask only), so the bundle's text encoder takes ids alone.
        out = self.model(input_ids)
        return out.text_embeds, out.last_hidden_state


class ImageEncoder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values).image_embeds


class Prior(torch.nn.Module):
    """PriorTransformer without `post_process_latents` (done in Rust from clip_mean/clip_std)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, hidden_states, timestep, proj_embedding, encoder_hidden_states, attention_mask):
        return self.model(
            hidden_states,
            timestep=timestep,
            proj_embedding=proj_embedding,
            encoder_hidden_states=encoder_hidden_states,
            attention_mask=attention_mask,
        ).predicted_image_embedding


class TextProj(torch.nn.Module):
    def __init__(self, model, cfg: bool):
        super().__init__()
        self.model = model
        self.cfg = cfg

    def forward(self, image_embeddings, prompt_embeds, text_encoder_hidden_states):
        return self.model(
            image_embeddings=image_embeddings,
            prompt_embeds=prompt_embeds,
            text_encoder_hidden_states=text_encoder_hidden_states,
            do_classifier_free_guidance=self.cfg,
        )


class Decoder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, sample, timestep, encoder_hidden_states, class_labels, attention_mask):
        return self.model(
            sample=sample,
            timestep=timestep,
            encoder_hidden_states=encoder_hidden_states,
            class_labels=class_labels,
            attention_mask=attention_mask,
        ).sample


class SuperRes(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, sample, timestep):
        return self.model(sample=sample, timestep=timestep).sample


class LatentUNet(torch.nn.Module):
    """Kandinsky 2.2's decoder UNet: conditioned through `added_cond_kwargs["image_embeds"]` only
    (`addition_embed_type="image"`, `encoder_hid_dim_type="image_proj"`), as
    `KandinskyV22Pipeline.__call__` calls it; 8 output channels (ε and the learned variance)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, sample, timestep, image_embeds):
        return self.model(sample=sample, timestep=timestep, encoder_hidden_states=None,
                          added_cond_kwargs={"image_embeds": image_embeds}).sample


class MovqDecoder(torch.nn.Module):
    """`VQModel.decode(latents, force_not_quantize=True)`: no codebook lookup; the latents are also
    the SpatialNorm condition of every decoder block (`vq_model.py`, `vae.py` Decoder)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, latents):
        return self.model.decode(latents, force_not_quantize=True).sample


class MovqEncoder(torch.nn.Module):
    """`VQModel.encode(image).latents`: before quantization, unscaled (img2img's start)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        return self.model.encode(image).latents


# ---- export machinery --------------------------------------------------------------------------


def constants_to_initializers(model) -> None:
    graph = model.graph
    keep = []
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = node.attribute[0].t
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def io_spec(name: str, tensor: torch.Tensor, dims: dict[int, str]) -> dict:
    shape = [dims.get(i, int(s)) for i, s in enumerate(tensor.shape)]
    dtype = {torch.float32: "float32", torch.int64: "int64", torch.float16: "float16"}[tensor.dtype]
    return {"name": name, "dtype": dtype, "shape": shape}


def proto_size(model) -> int:
    """The serialized size of `model`, or (when it is too large for protobuf to serialize: the
    Karlo-size prior, 4.1 GB) the bytes of its initializers, which are then over 2 GB anyway."""
    from google.protobuf.message import EncodeError

    try:
        return model.ByteSize()
    except (EncodeError, ValueError):
        weights = sum(len(t.raw_data) for t in model.graph.initializer)
        return max(weights, TWO_GB + 1)


def all_tensors(graph):
    """Every tensor of `graph`: initializers and node attributes (Constant values), subgraphs included.
    torch.onnx.export spills both kinds to external files over 2 GB."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from all_tensors(attr.g)
            for sub in attr.graphs:
                yield from all_tensors(sub)


def external_span(tensor, src: Path) -> tuple[Path, int, int]:
    """(file, offset, length) of an externally stored tensor whose files are under `src`."""
    from onnx.external_data_helper import ExternalDataInfo

    info = ExternalDataInfo(tensor)
    source, offset = src / info.location, info.offset or 0
    return source, offset, info.length if info.length is not None else source.stat().st_size - offset


def external_bytes(model, src: Path) -> int:
    """Bytes of `model`'s tensors stored outside the proto, in files under `src` (torch.onnx.export
    does so over 2 GB)."""
    from onnx.external_data_helper import uses_external_data

    return sum(external_span(t, src)[2] for t in all_tensors(model.graph) if uses_external_data(t))


def merge_external_data(model, src: Path, data: Path, align: int = 4096) -> None:
    """Copies the external tensors of `model` (files under `src`) into the one file `data`,
    tensor by tensor through a 16 MB buffer, and points them at it; offsets aligned to `align`
    (a page, as onnx aligns tensors for memory mapping). The weights are never all in memory."""
    from onnx import TensorProto
    from onnx.external_data_helper import uses_external_data

    written = 0
    with open(data, "wb") as out:
        for tensor in all_tensors(model.graph):
            if not uses_external_data(tensor):
                continue
            source, offset, length = external_span(tensor, src)
            pad = -written % align
            out.write(b"\0" * pad)
            written += pad
            with open(source, "rb") as f:
                f.seek(offset)
                left = length
                while left:
                    chunk = f.read(min(left, 1 << 24))
                    if not chunk:
                        raise SystemExit(f"{source}: {length - left} of {length} bytes of {tensor.name}: file too short")
                    out.write(chunk)
                    left -= len(chunk)
            # onnx's set_external_data wants the bytes in the proto, which is what this avoids.
            del tensor.external_data[:]
            tensor.data_location = TensorProto.EXTERNAL
            for k, v in (("location", data.name), ("offset", str(written)), ("length", str(length))):
                entry = tensor.external_data.add()
                entry.key, entry.value = k, v
            written += length


class Exporter:
    def __init__(self, out: Path, opset: int, fp16: bool, external_data: str):
        self.out = out
        self.opset = opset
        self.fp16 = fp16
        self.external_data = external_data
        self.models: dict[str, dict] = {}
        self.report: dict[str, dict] = {}

    def export(self, key: str, module: torch.nn.Module, inputs: dict, outputs: list[str], dims: dict, make_inputs,
               tolerance: float | None = None):
        """Exports `module` to `<key>.onnx`, checks it in ONNX Runtime, records its manifest entry.

        `inputs` are example tensors at TRACE_BATCH; `dims[name]` maps axis → symbolic name;
        `make_inputs(batch)` builds fresh random inputs for the ORT check."""
        import onnx

        started = time.time()
        path = self.out / f"{key}.onnx"
        tmp = self.out / f".{key}.tmp"
        tmp.mkdir(exist_ok=True)
        raw = tmp / "model.onnx"
        module.eval()
        with torch.no_grad():
            example_out = module(*inputs.values())
        if isinstance(example_out, torch.Tensor):
            example_out = (example_out,)
        dynamic_axes = {n: dims.get(n, {}) for n in list(inputs) + outputs}
        torch.onnx.export(
            module,
            tuple(inputs.values()),
            str(raw),
            input_names=list(inputs),
            output_names=outputs,
            dynamic_axes={k: v for k, v in dynamic_axes.items() if v},
            opset_version=self.opset,
            do_constant_folding=True,
            dynamo=False,
        )
        for stale in list(self.out.glob(f"{key}.onnx*")):
            stale.unlink()
        entry = {"file": path.name}
        data_name = f"{key}.onnx.data"
        model = onnx.load(str(raw), load_external_data=False)
        spilled = external_bytes(model, tmp)
        if spilled and self.external_data == "never":
            raise SystemExit(f"{key}: {spilled} bytes of weights exceed protobuf's 2 GB limit; use --external-data auto")
        if spilled and not self.fp16:
            # Over 2 GB torch wrote one file per tensor; they are concatenated into one file without
            # loading them: loading the weights into the proto and saving it with
            # save_as_external_data held 2.7× the weights on top of the module (measured).
            merge_external_data(model, tmp, self.out / data_name)
            onnx.save_model(model, str(path))
            external = True
        else:
            onnx.load_external_data_for_model(model, str(tmp))
            if self.fp16:
                from onnxruntime.transformers.float16 import convert_float_to_float16

                # Inputs and outputs stay float32: the runtime's tensors are f32 whatever the weights.
                # Constant nodes become initializers first: the converter keeps initializers feeding
                # blocked ops (Resize scales) in float32, but converts Constant nodes, which ORT rejects.
                constants_to_initializers(model)
                model = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
            size = proto_size(model)
            external = self.external_data == "always" or (self.external_data == "auto" and size > TWO_GB)
            if size > TWO_GB and self.external_data == "never":
                raise SystemExit(f"{key}: {size} bytes exceeds protobuf's 2 GB limit; use --external-data auto")
            if external:
                # torch writes a >2 GB model as hundreds of per-tensor files; one file per model.
                onnx.save_model(
                    model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024,
                )
            else:
                onnx.save_model(model, str(path))
        shutil.rmtree(tmp)
        del model  # the proto may hold every weight: free it before the check loads them again
        gc.collect()
        entry["sha256"] = sha256(path)
        if external:
            entry["external_data"] = [{"file": data_name, "sha256": sha256(self.out / data_name)}]
        entry["inputs"] = [io_spec(n, t, dims.get(n, {})) for n, t in inputs.items()]
        entry["outputs"] = [io_spec(n, t, dims.get(n, {})) for n, t in zip(outputs, example_out)]
        max_diff = self.check(key, module, path, make_inputs, tolerance)
        self.models[key] = entry
        files = [path] + ([self.out / data_name] if external else [])
        self.report[key] = {
            "max_abs_diff": max_diff,
            "bytes": sum(f.stat().st_size for f in files),
            "seconds": round(time.time() - started, 2),
            "external_data": external,
        }
        print(f"  {key:<16} max|ort-torch| = {max_diff:.3e}  {self.report[key]['bytes']:>12} bytes  "
              f"{self.report[key]['seconds']:.1f} s", flush=True)

    def check(self, key: str, module, path: Path, make_inputs, tolerance: float | None = None) -> float:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        worst = 0.0
        for batch in CHECK_BATCHES:
            feeds = make_inputs(batch)
            with torch.no_grad():
                expected = module(*feeds.values())
            if isinstance(expected, torch.Tensor):
                expected = (expected,)
            got = session.run(None, {k: v.numpy() for k, v in feeds.items()})
            for e, g in zip(expected, got):
                if tuple(e.shape) != g.shape:
                    raise SystemExit(f"{key}: batch {batch}: ORT shape {g.shape} != torch {tuple(e.shape)}")
                worst = max(worst, float(np.abs(e.float().numpy() - g).max()))
        tol = max(TOLERANCE["float16" if self.fp16 else "float32"], tolerance or 0.0)
        if not worst <= tol:
            raise SystemExit(f"{key}: ONNX Runtime differs from torch by {worst:.3e} > {tol:.0e}")
        return worst


def export_prior(ex: Exporter, prior, dim: int, text_hidden: int) -> tuple[list, list]:
    """Exports a `PriorTransformer` (both families) and returns its `clip_mean`, `clip_std`."""
    num_embeddings = prior.config.num_embeddings

    def prior_inputs(b):
        mask = torch.ones(b, num_embeddings, dtype=torch.int64)
        mask[:, torch.randint(1, num_embeddings, (1,)).item():] = 0
        return {
            "hidden_states": torch.randn(b, dim),
            "timestep": torch.randint(0, 1000, (b,), dtype=torch.int64),
            "proj_embedding": torch.randn(b, dim),
            "encoder_hidden_states": torch.randn(b, num_embeddings, text_hidden),
            "attention_mask": mask,
        }

    batch0 = {0: "batch"}
    ex.export("prior", Prior(prior), prior_inputs(TRACE_BATCH), ["predicted_image_embedding"],
              {k: batch0 for k in ["hidden_states", "timestep", "proj_embedding", "encoder_hidden_states",
                                   "attention_mask", "predicted_image_embedding"]}, prior_inputs)
    return prior.clip_mean.detach().reshape(-1).tolist(), prior.clip_std.detach().reshape(-1).tolist()


def image_processor_entry(feature: dict, image_size: int) -> dict:
    """The manifest's `image_processor` from a `preprocessor_config.json` (CLIP's defaults where
    it says nothing)."""
    crop = feature.get("crop_size", {"height": image_size})
    crop = crop["height"] if isinstance(crop, dict) else int(crop)
    shortest = feature.get("size", {"shortest_edge": image_size})
    shortest = shortest.get("shortest_edge", image_size) if isinstance(shortest, dict) else int(shortest)
    return {
        "shortest_edge": shortest,
        "crop_size": crop,
        "resample": "bicubic",
        "rescale_factor": feature.get("rescale_factor", 1 / 255),
        "mean": feature.get("image_mean", [0.48145466, 0.4578275, 0.40821073]),
        "std": feature.get("image_std", [0.26862954, 0.26130258, 0.27577711]),
    }


def scheduler_config(checkpoint: Path, name: str) -> dict:
    return json.loads((checkpoint / name / "scheduler_config.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path, help="Karlo-layout diffusers checkpoint directory")
    ap.add_argument("out", type=Path, help="bundle directory to write")
    ap.add_argument("--fp16", action="store_true", help="store weights in float16 (I/O stays float32)")
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--external-data", choices=["auto", "always", "never"], default="auto",
                    help="weights in a separate .data file: auto = only above protobuf's 2 GB limit")
    ap.add_argument("--name", help="model name recorded in bundle.json (default: checkpoint folder name)")
    ap.add_argument("--no-image-encoder", action="store_true", help="skip the CLIP image tower")
    ap.add_argument("--quantize", choices=["int8"],
                    help="then add int8 models with export/quantize_bundle.py (its default calibration; "
                         "run that script for its options)")
    ap.add_argument("--prior-guidance-scale", type=float,
                    help=f"the bundle's default prior guidance (default {DEFAULTS['prior'][1]:g}, Karlo's and "
                         "Kandinsky's)")
    ap.add_argument("--prior", type=Path,
                    help="Kandinsky 2.2: the prior checkpoint (KandinskyV22PriorPipeline); CHECKPOINT is then "
                         "the decoder's (KandinskyV22Pipeline)")
    ap.add_argument("--decoder-guidance-scale", type=float,
                    help=f"the bundle's default decoder guidance (default {DEFAULTS['decoder'][1]:g}, Karlo's, "
                         f"or {KANDINSKY_DEFAULTS['decoder'][1]:g}, Kandinsky's; "
                         "the shapes model's is chosen by export/shapes/eval.py's sweep)")
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    if args.prior is not None:
        export_kandinsky(args)
        return
    if args.prior_guidance_scale is None:
        args.prior_guidance_scale = DEFAULTS["prior"][1]
    if args.decoder_guidance_scale is None:
        args.decoder_guidance_scale = DEFAULTS["decoder"][1]
    register_text_proj()
    import diffusers
    import transformers
    from diffusers import PriorTransformer, UNet2DConditionModel, UNet2DModel
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
    from transformers import AutoTokenizer, CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    ckpt: Path = args.checkpoint
    if not (ckpt / "model_index.json").exists():
        raise SystemExit(f"{ckpt} is not a diffusers checkpoint (no model_index.json)")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    ex = Exporter(out, args.opset, args.fp16, args.external_data)
    started = time.time()
    print(f"exporting {ckpt} -> {out}", flush=True)

    def load(cls, sub, **kw):
        return cls.from_pretrained(ckpt / sub, torch_dtype=torch.float32, **kw).eval()

    # -- tokenizer: the HF tokenizers JSON that the Rust `tokenizers` crate reads.
    tokenizer = AutoTokenizer.from_pretrained(ckpt / "tokenizer")
    tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))
    max_length = int(tokenizer.model_max_length)

    # -- text encoder
    text_encoder = load(CLIPTextModelWithProjection, "text_encoder")
    vocab = text_encoder.config.vocab_size

    def ids(b):
        return {"input_ids": torch.randint(0, vocab, (b, max_length), dtype=torch.int64)}

    ex.export("text_encoder", TextEncoder(text_encoder), ids(TRACE_BATCH), ["text_embeds", "last_hidden_state"],
              {"input_ids": {0: "batch"}, "text_embeds": {0: "batch"}, "last_hidden_state": {0: "batch"}}, ids)
    dim = text_encoder.config.projection_dim
    text_hidden = text_encoder.config.hidden_size
    # Each network is freed once exported (13.7 GB together at Karlo size). That did not lower the
    # peak there (23.6 GB RSS before and after, measured): it is inside one network's export. On a
    # 2.25 GiB module the peak was onnx.load(load_external_data=True) + save_model with external
    # data (8.9 GiB, 4.0× the weights); `merge_external_data` avoids both (5.1 GiB, 2.3×, the module
    # plus ONNX Runtime's copy in the check; same files byte for byte). At Karlo size that lowered
    # the whole export's peak only from 23.6 to 22.2 GB (max RSS, 2026-12-05): what is left is
    # elsewhere, most likely the upsamplers' check (torch and ORT at 256², batch 3) — not measured.
    del text_encoder

    # -- image encoder (optional: Karlo's text-to-image checkpoint has none)
    has_image_encoder = (ckpt / "image_encoder").exists() and not args.no_image_encoder
    image_size = 224
    if has_image_encoder:
        image_encoder = load(CLIPVisionModelWithProjection, "image_encoder")
        image_size = image_encoder.config.image_size

        def pixels(b):
            return {"pixel_values": torch.randn(b, 3, image_size, image_size)}

        ex.export("image_encoder", ImageEncoder(image_encoder), pixels(TRACE_BATCH), ["image_embeds"],
                  {"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}}, pixels)
        del image_encoder

    # -- prior
    clip_mean, clip_std = export_prior(ex, load(PriorTransformer, "prior"), dim, text_hidden)
    batch0 = {0: "batch"}

    # -- text_proj, in its non-CFG and CFG forms (the CFG form prepends the learned null embedding)
    text_proj = load(UnCLIPTextProjModel, "text_proj")
    extra = text_proj.config.clip_extra_context_tokens

    def proj_inputs(cfg):
        def make(b):
            tb = 2 * b if cfg else b
            return {
                "image_embeddings": torch.randn(b, dim),
                "prompt_embeds": torch.randn(tb, dim),
                "text_encoder_hidden_states": torch.randn(tb, max_length, text_hidden),
            }
        return make

    for key, cfg in (("text_proj", False), ("text_proj_cfg", True)):
        tb = "cfg_batch" if cfg else "batch"
        ex.export(key, TextProj(text_proj, cfg), proj_inputs(cfg)(TRACE_BATCH),
                  ["encoder_hidden_states", "additive_clip_time_embeddings"],
                  {"image_embeddings": batch0, "prompt_embeds": {0: tb}, "text_encoder_hidden_states": {0: tb},
                   "encoder_hidden_states": {0: tb}, "additive_clip_time_embeddings": {0: tb}}, proj_inputs(cfg))

    # -- decoder
    decoder = load(UNet2DConditionModel, "decoder")
    dsize = decoder.config.sample_size
    dsize = dsize if isinstance(dsize, int) else dsize[0]
    din = decoder.config.in_channels
    cross = decoder.config.cross_attention_dim
    time_embed = text_proj.config.time_embed_dim

    def decoder_inputs(b):
        mask = torch.ones(b, extra + max_length, dtype=torch.int64)
        mask[:, extra + torch.randint(1, max_length, (1,)).item():] = 0
        return {
            "sample": torch.randn(b, din, dsize, dsize),
            "timestep": torch.randint(0, 1000, (b,), dtype=torch.int64),
            "encoder_hidden_states": torch.randn(b, extra + max_length, cross),
            "class_labels": torch.randn(b, time_embed),
            "attention_mask": mask,
        }

    ex.export("decoder", Decoder(decoder), decoder_inputs(TRACE_BATCH), ["noise_pred"],
              {k: batch0 for k in ["sample", "timestep", "encoder_hidden_states", "class_labels", "attention_mask",
                                   "noise_pred"]}, decoder_inputs)
    del decoder

    # -- super-resolution: 64 → 256 (`super_res_first/last`, as Karlo), then any further stage
    # `super_res_<size>_first/last` (e.g. the shapes model's 256 → 1024), in increasing size. Each
    # pair is "first" for every step but the last and "last" for the last (UnCLIPPipeline.__call__).
    upsamplers = []
    stages = [("super_res", "super_res_scheduler")]
    extra_sizes = sorted(int(p.name.split("_")[2]) for p in ckpt.glob("super_res_*_first")
                         if p.name.split("_")[2].isdigit())
    stages += [(f"super_res_{n}", f"super_res_{n}_scheduler") for n in extra_sizes]
    sr_steps, _ = DEFAULTS["super_res"]
    for prefix, scheduler_dir in stages:
        first = load(UNet2DModel, f"{prefix}_first")
        size = first.config.sample_size
        size = size if isinstance(size, int) else size[0]
        cin = first.config.in_channels

        def sr_inputs(b, size=size, cin=cin):
            return {"sample": torch.randn(b, cin, size, size),
                    "timestep": torch.randint(0, 1000, (b,), dtype=torch.int64)}

        sr_dims = {k: batch0 for k in ["sample", "timestep", "noise_pred"]}
        # GroupNorm over 1024² maps: ONNX Runtime's InstanceNormalization sums ~10⁶ values per
        # group in a different order than torch: 2.3e-4 measured on the shapes 256 → 1024 ε
        # upsampler, 1.5e-3 on its x₀ fine-tune — a fifth of one 8-bit level (2/255 = 7.8e-3).
        tol = 3e-3 if size >= 512 else None
        ex.export(f"{prefix}_first", SuperRes(first), sr_inputs(TRACE_BATCH), ["noise_pred"], sr_dims, sr_inputs, tol)
        del first
        last = load(UNet2DModel, f"{prefix}_last")
        ex.export(f"{prefix}_last", SuperRes(last), sr_inputs(TRACE_BATCH), ["noise_pred"], sr_dims, sr_inputs, tol)
        del last
        upsamplers.append({
            "name": f"sr{size}",
            "first": f"{prefix}_first",
            "last": f"{prefix}_last",
            "scheduler": scheduler_config(ckpt, scheduler_dir),
            "default_steps": sr_steps,
            "sample_size": size,
            "in_channels": cin // 2,
        })

    # -- manifest
    feature = {}
    fe_path = ckpt / "feature_extractor" / "preprocessor_config.json"
    if fe_path.exists():
        feature = json.loads(fe_path.read_text())
    model_name = args.name or ckpt.resolve().name
    prior_steps, prior_gs = DEFAULTS["prior"][0], args.prior_guidance_scale
    decoder_steps, decoder_gs = DEFAULTS["decoder"][0], args.decoder_guidance_scale
    manifest = bundle_format.manifest(
        name=model_name,
        source=ckpt.resolve().name,
        exporter={
            "version": EXPORTER_VERSION, "opset": args.opset, "torch": torch.__version__,
            "diffusers": diffusers.__version__, "transformers": transformers.__version__,
        },
        dtype="float16" if args.fp16 else "float32",
        embedding_dim=dim,
        tokenizer={
            "file": "tokenizer.json",
            "sha256": sha256(out / "tokenizer.json"),
            "max_length": max_length,
            "pad_token": str(tokenizer.pad_token),
            "pad_id": int(tokenizer.pad_token_id),
        },
        image_processor=image_processor_entry(feature, image_size),
        models=ex.models,
        text_encoder={"model": "text_encoder"},
        image_encoder={"model": "image_encoder"} if has_image_encoder else None,
        prior={
            "model": "prior",
            "scheduler": scheduler_config(ckpt, "prior_scheduler"),
            "default_steps": prior_steps,
            "default_guidance_scale": prior_gs,
            "clip_mean": clip_mean,
            "clip_std": clip_std,
        },
        decoder={
            "model": "decoder",
            "text_proj": "text_proj",
            "text_proj_cfg": "text_proj_cfg",
            "scheduler": scheduler_config(ckpt, "decoder_scheduler"),
            "default_steps": decoder_steps,
            "default_guidance_scale": decoder_gs,
            "sample_size": dsize,
            "in_channels": din,
            "clip_extra_context_tokens": extra,
        },
        upsamplers=upsamplers,
    )
    bundle_format.write(out, manifest)
    summary = {"bundle": str(out), "seconds": round(time.time() - started, 1), "models": ex.report}
    if args.quantize == "int8":
        subprocess.run([sys.executable, str(Path(__file__).with_name("quantize_bundle.py")), str(out)], check=True)
    print(json.dumps(summary))


def export_kandinsky(args) -> None:
    """`DECODER_DIR OUT --prior PRIOR_DIR`: a `kandinsky2.2` bundle (see the module docstring)."""
    import diffusers
    import transformers
    from diffusers import PriorTransformer, UNet2DConditionModel, VQModel
    from transformers import AutoTokenizer, CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    decoder_dir, prior_dir, out = args.checkpoint, args.prior, args.out
    for ckpt, cls in ((decoder_dir, "KandinskyV22Pipeline"), (prior_dir, "KandinskyV22PriorPipeline")):
        index = ckpt / "model_index.json"
        if not index.exists():
            raise SystemExit(f"{ckpt} is not a diffusers checkpoint (no model_index.json)")
        found = json.loads(index.read_text()).get("_class_name")
        if found != cls:
            raise SystemExit(f"{ckpt}: model_index.json says {found}, expected {cls}")
    out.mkdir(parents=True, exist_ok=True)
    ex = Exporter(out, args.opset, args.fp16, args.external_data)
    started = time.time()
    print(f"exporting {decoder_dir} + {prior_dir} -> {out}", flush=True)

    def load(cls, ckpt, sub):
        return cls.from_pretrained(ckpt / sub, torch_dtype=torch.float32).eval()

    batch0 = {0: "batch"}
    tokenizer = AutoTokenizer.from_pretrained(prior_dir / "tokenizer")
    tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))
    max_length = int(tokenizer.model_max_length)

    # -- text encoder: ids only, as KandinskyV22PriorPipeline._encode_prompt calls it
    text_encoder = load(CLIPTextModelWithProjection, prior_dir, "text_encoder")
    vocab = text_encoder.config.vocab_size

    def ids(b):
        return {"input_ids": torch.randint(0, vocab, (b, max_length), dtype=torch.int64)}

    ex.export("text_encoder", TextEncoder(text_encoder), ids(TRACE_BATCH), ["text_embeds", "last_hidden_state"],
              {"input_ids": batch0, "text_embeds": batch0, "last_hidden_state": batch0}, ids)
    dim = text_encoder.config.projection_dim
    text_hidden = text_encoder.config.hidden_size
    del text_encoder

    # -- image encoder, and its embedding of an all-zero image (`get_zero_embed`: zeros fed raw,
    # without CLIP's normalization), stored as a tensor: a constant of the weights
    image_encoder = load(CLIPVisionModelWithProjection, prior_dir, "image_encoder")
    image_size = image_encoder.config.image_size

    def pixels(b):
        return {"pixel_values": torch.randn(b, 3, image_size, image_size)}

    ex.export("image_encoder", ImageEncoder(image_encoder), pixels(TRACE_BATCH), ["image_embeds"],
              {"pixel_values": batch0, "image_embeds": batch0}, pixels)
    with torch.no_grad():
        zero = image_encoder(torch.zeros(1, 3, image_size, image_size)).image_embeds[0]
    np.save(out / "zero_image_embed.npy", zero.numpy().astype(np.float32))
    del image_encoder

    # -- prior: PriorTransformer as for Karlo (post_process_latents done in Rust)
    clip_mean, clip_std = export_prior(ex, load(PriorTransformer, prior_dir, "prior"), dim, text_hidden)

    # -- MoVQ first: its scale factor sets the latent sizes of the UNet's checks
    movq = load(VQModel, decoder_dir, "movq")
    factor = 2 ** (len(movq.config.block_out_channels) - 1)
    channels = movq.config.latent_channels
    spatial = {0: "batch", 2: "height", 3: "width"}

    def latent_side(b):
        # 8×8 latents when tracing, other (and non-square) sizes in the checks: dynamic H and W
        return {TRACE_BATCH: (8, 8), 1: (8, 16), 3: (16, 8)}[b]

    def movq_decoder_inputs(b):
        h, w = latent_side(b)
        return {"latents": torch.randn(b, channels, h, w)}

    def movq_encoder_inputs(b):
        h, w = latent_side(b)
        return {"image": torch.rand(b, 3, h * factor, w * factor) * 2 - 1}

    ex.export("movq_decoder", MovqDecoder(movq), movq_decoder_inputs(TRACE_BATCH), ["image"],
              {"latents": spatial, "image": spatial}, movq_decoder_inputs)
    ex.export("movq_encoder", MovqEncoder(movq), movq_encoder_inputs(TRACE_BATCH), ["latents"],
              {"image": spatial, "latents": spatial}, movq_encoder_inputs)
    del movq

    # -- latent UNet
    unet = load(UNet2DConditionModel, decoder_dir, "unet")
    unet_in = unet.config.in_channels
    hid = unet.config.encoder_hid_dim

    def unet_inputs(b):
        h, w = latent_side(b)
        return {"sample": torch.randn(b, unet_in, h, w),
                "timestep": torch.randint(0, 1000, (b,), dtype=torch.int64),
                "image_embeds": torch.randn(b, hid)}

    ex.export("unet", LatentUNet(unet), unet_inputs(TRACE_BATCH), ["noise_pred"],
              {"sample": spatial, "timestep": batch0, "image_embeds": batch0, "noise_pred": spatial}, unet_inputs)
    unet_out = unet.config.out_channels
    del unet

    feature = json.loads((prior_dir / "image_processor" / "preprocessor_config.json").read_text())
    zero_file = "zero_image_embed.npy"
    manifest = bundle_format.kandinsky_manifest(
        name=args.name or decoder_dir.resolve().name,
        source=f"{decoder_dir.resolve().name} + {prior_dir.resolve().name}",
        exporter={"version": EXPORTER_VERSION, "opset": args.opset, "torch": torch.__version__,
                  "diffusers": diffusers.__version__, "transformers": transformers.__version__},
        dtype="float16" if args.fp16 else "float32",
        embedding_dim=dim,
        tokenizer={"file": "tokenizer.json", "sha256": sha256(out / "tokenizer.json"), "max_length": max_length,
                   "pad_token": str(tokenizer.pad_token), "pad_id": int(tokenizer.pad_token_id)},
        image_processor=image_processor_entry(feature, image_size),
        models=ex.models,
        text_encoder={"model": "text_encoder"},
        image_encoder={"model": "image_encoder"},
        prior={"model": "prior", "scheduler": scheduler_config(prior_dir, "scheduler"),
               "default_steps": KANDINSKY_DEFAULTS["prior"][0],
               "default_guidance_scale": (KANDINSKY_DEFAULTS["prior"][1] if args.prior_guidance_scale is None
                                          else args.prior_guidance_scale),
               "clip_mean": clip_mean, "clip_std": clip_std,
               "negative_image_embed": {"file": zero_file, "sha256": sha256(out / zero_file)}},
        decoder={"model": "unet", "scheduler": scheduler_config(decoder_dir, "scheduler"),
                 "default_steps": KANDINSKY_DEFAULTS["decoder"][0],
                 "default_guidance_scale": (KANDINSKY_DEFAULTS["decoder"][1] if args.decoder_guidance_scale is None
                                            else args.decoder_guidance_scale),
                 "default_size": KANDINSKY_DEFAULTS["size"], "latent_channels": channels,
                 "out_channels": unet_out, "movq_decoder": "movq_decoder", "movq_encoder": "movq_encoder",
                 "movq_scale_factor": factor},
    )
    bundle_format.write(out, manifest)
    bundle_format.check(out)
    print(json.dumps({"bundle": str(out), "seconds": round(time.time() - started, 1), "models": ex.report}))


if __name__ == "__main__":
    main()
