"""torch.compile of the whole model: one graph, no break, same output as eager (reference path, CPU)."""

import torch

from fisa_rt import create_model


def test_whole_model_compiles_without_graph_breaks_and_matches_eager():
    torch.manual_seed(0)
    model = create_model("fisa-tiny").eval()
    model.set_kernels("reference")
    with torch.no_grad():
        for adapter in model.backbone.seve.values():
            adapter.gate.fill_(0.5)  # the adapters' attention contributes
    images = torch.randn(1, 3, 64, 64)
    text = torch.nn.functional.normalize(torch.randn(4, model.embed_dim), dim=-1)

    def forward(images, text):
        out = model(images, text)
        return out.mask_logits, out.class_logits

    with torch.no_grad():
        explained = torch._dynamo.explain(forward)(images, text)
        assert explained.graph_break_count == 0, explained.break_reasons
        torch._dynamo.reset()
        compiled = torch.compile(forward, backend="eager", fullgraph=True)
        for got, want in zip(compiled(images, text), forward(images, text)):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
