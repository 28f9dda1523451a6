"""ONNX Runtime sessions without ONNX Runtime's own fallback.

Where making a session fails, ``onnxruntime.InferenceSession`` prints four lines to standard output ("EP Error ...
Falling back to [...] and retrying") and makes it again on the CPU provider, even where the CPU provider is what
failed: a graph ONNX Runtime rejects was loaded twice, and the one error line fisa-rt prints came after lines on
the standard output a pipeline reads as results; a graph too large for the memory failed twice. fisa-rt chooses
the providers itself (``runtime.backends.onnx_providers``) and says in one warning line where it falls back
(``runtime.backends``: from a GPU provider that fails to the providers after it).
"""

from __future__ import annotations

from typing import Any, Sequence, Union


def inference_session(source: Union[str, bytes], options=None, providers: Sequence[Any] = ("CPUExecutionProvider",)):
    """``onnxruntime.InferenceSession(source, options, providers)`` that raises what failed, once, printing
    nothing (ONNX Runtime 1.23 and later), and whose runs do not fall back either."""
    import onnxruntime

    session = onnxruntime.InferenceSession(source, options, providers=list(providers), enable_fallback=0)
    # ONNX Runtime 1.18-1.22 ignore enable_fallback (made on them, a failing session still prints and retries);
    # their runs at least are the same as later versions'
    session.disable_fallback()
    return session

