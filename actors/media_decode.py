"""Decoding fetched media bytes under the decode caps: images with PIL, audio and video with torchcodec.

`decode` returns the payload bytes of one reference (see `actors.media_codec` for the layouts) or the
`MediaError` that explains why it cannot be used; a decoder's own message is cleaned of C++ source
locations and object addresses before it reaches errors/.
"""

from __future__ import annotations

import io
import re

import numpy as np

from actors.media_codec import encode_payload
from actors.media_spec import MediaError, MediaSpec, first_line


def decode(modality: str, data: bytes, spec: MediaSpec) -> bytes | MediaError:
    """The payload bytes of `data` decoded as `modality`, or the MediaError saying why it cannot be used
    (returned, not raised: one bad reference must not fail the block)."""
    try:
        if modality == "image":
            array = decode_image(data, spec)
        elif modality == "audio":
            array = decode_audio(data, spec)
        else:
            array = decode_video(data, spec)
        return encode_payload(modality, array)
    except MediaError as exc:
        return exc
    except Exception as exc:  # any decoder failure is this reference's error, not the block's
        return MediaError(f"cannot decode as {modality}: {_decoder_message(exc)}")


def decode_image(data: bytes, spec: MediaSpec) -> np.ndarray:
    """RGB uint8 (H, W, 3), EXIF orientation applied (as transformers' `load_image` does)."""
    from PIL import Image, ImageOps

    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise MediaError(f"over the {spec.max_image_pixels:,} pixel cap ({first_line(exc)})") from None
    width, height = image.size  # from the header: checked before any pixel is decoded
    if width * height > spec.max_image_pixels:
        pixels = width * height
        raise MediaError(
            f"{width}x{height} image is {pixels:,} pixels, over the {spec.max_image_pixels:,} pixel cap"
        )
    image = ImageOps.exif_transpose(image).convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def decode_audio(data: bytes, spec: MediaSpec) -> np.ndarray:
    """Mono float32 (N,) at `spec.audio_sample_rate` (torchcodec resamples and downmixes)."""
    from torchcodec.decoders import AudioDecoder

    decoder = AudioDecoder(data, sample_rate=spec.audio_sample_rate, num_channels=1)
    duration = decoder.metadata.duration_seconds
    if duration is not None and duration > spec.max_audio_seconds:
        raise MediaError(f"{duration:.1f} s of audio, over the {spec.max_audio_seconds:g} s cap")
    samples = decoder.get_all_samples().data
    seconds = samples.shape[-1] / spec.audio_sample_rate
    if seconds > spec.max_audio_seconds:
        raise MediaError(f"{seconds:.1f} s of audio, over the {spec.max_audio_seconds:g} s cap")
    return samples[0].numpy().astype(np.float32, copy=False)


def decode_video(data: bytes, spec: MediaSpec) -> np.ndarray:
    """Every frame as uint8 (T, 3, H, W): one layout for all videos (transformers infers a batch's layout
    from its first video, so mixing layouts would silently corrupt the others)."""
    from torchcodec.decoders import VideoDecoder

    decoder = VideoDecoder(data, dimension_order="NCHW")
    meta = decoder.metadata
    frames = len(decoder)
    if frames > spec.max_video_frames:
        raise MediaError(f"{frames} frames, over the {spec.max_video_frames} frame cap")
    duration = meta.duration_seconds
    if duration is not None and duration > spec.max_video_seconds:
        raise MediaError(f"{duration:.1f} s of video, over the {spec.max_video_seconds:g} s cap")
    if meta.width and meta.height and meta.width * meta.height > spec.max_image_pixels:
        raise MediaError(
            f"{meta.width}x{meta.height} frames are {meta.width * meta.height:,} pixels each, "
            f"over the {spec.max_image_pixels:,} pixel cap"
        )
    if frames == 0:
        raise MediaError("cannot decode as video: no frames")
    return decoder.get_frames_in_range(0, frames).data.numpy()


def _decoder_message(exc: BaseException) -> str:
    text = first_line(exc)
    text = re.sub(r"^\w+, \S+\.cpp:\d+, ", "", text)  # torchcodec's C++ source location
    text = re.sub(r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", text)  # PIL's file object
    match = re.match(r"The best (\w+) stream is unknown", text)
    if match:
        text = f"no {match.group(1)} stream"
    return f"{type(exc).__name__}: {text}"[:300]
