"""The timing line `fisa-rt infer` prints: per-image averages of every stage, and the FPS of the whole."""

from fisa_rt.runtime.timings import Timings, rate


def test_summary_averages_each_stage_per_image_and_counts_fps_over_all_stages():
    timings = Timings(preprocess=0.004, model=0.020, postprocess=0.006, images=2, read=0.010, write=0.010)
    assert timings.summary() == (
        "2 images: read 5.0 ms, pre-process 2.0 ms, model 10.0 ms, post-process 3.0 ms, write 5.0 ms per image; "
        "40.0 FPS end to end"
    )


def test_summary_names_one_image_in_the_singular_and_none_without_dividing_by_zero():
    assert Timings(model=0.5, images=1).summary().startswith("1 image: read 0.0 ms, pre-process 0.0 ms, model 500.0")
    assert Timings().summary() == (
        "0 images: read 0.0 ms, pre-process 0.0 ms, model 0.0 ms, post-process 0.0 ms, write 0.0 ms per image; "
        "0.0 FPS end to end"
    )


def test_a_rate_below_one_per_second_keeps_three_significant_digits():
    """A model at 27.5 s an image printed "throughput 0.0 images/s" (fisa-rt bench) and "0.0 FPS" (infer)."""
    assert Timings(model=27.5, images=1).summary().endswith("; 0.0364 FPS end to end")
    assert [rate(r) for r in (0.0, 0.25, 1.0, 261.04)] == ["0.0", "0.25", "1.0", "261.0"]
