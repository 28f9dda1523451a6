"""Helpers of the kernel tests: device, dtypes, per-dtype tolerances, comparisons, mask logits."""

import torch
import torch.nn.functional as F

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# bfloat16 needs a GPU: Triton's interpreter runs kernels in NumPy, which has no bfloat16.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])

# Max error relative to the largest reference magnitude (forward, backward). fp32: accumulation-order
# noise only; fp16/bf16: the kernels round probabilities and products to the input dtype before the tensor
# cores, as FlashAttention does, so the error is a few units in the last place of that dtype.
TOLERANCE = {
    torch.float32: (2e-5, 1e-4),
    torch.float16: (4e-3, 1e-2),
    torch.bfloat16: (3e-2, 6e-2),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, what: str = "output") -> None:
    """max |actual - expected| <= rtol * max(max |expected|, 1), and no NaN anywhere. The floor of 1 (the
    scale of the unit-normal inputs) keeps gradients that are zero in exact arithmetic, such as dq with
    one class, from turning rounding noise into an infinite relative error."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    actual = actual.double()
    assert torch.isfinite(actual).all(), f"{what}: non-finite values (unwritten or overflowed elements)"
    scale = expected.abs().max().clamp_min(1.0)
    error = (actual - expected).abs().max() / scale
    assert error <= rtol, f"{what}: max error {error:.3g} of max(|ref|, 1) exceeds {rtol:g}"


# Autograd hands a backward the gradient in whatever layout the consumer made it: a broadcast of one
# value (stride 0) after ``out.sum()``, a transposed view after ``out.mT``. PyTorch leaves the strides of
# a custom op's incoming gradients undefined, so a raw kernel must not assume a contiguous one.
GRAD_LAYOUTS = ("broadcast", "transposed")


def strided_grad(out: torch.Tensor, layout: str) -> torch.Tensor:
    """A random (``transposed``) or constant (``broadcast``) gradient shaped like ``out``, not contiguous."""
    if layout == "broadcast":
        grad = torch.randn((), device=out.device, dtype=out.dtype).expand_as(out)
    else:
        grad = torch.randn(out.mT.shape, device=out.device, dtype=out.dtype).mT
    assert not grad.is_contiguous()
    return grad


def random_mask_logits(shape, sizes, dtype=torch.float32, empty=True, near=0.0):
    """Random mask logits (mask 0 of every image empty when ``empty``) and a threshold near ``near`` that no bilinear
    resize of them to any of ``sizes`` comes within 1e-5 of, so the kernel (fp32 interpolation) and the float64
    reference make the same inside/outside call everywhere."""
    logits = torch.randn(*shape, dtype=torch.float64)
    if empty:
        logits[:, :1] = -50.0
    values = torch.cat([F.interpolate(logits, size=s, mode="bilinear", align_corners=False).flatten() for s in sizes])
    values = torch.cat([values, torch.tensor([near - 0.5, near + 0.5], dtype=torch.float64)]).unique().sort().values
    values = values[(values >= near - 0.5) & (values <= near + 0.5)]
    gaps = values[1:] - values[:-1]
    distance = (values[1:] + values[:-1] - 2 * near).abs()
    best = int(torch.argmax(torch.where(gaps > 2e-5, -distance, torch.tensor(-1e9, dtype=torch.float64))))
    threshold = float((values[best] + values[best + 1]) / 2)
    return logits.to(dtype), threshold


def box_mask_logits(B, Q, size, cover=(0.05, 0.3), generator=None):
    """(B, Q, size, size) logits +-5 of random boxes covering ``cover`` of the image, with edges on even
    pixels so a 2x bilinear downsample gives exactly +-5 (no threshold ambiguity)."""
    masks = torch.full((B, Q, size, size), -5.0)
    half = size // 2
    for b in range(B):
        for q in range(Q):
            area = float(torch.empty(1).uniform_(*cover, generator=generator)) * half * half
            h = max(1, min(half, round(area ** 0.5 * float(torch.empty(1).uniform_(0.6, 1.6, generator=generator)))))
            w = max(1, min(half, round(area / h)))
            y = int(torch.randint(0, half - h + 1, (1,), generator=generator))
            x = int(torch.randint(0, half - w + 1, (1,), generator=generator))
            masks[b, q, 2 * y : 2 * (y + h), 2 * x : 2 * (x + w)] = 5.0
    return masks
