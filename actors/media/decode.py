"""Decoding fetched media bytes under the decode caps: images with PIL, audio and video with torchcodec.

`decode` returns the decoded array of one reference (in the layout of `actors.media.codec`) or the
`MediaError` that explains why it cannot be used; a decoder's own message is cleaned of C++ source
locations and object addresses before it reaches errors/. Every cap is checked from the header before
anything is decoded: pixels, frames, seconds and the decoded size (`max_decoded_bytes`), so a small file
that would decode huge is refused at the cost of reading its header. Audio and video bytes reach FFmpeg only
when they are one of the allowed containers (`actors.media.containers`): never a manifest or playlist that
would make FFmpeg open the URLs or files it names. Audio is decoded only up to its caps
(plus a second, to tell a clip over them), whatever its header claims.

The stage never calls `decode` in its own process: the child of `actors.media.sandbox` runs it, under the
decode deadline, so that a decoder crashing or running on costs its reference and not the worker. The
caps here bound what a decode produces; the child bounds its time and what its crash can take down.
"""

from __future__ import annotations

import io
import re

import numpy as np

from actors.media.codec import check_layout
from actors.media.containers import check_container
from actors.media.spec import MediaError, MediaSpec, first_line, human_bytes

AUDIO_OVERSHOOT_S = 1.0  # decoded past the audio caps, to tell a clip that is over them


def decode(modality: str, data: bytes, spec: MediaSpec) -> np.ndarray | MediaError:
    """`data` decoded as `modality`, in that modality's payload layout, or the MediaError saying why it
    cannot be used (returned, not raised: one bad reference must not fail the block)."""
    try:
        if modality == "image":
            array = decode_image(data, spec)
        elif modality == "audio":
            array = decode_audio(data, spec)
        else:
            array = decode_video(data, spec)
        check_layout(modality, array)
        return array
    except MediaError as exc:  # kept for the block's error rows: drop the frames (and bytes) it holds
        return exc.with_traceback(None)
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
    _check_decoded(width * height * 3, f"{width}x{height} image", spec)
    image = ImageOps.exif_transpose(image).convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def decode_audio(data: bytes, spec: MediaSpec) -> np.ndarray:
    """Mono float32 (N,) at `spec.audio_sample_rate` (torchcodec resamples and downmixes)."""
    from torchcodec.decoders import AudioDecoder

    rate = spec.audio_sample_rate
    check_container("audio", data)  # before FFmpeg sees the bytes: never a manifest naming other URLs
    decoder = AudioDecoder(data, sample_rate=rate, num_channels=1)
    duration = decoder.metadata.duration_seconds
    if duration is not None and duration > spec.max_audio_seconds:
        raise MediaError(f"{duration:.1f} s of audio, over the {spec.max_audio_seconds:g} s cap")
    if duration is not None:
        _check_decoded(int(duration * rate) * 4, f"{duration:.1f} s of audio", spec)
    # The header may lie or say nothing: decode a bounded range, never the whole stream.
    stop = min(spec.max_audio_seconds, spec.max_decoded_bytes / (4 * rate)) + AUDIO_OVERSHOOT_S
    samples = decoder.get_samples_played_in_range(0.0, stop).data
    seconds = samples.shape[-1] / rate
    claimed = "" if duration is None else f"; its header says {duration:.1f} s"
    if seconds > spec.max_audio_seconds:
        raise MediaError(
            f"more than {spec.max_audio_seconds:g} s of audio, over the {spec.max_audio_seconds:g} s cap"
            f"{claimed}"
        )
    _check_decoded(samples.shape[-1] * 4, f"at least {seconds:.1f} s of audio{claimed}", spec)
    return samples[0].numpy().astype(np.float32, copy=False)


def decode_video(data: bytes, spec: MediaSpec) -> np.ndarray:
    """Every frame as uint8 (T, 3, H, W): one layout for all videos (transformers infers a batch's layout
    from its first video, so mixing layouts would silently corrupt the others)."""
    from torchcodec.decoders import VideoDecoder

    check_container("video", data)  # before FFmpeg sees the bytes: never a manifest naming other URLs
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
    if meta.width and meta.height:
        what = f"a {frames}-frame {meta.width}x{meta.height} video"
        _check_decoded(frames * meta.height * meta.width * 3, what, spec)
    return decoder.get_frames_in_range(0, frames).data.numpy()


def _check_decoded(nbytes: int, what: str, spec: MediaSpec) -> None:
    if nbytes > spec.max_decoded_bytes:
        raise MediaError(
            f"{what} decodes to {human_bytes(nbytes)}, over the {human_bytes(spec.max_decoded_bytes)} "
            "decoded-size cap"
        )


def _decoder_message(exc: BaseException) -> str:
    text = first_line(exc)
    text = re.sub(r"^\w+, \S+\.cpp:\d+, ", "", text)  # torchcodec's C++ source location
    text = re.sub(r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", text)  # PIL's file object
    match = re.match(r"The best (\w+) stream is unknown", text)
    if match:
        text = f"no {match.group(1)} stream"
    return f"{type(exc).__name__}: {text}"[:300]
