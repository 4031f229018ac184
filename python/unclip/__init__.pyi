# Typed interface of the `unclip` package (python/unclip/__init__.py documents each call).
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence, Union, overload

import numpy as np
import numpy.typing as npt

try:
    from PIL.Image import Image as _PILImage
except ImportError:  # Pillow is optional
    _PILImage = Any  # type: ignore[misc, assignment]

__version__: str

ImageLike = Union[_PILImage, npt.NDArray[np.uint8]]
Endpoint = Union[str, ImageLike, npt.NDArray[np.float32]]
StepCallback = Callable[[str, int, int], Any]

class BundleError(Exception): ...
class ProviderUnavailable(Exception): ...
class Cancelled(Exception): ...

@dataclass
class UnCLIPOutput:
    images: Union[list[_PILImage], npt.NDArray[np.uint8]]
    image_embeds: npt.NDArray[np.float32]
    seed: int
    library_seconds: float = ...

def default_model() -> Path: ...
def slerp(a: npt.ArrayLike, b: npt.ArrayLike, t: float) -> npt.NDArray[np.float32]: ...

class Pipeline:
    model: Path
    progress: bool
    def __init__(
        self,
        model: Union[str, os.PathLike[str], None] = None,
        device: str = "cpu",
        precision: Literal["f32", "bf16", "fp16", "int8", "auto"] = "f32",
        threads: Optional[int] = None,
        low_memory: bool = False,
        progress: bool = True,
    ) -> None: ...
    @classmethod
    def from_pretrained(cls, model: Union[str, os.PathLike[str], None] = None, **kwargs: Any) -> Pipeline: ...
    def to(self, device: str) -> Pipeline: ...
    @property
    def embedding_dim(self) -> int: ...
    @property
    def image_size(self) -> int: ...
    @property
    def family(self) -> Literal["karlo", "kandinsky2.2"]: ...
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
        prior_scheduler: Optional[Literal["unclip", "ddpm", "ddim", "dpm++"]] = None,
        decoder_scheduler: Optional[Literal["unclip", "ddpm", "ddim", "dpm++"]] = None,
        seed: Optional[int] = None,
        rng: Literal["fast", "torch"] = "fast",
        output_type: Literal["pil", "np"] = "pil",
        callback_on_step_end: Optional[StepCallback] = None,
    ) -> UnCLIPOutput: ...
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
        rng: Literal["fast", "torch"] = "fast",
        output_type: Literal["pil", "np"] = "pil",
        callback_on_step_end: Optional[StepCallback] = None,
    ) -> UnCLIPOutput: ...
    def decode(
        self,
        image_embeds: npt.ArrayLike,
        *,
        decoder_num_inference_steps: Optional[int] = None,
        super_res_num_inference_steps: Optional[int] = None,
        decoder_guidance_scale: Optional[float] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        seed: Optional[int] = None,
        rng: Literal["fast", "torch"] = "fast",
        output_type: Literal["pil", "np"] = "pil",
        callback_on_step_end: Optional[StepCallback] = None,
    ) -> UnCLIPOutput: ...
    def interpolate(
        self,
        a: Union[Endpoint, Sequence[Endpoint]],
        b: Optional[Endpoint],
        frames: int = 8,
        *,
        weights: Optional[Sequence[float]] = None,
        seed: Optional[int] = None,
        rng: Literal["fast", "torch"] = "fast",
        output_type: Literal["pil", "np"] = "pil",
        callback_on_step_end: Optional[StepCallback] = None,
        **steps: Any,
    ) -> UnCLIPOutput: ...
    def textdiff(
        self,
        image: Endpoint,
        from_: str,
        to: str,
        frames: int = 6,
        *,
        max_theta: float = 0.5,
        seed: Optional[int] = None,
        rng: Literal["fast", "torch"] = "fast",
        output_type: Literal["pil", "np"] = "pil",
        callback_on_step_end: Optional[StepCallback] = None,
        **steps: Any,
    ) -> UnCLIPOutput: ...
    def encode_text(self, texts: Union[str, Sequence[str]]) -> npt.NDArray[np.float32]: ...
    def encode_image(self, images: Union[ImageLike, Sequence[ImageLike]]) -> npt.NDArray[np.float32]: ...
