"""vidlm: autoregressive video generation over discrete spacetime codes.

The public API, imported lazily so that `import vidlm` stays cheap:

    from vidlm import VideoTokenizer, TokenizerConfig, VideoLM, LMConfig, VideoGenerator
"""

__version__ = "0.1.0"

_EXPORTS = {
    "VideoTokenizer": "vidlm.tokenizer.model",
    "TokenizerConfig": "vidlm.tokenizer.config",
    "VideoLM": "vidlm.lm.model",
    "LMConfig": "vidlm.lm.config",
    "VideoGenerator": "vidlm.pipeline",
}

__all__ = sorted(_EXPORTS)  # noqa: PLE0605 (a list, built from the lazy exports)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vidlm' has no attribute {name!r}")
