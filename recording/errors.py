"""Errors of the recording feature; each carries its HTTP status."""

from __future__ import annotations

from wadud.errors import Conflict, Gone, NotFound, Unprocessable, WadudError

__all__ = [
    "AlreadyRecording",
    "BadTransition",
    "RecordingErased",
    "RecordingError",
    "RecordingFileNotFound",
    "RecordingNotFound",
    "RemuxError",
]


class RecordingError(WadudError):
    """Root of recording/ errors."""

    code = "recording-error"
    title = "Recording failed"


class RecordingNotFound(RecordingError, NotFound):
    code = "recording-not-found"
    title = "No such recording"


class RecordingFileNotFound(RecordingError, NotFound):
    code = "recording-file-not-found"
    title = "No such recording file"


class AlreadyRecording(RecordingError, Conflict):
    """The booking has a recording that is still asking or recording."""

    code = "recording-in-progress"
    title = "This visit is already being recorded (or asked to be)"


class BadTransition(RecordingError, Conflict):
    """A step the recording's state does not allow (start one that was
    refused, stop one that never started, ...)."""

    code = "recording-bad-state"
    title = "The recording is not in a state that allows this"


class RecordingErased(RecordingError, Gone):
    """The patient's key is shredded: nothing recorded opens any more."""

    code = "recording-erased"
    title = "This recording was erased at the patient's request"


class RemuxError(RecordingError, Unprocessable):
    """Segments that make no playable file (no decodable frame, a codec
    WebM cannot carry)."""

    code = "recording-remux-failed"
    title = "The recorded media could not be made into a file"
