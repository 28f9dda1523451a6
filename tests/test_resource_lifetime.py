"""What a long-lived process keeps: a dropped Segmenter is freed at once, the text encoder takes the thread count
it is given, and no temporary file outlives an interrupted write. Each test failed before its fix (a helper's
sweep, docs/design.md "Resource lifetime")."""

import gc
import weakref

from fisa_rt.runtime.segmenter import Segmenter


def test_a_dropped_onnx_segmenter_is_freed_without_the_cyclic_collector(artefacts):
    """A lambda over the text encoder and an lru_cache over the tokenizer's bound method made reference cycles:
    each dropped Segmenter's session, tokenizer (24 MB) and a native thread lived until the collector ran."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        seg = Segmenter.from_engine(artefacts["out"], threads=1, cache_dir="")
        seg.set_vocabulary(["red star", "wavy wall"])
        kept = [weakref.ref(seg.text_encoder), weakref.ref(seg.text_encoder.tokenizer), weakref.ref(seg.backend)]
        del seg
        assert [ref() is None for ref in kept] == [True, True, True]
    finally:
        if enabled:
            gc.enable()


def test_the_text_encoder_takes_the_backends_thread_count(artefacts):
    """Its session had ONNX Runtime's default pool, one thread per core, whatever threads= said."""
    seg = Segmenter.from_engine(artefacts["out"], threads=1, cache_dir="")
    options = seg.text_encoder.session.get_session_options()
    assert options.intra_op_num_threads == 1 and seg.backend.threads == 1
