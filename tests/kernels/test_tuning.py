"""Launch configurations (fisa_rt.kernels.tuning): autotune buckets, and the masked-attention configs that
must agree with the MaskLayout's tiles."""

from fisa_rt.kernels.tuning import TUNING, configs_for, size_bucket


def test_vocabulary_and_image_sizes_share_power_of_two_buckets():
    assert size_bucket(133) == size_bucket(150) == size_bucket(171) == 256
    assert size_bucket(1203) == 2048 and size_bucket(1600) == 2048 and size_bucket(1) == 1


def test_masked_attention_configs_of_a_generation_share_one_tile():
    # the forward, the backward and the layout's block lists must use the same (BLOCK_Q, BLOCK_N)
    for gen in TUNING["mask_attention_sparse_fwd"]:
        tiles = {
            (c.kwargs["BLOCK_Q"], c.kwargs["BLOCK_N"])
            for name in ("mask_attention_sparse_fwd", "mask_attention_sparse_bwd")
            for c in configs_for(name, gen)
        }
        assert len(tiles) == 1, (gen, tiles)


def test_every_generation_lists_every_kernel():
    for name, per_generation in TUNING.items():
        assert sorted(per_generation) == [80, 87, 90, 100, 110, 120] and all(per_generation.values()), name
