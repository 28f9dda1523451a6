"""Names that moved keep working for one release, each with a DeprecationWarning naming its new home."""

import importlib

import pytest

from fisa_rt.runtime import assets, images


@pytest.mark.parametrize("name, home", [("default_checkpoint", assets), ("sample_images", assets),
                                        ("load_image", images), ("DEFAULT_MAX_PIXELS", images)])
def test_predictor_names_warn_and_resolve_to_their_new_module(name, home):
    predictor = importlib.import_module("fisa_rt.predictor")
    with pytest.warns(DeprecationWarning, match=f"fisa_rt.predictor.{name} moved to {home.__name__}.{name}"):
        assert getattr(predictor, name) is getattr(home, name)


def test_the_readme_form_still_runs():
    with pytest.warns(DeprecationWarning):
        from fisa_rt.predictor import default_checkpoint, sample_images
    assert default_checkpoint() == assets.default_checkpoint() and sample_images() == assets.sample_images()


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'segment'"):
        importlib.import_module("fisa_rt.predictor").segment
