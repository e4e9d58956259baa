"""Decoding in a child process: a decoder that crashes, or runs past its deadline, costs one reference.

PIL's codecs and FFmpeg (under torchcodec) are native code fed untrusted bytes. In the stage's own process a
segfault, an abort or the kernel's OOM kill would take the Ray worker down with its whole block (Ray
retries the task, and after `UNTRUSTED_TASK_RETRIES` the job fails), and a decode that runs on cannot be
interrupted. So every worker process decodes in one child, `python -m actors.media.sandbox`, started on
first use and kept for the later decodes of the process (`SANDBOX`):

- the parent hands the child a request and waits for the reply at most `spec.decode_timeout_s`, counted
  from when the child has read the request and loaded the modality's decoder (starting a child and
  importing torchcodec take seconds and are not the reference's);
- over the deadline the child is killed (SIGKILL) and the reference's error is "decoding took longer than
  ... s"; a child that dies while decoding is replaced and the reference decoded once more, since one death
  can be the machine's (the OOM killer picking the child for another process's memory): a reference that
  kills the decoder twice is "the decoder crashed twice (killed by SIGSEGV)". A fresh child decodes the
  next reference;
- a child that dies or stalls before it decodes anything (a broken installation, an idle child the OOM
  killer picked) is not the reference's fault: RuntimeError, which fails the task for Ray to retry.

The protocol never pickles: frames of an 8-byte big-endian length and a body, over the child's stdin and
stdout. A request is two frames, JSON (modality, spec) then the bytes; the child answers `S` when it
starts decoding, then `A` + the `.npy` bytes of the decoded array or `E` + the text of the MediaError
`actors.media.decode.decode` returned. The child exits when its stdin closes, so an idle child does not
outlive its parent; one still decoding when its worker dies goes with the worker's process group, which
Ray kills when a worker exits.

Test setting: with `RERANK_TEST_DECODE_FAULTS=1` in the child's environment, bytes starting with
`RERANK-TEST-CRASH` abort the child and bytes starting with `RERANK-TEST-HANG` make it sleep forever, so the
tests can crash and hang a decoder on demand.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import math
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import BinaryIO

import numpy as np

from actors.media.codec import check_layout
from actors.media.decode import decode
from actors.media.payloads import npy_header
from actors.media.spec import MediaError, MediaSpec, human_bytes

FAULTS_ENV = "RERANK_TEST_DECODE_FAULTS"
CRASH, HANG = b"RERANK-TEST-CRASH", b"RERANK-TEST-HANG"
START_TIMEOUT_S = 120.0  # to start a child, hand it the request and import the modality's decoder
EXIT_WAIT_S = 1.0  # for a child that closed its stdout, or was told to exit, before it is killed
NPY_HEAD_MAX = 16_384  # an .npy header is at most this long (numpy reads at most 10,000 bytes of it)
_LENGTH = struct.Struct(">Q")
# What each modality's decode imports, loaded before the deadline starts.
_DECODERS = {"image": "PIL.ImageOps", "audio": "torchcodec.decoders", "video": "torchcodec.decoders"}
_ROOT = str(Path(__file__).resolve().parents[2])  # where the child imports `actors` from


class _Late(Exception):
    """The deadline passed before the child answered."""


class _Lost(Exception):
    """The child closed its end of a pipe: it died."""


class _Crashed(MediaError):
    """The child died while decoding (`how`: e.g. "killed by SIGSEGV"); `Sandbox.decode` tries once more."""

    def __init__(self, how: str):
        super().__init__(f"the decoder crashed ({how})")
        self.how = how


class _Refused(Exception):
    """The child's reply cannot be used (an unknown kind, a malformed array); the message says why."""


class _Oversized(_Refused):
    """The child's reply is longer than it may be (a decoded item over the decoded-size cap)."""


class Sandbox:
    """The decoding child of this process: started on first use, replaced after it crashed or was killed.
    One decode at a time (the stage decodes on one thread; the lock keeps any other caller correct)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._child: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        """The running child's process id (None before the first decode and after the child ended)."""
        return None if self._child is None else self._child.pid

    def decode(self, modality: str, data: bytes, spec: MediaSpec) -> np.ndarray | MediaError:
        """`actors.media.decode.decode(modality, data, spec)`, run in the child under `spec.decode_timeout_s`."""
        with self._lock:
            try:
                result = self._decode(modality, data, spec)
                if isinstance(result, _Crashed):  # one death may be the machine's (an OOM kill for another
                    result = self._decode(modality, data, spec)  # process's memory): convicted on the second
                    if isinstance(result, _Crashed):
                        return MediaError(f"the decoder crashed twice ({result.how})")
                return result
            except BaseException:  # cut short (a cancelled task): the child would answer out of step
                if self._child is not None:
                    self._end()
                raise

    def _decode(self, modality: str, data: bytes, spec: MediaSpec) -> np.ndarray | MediaError:
        child = self._child or self._start()
        header = json.dumps({"modality": modality, "spec": spec.to_dict()}).encode()
        try:
            start_by = time.monotonic() + START_TIMEOUT_S
            _send(child, [_LENGTH.pack(len(header)), header, _LENGTH.pack(len(data)), data], start_by)
            if _receive(child, 1, start_by) != b"S":
                raise _Refused
        except _Late:
            self._end()
            raise RuntimeError(
                f"the media decoding child did not start within {START_TIMEOUT_S:g} s"
            ) from None
        except _Lost:
            raise RuntimeError(
                f"the media decoding child ended ({self._end(EXIT_WAIT_S)}) before decoding"
            ) from None
        except _Refused:
            self._end()
            raise RuntimeError("the media decoding child answered out of protocol before decoding") from None
        # Only the reply's bytes can be over the cap: the decoded array and a small header.
        limit = 1 + NPY_HEAD_MAX + spec.max_decoded_bytes
        try:
            return _result(modality, _receive(child, limit, time.monotonic() + spec.decode_timeout_s))
        except _Late:
            self._end()
            return MediaError(f"decoding took longer than {spec.decode_timeout_s:g} s")
        except _Lost:
            return _Crashed(self._end(EXIT_WAIT_S))
        except _Oversized:
            self._end()
            return MediaError(
                f"decodes to more than the {human_bytes(spec.max_decoded_bytes)} decoded-size cap"
            )
        except _Refused as exc:
            self._end()
            return MediaError(str(exc))

    def close(self) -> None:
        """End the child, if any: its stdin closed, it exits (killed if it has not after EXIT_WAIT_S). A
        later decode starts a new one."""
        with self._lock:
            if self._child is not None:
                self._child.stdin.close()
                self._end(EXIT_WAIT_S)

    def _start(self) -> subprocess.Popen:
        path = [_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])]
        child = subprocess.Popen(
            [sys.executable, "-m", "actors.media.sandbox"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,  # the replies; its stderr is the worker's, where FFmpeg's messages went
            bufsize=0,
            # Not a session of its own: in the worker's process group, which Ray kills with the worker.
            env={**os.environ, "PYTHONPATH": os.pathsep.join(path)},
        )
        os.set_blocking(child.stdin.fileno(), False)  # every wait on the child is under a deadline
        os.set_blocking(child.stdout.fileno(), False)
        self._child = child
        return child

    def _end(self, wait_s: float = 0.0) -> str:
        """Reap the child, killed unless it exits within `wait_s`, and say how it ended."""
        child, self._child = self._child, None
        try:
            child.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        child.stdin.close()
        child.stdout.close()
        return _ending(child.returncode)


SANDBOX = Sandbox()


def _send(child: subprocess.Popen, parts: list[bytes], deadline: float) -> None:
    """Write `parts` to the child's stdin, as the pipe takes them, by `deadline`."""
    for part in parts:
        view, sent = memoryview(part), 0
        while sent < len(view):
            try:
                written = child.stdin.write(view[sent:])
            except BrokenPipeError:
                raise _Lost from None
            if written is None:
                _wait(child.stdin, select.POLLOUT, deadline)
            else:
                sent += written


def _receive(child: subprocess.Popen, limit: int, deadline: float) -> bytearray:
    """The body of the next frame from the child, which must be at most `limit` bytes."""
    (size,) = _LENGTH.unpack(_read(child.stdout, _LENGTH.size, deadline))
    if size > limit:
        raise _Oversized
    return _read(child.stdout, size, deadline)


def _read(pipe: BinaryIO, size: int, deadline: float) -> bytearray:
    """Exactly `size` bytes from `pipe`, as they come, by `deadline`."""
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        n = pipe.readinto(view[got:])
        if n is None:
            _wait(pipe, select.POLLIN, deadline)
        elif n == 0:
            raise _Lost
        else:
            got += n
    return buffer


def _wait(pipe: BinaryIO, event: int, deadline: float) -> None:
    """Until `pipe` is ready for `event` (or closed at the other end); _Late once `deadline` has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise _Late
    poller = select.poll()
    poller.register(pipe, event)
    poller.poll(math.ceil(left * 1000))


def _result(modality: str, reply: bytearray) -> np.ndarray | MediaError:
    kind = bytes(reply[:1])
    if kind == b"E":
        return MediaError(reply[1:].decode("utf-8", "replace"))
    if kind != b"A":
        raise _Refused(f"the decoder sent an unknown reply {kind!r}")
    try:
        return _array(modality, reply)
    except ValueError as exc:
        raise _Refused(f"the decoder sent a malformed array: {exc}") from None


def _array(modality: str, reply: bytearray) -> np.ndarray:
    """The array of an `A` reply, a view of the received bytes (`np.load` would copy them, and a payload can
    be `max_decoded_bytes`). Never a pickle: `frombuffer` refuses object dtypes, and `check_layout` admits
    only the modality's own dtype and shape."""
    head = io.BytesIO(reply[1 : 1 + NPY_HEAD_MAX])
    version = np.lib.format.read_magic(head)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f".npy version {version}")
    read_header = (
        np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    )
    shape, fortran, dtype = read_header(head)
    offset = 1 + head.tell()
    if math.prod(shape) * dtype.itemsize != len(reply) - offset:
        raise ValueError(f"{len(reply) - offset} bytes for a {dtype} array of shape {shape}")
    array = np.frombuffer(reply, dtype=dtype, count=math.prod(shape), offset=offset)
    array = array.reshape(shape, order="F" if fortran else "C")
    check_layout(modality, array)
    return array


def _ending(returncode: int) -> str:
    """`killed by SIGSEGV`, `exit status 1`: how a child ended."""
    if returncode >= 0:
        return f"exit status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"killed by {name}" + (", as when out of memory" if -returncode == signal.SIGKILL else "")


# ----------------------------------------------------------------------------------------------- the child


def main() -> None:
    """The child: answer requests from stdin until it closes."""
    requests = sys.stdin.buffer
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # what a decoder prints goes to stderr, never into the replies
    faults = os.environ.get(FAULTS_ENV) == "1"
    while (header := _frame(requests)) is not None and (data := _frame(requests)) is not None:
        request = json.loads(header)
        spec = MediaSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in request["spec"].items()})
        _answer(replies, request["modality"], data, spec, faults)
        del data  # not held while the child waits for the next request


def _answer(replies: BinaryIO, modality: str, data: bytes, spec: MediaSpec, faults: bool) -> None:
    """Decode one request. The `S` mark, which starts the parent's deadline, goes once the decoder is loaded."""
    with contextlib.suppress(ImportError):  # a missing decoder is the reference's error, from decode
        importlib.import_module(_DECODERS[modality])
    _reply(replies, b"S")
    if faults:
        _inject_fault(data)
    result = decode(modality, data, spec)
    if isinstance(result, MediaError):
        _reply(replies, b"E", str(result).encode())
    else:
        array = np.ascontiguousarray(result)
        _reply(replies, b"A", npy_header(array), array.reshape(-1).view(np.uint8))


def _frame(stream: BinaryIO) -> bytes | None:
    """The next frame's body; None when the parent closed the pipe."""
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack(head)
    body = stream.read(size)
    return body if len(body) == size else None


def _reply(stream: BinaryIO, *parts) -> None:
    stream.write(_LENGTH.pack(sum(memoryview(part).nbytes for part in parts)))
    for part in parts:
        stream.write(part)
    stream.flush()


def _inject_fault(data: bytes) -> None:
    """Test-only (RERANK_TEST_DECODE_FAULTS=1): a decoder that crashes, or never returns, on demand."""
    if data.startswith(CRASH):
        os.abort()
    if data.startswith(HANG):
        while True:
            time.sleep(60)


if __name__ == "__main__":
    main()
