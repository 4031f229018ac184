"""unclip: unCLIP (DALL·E 2) and Kandinsky 2.2 inference on ONNX Runtime, driven from Rust.

    import unclip
    pipe = unclip.Pipeline()                       # the default bundle (models/shapes)
    image = pipe("a red circle on a blue background", seed=0).images[0]
    image.save("out.png")

The argument names are diffusers' (`UnCLIPPipeline`, `KandinskyV22CombinedPipeline`) where
diffusers has them. Models run with the GIL released; Ctrl-C stops a run between denoising steps.
Images come back as PIL images (`output_type="pil"`, needs Pillow) or as one `(N, H, W, 3)` uint8
array (`"np"`), the same bytes `unclip generate` writes for the same seed and settings.
"""

from __future__ import annotations

import glob
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from . import _unclip
from ._unclip import BundleError, Cancelled, ProviderUnavailable

__all__ = [
    "Pipeline",
    "UnCLIPOutput",
    "BundleError",
    "Cancelled",
    "ProviderUnavailable",
    "slerp",
    "default_model",
    "__version__",
]

__version__ = _unclip.version()

# The bundles tried, in order, when none is named (as the `unclip` command line).
_DEFAULT_BUNDLES = ("shapes", "tiny")


def default_model() -> Path:
    """The bundle `Pipeline()` loads: `$UNCLIP_MODEL`; else the copy of models/shapes inside this
    package (the wheel ships it); else models/shapes, then models/tiny, of the source tree the
    extension was built from. Raises FileNotFoundError naming every place searched."""
    env = os.environ.get("UNCLIP_MODEL")
    if env:
        return Path(env)
    roots = [Path(__file__).resolve().parent / "models", Path(_unclip.source_dir()) / "models"]
    searched = []
    for name in _DEFAULT_BUNDLES:
        for root in roots:
            candidate = root / name
            if (candidate / "bundle.json").is_file():
                return candidate
            searched.append(str(candidate))
    raise FileNotFoundError(
        "no model bundle given and no default bundle found (searched: "
        + ", ".join(searched)
        + "); pass model=DIR or set UNCLIP_MODEL to a bundle directory"
    )


def _ort_library() -> Optional[str]:
    """libonnxruntime of the installed `onnxruntime` wheel (a dependency of this package), unless
    ORT_DYLIB_PATH names one; None lets unclip search its usual places."""
    if os.environ.get("ORT_DYLIB_PATH"):
        return None
    try:
        import onnxruntime
    except ImportError:
        return None
    found = sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so*")))
    return found[-1] if found else None


ImageLike = Union["PIL.Image.Image", np.ndarray]  # noqa: F821


def _pil():
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            'output_type="pil" and PIL inputs need Pillow: pip install Pillow (or use output_type="np")'
        ) from e
    return Image


def _to_array(image: ImageLike) -> np.ndarray:
    """A PIL image or an (H, W, 3) uint8 array as a C-contiguous (H, W, 3) uint8 array."""
    if isinstance(image, np.ndarray):
        array = image
    elif hasattr(image, "convert") and hasattr(image, "size"):
        array = np.asarray(image.convert("RGB"))
    else:
        raise ValueError(f"an image is a PIL image or an (H, W, 3) uint8 array, not {type(image).__name__}")
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"an image array must be (H, W, 3) uint8, got {array.shape} {array.dtype}")
    return np.ascontiguousarray(array)


def _to_batch(images: Union[ImageLike, Sequence[ImageLike]]) -> np.ndarray:
    """One image or a list of same-sized images as an (N, H, W, 3) uint8 array."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return _to_array_batch(images)
    if isinstance(images, (list, tuple)):
        arrays = [_to_array(i) for i in images]
        if not arrays:
            raise ValueError("give at least one image")
        if len({a.shape for a in arrays}) > 1:
            # Different sizes: CLIP preprocessing resizes each; pad-free, one call per image.
            raise ValueError("images of one call must have the same size; call once per size")
        return np.stack(arrays)
    return _to_array(images)[None]


def _to_array_batch(array: np.ndarray) -> np.ndarray:
    if array.dtype != np.uint8 or array.shape[-1] != 3:
        raise ValueError(f"an image batch must be (N, H, W, 3) uint8, got {array.shape} {array.dtype}")
    return np.ascontiguousarray(array)


def _endpoint(value: Any) -> Any:
    """An interpolation endpoint for the extension: a prompt, an (H, W, 3) uint8 image or a (D,)
    float32 embedding."""
    if isinstance(value, str):
        return value
    if isinstance(value, np.ndarray) and value.ndim == 1:
        return np.ascontiguousarray(value, dtype=np.float32)
    return _to_array(value)


@dataclass
class UnCLIPOutput:
    """What a call returns, as diffusers' `ImagePipelineOutput` (plus the embeddings decoded)."""

    images: Union[list, np.ndarray]
    """PIL images (`output_type="pil"`) or an (N, H, W, 3) uint8 array (`"np"`), prompt-major."""
    image_embeds: np.ndarray
    """The CLIP image embeddings decoded, (N, D) float32."""
    seed: int
    """The seed the noise came from (random when none was given)."""
    library_seconds: float = 0.0
    """Seconds the run took inside the Rust library (the rest of a call's time is Python's)."""


class _Progress:
    """A tqdm bar for the stage running (when tqdm is installed and progress is on; one at a
    time, as diffusers shows its loops) and the user's callback; returns False to stop the run."""

    def __init__(self, enabled: bool, callback: Optional[Callable[[str, int, int], Any]]):
        self.callback = callback
        self.bar = None
        self.stage = None
        self.tqdm = None
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.tqdm = tqdm
            except ImportError:
                pass

    def __call__(self, stage: str, step: int, steps: int) -> bool:
        if self.tqdm is not None:
            if stage != self.stage:
                self.close()
                self.stage = stage
                self.bar = self.tqdm(total=steps, desc=stage, leave=False)
            self.bar.update(1)
        if self.callback is not None:
            return self.callback(stage, step, steps) is not False
        return True

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Pipeline:
    """A loaded model bundle. Shareable across threads: concurrent calls take turns per model
    call, each with the GIL released."""

    def __init__(
        self,
        model: Union[str, os.PathLike, None] = None,
        device: str = "cpu",
        precision: str = "f32",
        threads: Optional[int] = None,
        low_memory: bool = False,
        progress: bool = True,
    ):
        """`model=None` loads the default bundle (`default_model()`). `device`: cpu, cuda[:N],
        tensorrt[:N], openvino[:CPU|GPU|NPU]; `precision`: f32 (exact), bf16, fp16, int8, auto;
        `threads`: ONNX Runtime intra-op threads (default all cores; the first pipeline of the
        process fixes it); `low_memory`: keep a stage's sessions only while it runs; `progress`:
        tqdm bars when tqdm is installed."""
        path = default_model() if model is None else Path(os.fspath(model))
        if not path.is_dir():
            raise FileNotFoundError(f"model bundle {str(path)!r} is not a directory (a bundle has a bundle.json)")
        self.model = path
        self.progress = progress
        self._device = device
        self._pipe = _unclip._Pipeline(str(path), device, precision, threads, low_memory, _ort_library())

    @classmethod
    def from_pretrained(cls, model: Union[str, os.PathLike, None] = None, **kwargs: Any) -> "Pipeline":
        """diffusers' spelling of the constructor: `model` is a bundle directory (None: the
        default bundle). diffusers-only arguments such as `torch_dtype` are refused."""
        return cls(model, **kwargs)

    def to(self, device: str) -> "Pipeline":
        """diffusers' `.to(device)`: the device is chosen at load (`Pipeline(device=...)`), so
        this returns the pipeline when `device` is the one it runs on and raises otherwise."""
        current = self._device.split(":")[0]
        if device.split(":")[0] != current:
            raise ValueError(
                f"this pipeline runs on {self._device!r}; load it with unclip.Pipeline(model, device={device!r})"
            )
        return self

    # ---- properties ------------------------------------------------------------------------
    @property
    def embedding_dim(self) -> int:
        """D, the width of CLIP embeddings."""
        return self._pipe.embedding_dim

    @property
    def image_size(self) -> int:
        """Side of the images made by default."""
        return self._pipe.image_size

    @property
    def family(self) -> str:
        """The bundle's model family: "karlo" or "kandinsky2.2"."""
        return self._pipe.family

    def __repr__(self) -> str:
        return f"unclip.Pipeline({str(self.model)!r}, family={self.family!r}, precision={self._pipe.precision!r})"

    # ---- generation ------------------------------------------------------------------------
    def __call__(
        self,
        prompt: Union[str, Sequence[str]] = "",
        *,
        negative_prompt: Optional[str] = None,
        num_images_per_prompt: int = 1,
        prior_num_inference_steps: Optional[int] = None,
        decoder_num_inference_steps: Optional[int] = None,
        super_res_num_inference_steps: Optional[int] = None,
        prior_guidance_scale: Optional[float] = None,
        decoder_guidance_scale: Optional[float] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        image: Optional[ImageLike] = None,
        strength: Optional[float] = None,
        prior_scheduler: Optional[str] = None,
        decoder_scheduler: Optional[str] = None,
        seed: Optional[int] = None,
        rng: str = "fast",
        output_type: str = "pil",
        callback_on_step_end: Optional[Callable[[str, int, int], Any]] = None,
    ) -> UnCLIPOutput:
        """Text to image. A list of prompts is a batch; each makes `num_images_per_prompt` images,
        prompt-major. Unset steps and guidance scales take the bundle's defaults. `height`/`width`
        (Kandinsky 2.2: multiples of 64; Karlo: one of the bundle's sizes, square). `image` and
        `strength` (Kandinsky 2.2): img2img from that image. `seed=None` draws a random seed
        (returned in `.seed`); `rng="torch"` reproduces `torch.Generator("cpu").manual_seed(seed)`,
        so a seed gives diffusers' image. `callback_on_step_end(stage, step, steps)` runs after
        every denoising step; returning False stops the run (`unclip.Cancelled`)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompt is a string or a non-empty list of strings")
        settings, seed = self._settings(
            negative_prompt=negative_prompt, num_images_per_prompt=num_images_per_prompt,
            prior_steps=prior_num_inference_steps, decoder_steps=decoder_num_inference_steps,
            super_res_steps=super_res_num_inference_steps, prior_guidance_scale=prior_guidance_scale,
            decoder_guidance_scale=decoder_guidance_scale, prior_scheduler=prior_scheduler,
            decoder_scheduler=decoder_scheduler, height=height, width=width, seed=seed, rng=rng,
            strength=strength,
        )
        init = None if image is None else _to_array(image)[None]
        return self._run(
            lambda cb: self._pipe.generate(prompts, settings, init, cb), seed, output_type, callback_on_step_end
        )

    def vary(
        self,
        image: Union[ImageLike, Sequence[ImageLike]],
        n: int = 1,
        *,
        decoder_num_inference_steps: Optional[int] = None,
        super_res_num_inference_steps: Optional[int] = None,
        decoder_guidance_scale: Optional[float] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        seed: Optional[int] = None,
        rng: str = "fast",
        output_type: str = "pil",
        callback_on_step_end: Optional[Callable[[str, int, int], Any]] = None,
    ) -> UnCLIPOutput:
        """Image variations (DALL·E 2 §3.1; diffusers `UnCLIPImageVariationPipeline`): each image's
        CLIP embedding decoded `n` times."""
        batch = _to_batch(image)
        settings, seed = self._settings(
            num_images_per_prompt=n, decoder_steps=decoder_num_inference_steps,
            super_res_steps=super_res_num_inference_steps, decoder_guidance_scale=decoder_guidance_scale,
            height=height, width=width, seed=seed, rng=rng,
        )
        return self._run(lambda cb: self._pipe.vary(batch, settings, cb), seed, output_type, callback_on_step_end)

    def decode(
        self,
        image_embeds: np.ndarray,
        *,
        decoder_num_inference_steps: Optional[int] = None,
        super_res_num_inference_steps: Optional[int] = None,
        decoder_guidance_scale: Optional[float] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        seed: Optional[int] = None,
        rng: str = "fast",
        output_type: str = "pil",
        callback_on_step_end: Optional[Callable[[str, int, int], Any]] = None,
    ) -> UnCLIPOutput:
        """Decodes CLIP image embeddings `(N, D)` or `(D,)` (no prior), one image each."""
        embeds = np.ascontiguousarray(image_embeds, dtype=np.float32)
        if embeds.ndim == 1:
            embeds = embeds[None]
        settings, seed = self._settings(
            decoder_steps=decoder_num_inference_steps, super_res_steps=super_res_num_inference_steps,
            decoder_guidance_scale=decoder_guidance_scale, height=height, width=width, seed=seed, rng=rng,
        )
        return self._run(lambda cb: self._pipe.decode(embeds, settings, cb), seed, output_type, callback_on_step_end)

    def interpolate(
        self,
        a: Any,
        b: Any,
        frames: int = 8,
        *,
        weights: Optional[Sequence[float]] = None,
        seed: Optional[int] = None,
        rng: str = "fast",
        output_type: str = "pil",
        callback_on_step_end: Optional[Callable[[str, int, int], Any]] = None,
        **steps: Any,
    ) -> UnCLIPOutput:
        """Interpolation (DALL·E 2 §3.2): `frames` images slerped from `a` to `b` (a prompt, an
        image or a `(D,)` embedding each), the same decoder noise in every frame. With `weights`,
        `a` is a list of endpoints and one image of their weighted sum is made instead
        (diffusers' `KandinskyV22PriorPipeline.interpolate`). `steps`: the step and guidance
        arguments of `__call__`."""
        settings, seed = self._settings(seed=seed, rng=rng, **_steps(steps))
        if weights is not None:
            endpoints = [_endpoint(e) for e in (a if b is None else [a, b])]
            run = lambda cb: self._pipe.weighted_mix(endpoints, list(weights), settings, cb)  # noqa: E731
        else:
            ea, eb = _endpoint(a), _endpoint(b)
            run = lambda cb: self._pipe.interpolate(ea, eb, frames, settings, cb)  # noqa: E731
        return self._run(run, seed, output_type, callback_on_step_end)

    def textdiff(
        self,
        image: Any,
        from_: str,
        to: str,
        frames: int = 6,
        *,
        max_theta: float = 0.5,
        seed: Optional[int] = None,
        rng: str = "fast",
        output_type: str = "pil",
        callback_on_step_end: Optional[Callable[[str, int, int], Any]] = None,
        **steps: Any,
    ) -> UnCLIPOutput:
        """Text diff (DALL·E 2 §3.3): `image`'s embedding (an image, a prompt or a `(D,)`
        embedding) rotated toward the direction from caption `from_` to caption `to`, θ from 0
        to `max_theta` over `frames` frames."""
        settings, seed = self._settings(seed=seed, rng=rng, **_steps(steps))
        subject = _endpoint(image)
        return self._run(
            lambda cb: self._pipe.textdiff(subject, from_, to, frames, max_theta, settings, cb),
            seed, output_type, callback_on_step_end,
        )

    # ---- embeddings ------------------------------------------------------------------------
    def encode_text(self, texts: Union[str, Sequence[str]]) -> np.ndarray:
        """CLIP text embeddings, (N, D) float32."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self._pipe.encode_text(texts)

    def encode_image(self, images: Union[ImageLike, Sequence[ImageLike]]) -> np.ndarray:
        """CLIP image embeddings, (N, D) float32."""
        return self._pipe.encode_image(_to_batch(images))

    # ---- internals -------------------------------------------------------------------------
    def _settings(self, *, seed: Optional[int], rng: str, height=None, width=None, **kwargs):
        if rng not in ("fast", "torch"):
            raise ValueError(f'rng {rng!r}: use "fast" or "torch"')
        if seed is None:
            seed = secrets.randbits(63)
        if not isinstance(seed, int) or seed < 0 or seed >= 2**64:
            raise ValueError(f"seed {seed!r}: use an integer in 0..2**64")
        if height is not None and width is None:
            width = height if self.family != "kandinsky2.2" else None
        if width is not None and height is None:
            height = width
        if height is not None and width is None:
            raise ValueError("height given without width: give both")
        return _unclip._Settings(seed=seed, rng=rng, width=width, height=height, **kwargs), seed

    def _run(self, call, seed: int, output_type: str, callback) -> UnCLIPOutput:
        if output_type not in ("pil", "np"):
            raise ValueError(f'output_type {output_type!r}: use "pil" or "np"')
        if output_type == "pil":
            _pil()  # fail before the run, not after it
        progress = _Progress(self.progress, callback)
        try:
            images, embeds, seconds = call(progress)
        finally:
            progress.close()
        if output_type == "pil":
            Image = _pil()
            images = [Image.fromarray(i) for i in images]
        return UnCLIPOutput(images=images, image_embeds=embeds, seed=seed, library_seconds=seconds)


def _steps(steps: dict) -> dict:
    """`__call__`'s step and guidance arguments, as the extension names them."""
    names = {
        "prior_num_inference_steps": "prior_steps",
        "decoder_num_inference_steps": "decoder_steps",
        "super_res_num_inference_steps": "super_res_steps",
        "prior_guidance_scale": "prior_guidance_scale",
        "decoder_guidance_scale": "decoder_guidance_scale",
        "negative_prompt": "negative_prompt",
        "height": "height",
        "width": "width",
    }
    unknown = set(steps) - set(names)
    if unknown:
        raise TypeError(f"unexpected keyword arguments: {sorted(unknown)}")
    return {names[k]: v for k, v in steps.items()}


def slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation of two (D,) embeddings at t in [0, 1]: the direction slerped, the
    norm interpolated linearly (as `unclip interpolate`)."""
    return _unclip.slerp(
        np.ascontiguousarray(a, dtype=np.float32), np.ascontiguousarray(b, dtype=np.float32), float(t)
    )
