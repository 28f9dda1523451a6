"""Kernel dispatch: config switch, the measured choice of ``auto`` (with injected timings), clear refusals."""

import dataclasses
import os
import warnings

import pytest
import torch
import triton

from fisa_rt import ConfigError, create_model
from fisa_rt.config import get_model_config
from fisa_rt.kernels import KernelUnavailableError, adapter_attention, dispatch, mask_attention, use_triton
from fisa_rt.kernels import mask_average_logits
from fisa_rt.kernels.choice import Choice, ChoiceTable, table_path

from kernel_checks import DEVICE, assert_close


def test_auto_never_forces_triton_and_reference_always_runs_eager():
    cpu = torch.zeros(1)
    assert not use_triton("auto", cpu) and not use_triton("reference", cpu)
    assert dispatch.select("adapter_attention", "reference", (cpu,), (1,)) == "eager"


def test_auto_measures_cpu_inference_but_not_cpu_training(monkeypatch):
    monkeypatch.undo()  # the suite's conftest keeps CPU on the references; this is the product's rule
    cpu = torch.zeros(1)
    assert dispatch.measurable([cpu], grad=False) and not dispatch.measurable([cpu], grad=True)

    class OnCuda:
        is_cuda = True

    assert dispatch.measurable([OnCuda()], grad=True)
    assert not dispatch.triton_runs_on("cpu")  # on CPU Triton only interprets: never a candidate
    assert "threads" in dispatch.cpu_name() and str(torch.get_num_threads()) in dispatch.cpu_name()


def test_on_cpu_auto_times_sdpa_and_eager_on_the_wall_clock_and_runs_the_faster(monkeypatch, tmp_path):
    monkeypatch.undo()
    monkeypatch.setattr(dispatch, "_TABLES", {})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    q, k, v = adapter_inputs()
    with torch.no_grad():
        out = adapter_attention(q, k, v)
    assert_close(out, adapter_attention_reference_double(q, k, v), 1e-4, what="the measured choice's output")
    table = dispatch.local_table()
    assert table.device_name == dispatch.cpu_name() and str(tmp_path) in table.path
    (key, choice), = table.choices.items()
    assert key == "adapter_attention:float32:fwd:2,2,16,8,16,0,1"
    assert set(choice.times_ms) == {"sdpa-flash", "eager"}  # cuDNN and efficient SDPA cannot run on CPU
    assert {"sdpa-cudnn", "sdpa-efficient"} <= set(choice.failed) and "triton" not in choice.failed
    assert choice.implementation == min(choice.times_ms, key=choice.times_ms.get)
    lines = dispatch.describe_choices()
    assert "wall clock" in lines[0] and key in lines[1]


def test_cpu_training_runs_the_reference_even_where_the_inputs_need_no_gradient(monkeypatch, tmp_path):
    """Behind a frozen CLIP (the generator stage, `adapt --trainable frozen`) an op's inputs need no gradient
    inside a training step: grad mode alone makes it training, so nothing is timed and the reference runs."""
    monkeypatch.undo()
    monkeypatch.setattr(dispatch, "_TABLES", {})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    q, k, v = adapter_inputs()
    with torch.enable_grad():
        assert dispatch.select("adapter_attention", "auto", (q, k, v), (2, 2, 16, 8, 16, 0, 1)) == "eager"
    assert not dispatch.local_table().choices


@pytest.mark.parametrize("op, bucket", [
    ("adapter_attention", (2, 2, 16, 8, 16, 1, 0)),
    ("mask_attention", (1, 2, 4, 4, 4, 8, 16, 16)),
    ("mask_average_logits", (1, 4, 8, 4, 4, 16, 16, 3, 0)),
])
def test_timing_inputs_leave_the_global_random_state_and_default_device_alone(op, bucket):
    """A bucket's first use built its timing inputs from torch's global generator, so a seeded run drew other
    numbers after it depending on whether the choice was cached; and the mask boxes failed under a default
    device that is not the CPU (meta here, for a GPU)."""
    state = torch.get_rng_state()
    with torch.device("meta"):
        candidates = dispatch._BUILDERS[op](bucket, torch.float32, torch.device("cpu"), False,
                                            dispatch.runnable(op, "cpu"))
    assert torch.equal(torch.get_rng_state(), state)
    with torch.no_grad():
        out = candidates["eager"]()  # (some SDPA candidates cannot run on a CPU: the table records them as failed)
    assert out.device.type == "cpu" and torch.isfinite(out).all()


class FakeTimer:
    """Injected timings: ``ms[name]`` per candidate (found by the call it times); records what it timed."""

    def __init__(self, ms):
        self.ms, self.timed = ms, []

    def __call__(self, run):
        name = next(n for n, c in self.candidates.items() if c is run)
        self.timed.append(name)
        run()  # the candidate must really run on the bucket's inputs
        if self.ms[name] is None:
            raise RuntimeError(f"{name} refuses these shapes")
        return self.ms[name]


@pytest.fixture
def measured_on_cpu(monkeypatch, tmp_path):
    """``auto`` measures CPU tensors as it would a card's (the Triton kernel among the candidates, in the
    interpreter), into a table of the fake device "cpu" under tmp_path."""
    monkeypatch.setattr(dispatch, "measurable", lambda tensors, grad: True)
    monkeypatch.setattr(dispatch, "triton_runs_on", lambda device_type: dispatch.triton_available())
    monkeypatch.setattr(dispatch, "cpu_name", lambda: "cpu")
    monkeypatch.setattr(dispatch, "_TABLES", {})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    def install(ms):
        timer = FakeTimer(ms)
        table = ChoiceTable("cpu", table_path("cpu"), timer)
        build = dispatch._BUILDERS.copy()
        for op, builder in build.items():
            def recording(*args, _builder=builder):
                timer.candidates = dict(_builder(*args))
                return timer.candidates
            monkeypatch.setitem(dispatch._BUILDERS, op, recording)
        dispatch.install_table(table)
        return timer, table

    return install


def adapter_inputs(requires_grad=False):
    q = torch.randn(2, 2, 9, 16, requires_grad=requires_grad)
    k, v = (torch.randn(1, 2, 5, 16, requires_grad=requires_grad) for _ in "kv")
    return q, k, v


def test_deterministic_training_runs_the_references(measured_on_cpu):
    timer, table = measured_on_cpu({"triton": 0.1, "sdpa-flash": 0.1, "sdpa-cudnn": 0.1, "sdpa-efficient": 0.1,
                                    "eager": 0.2})
    q, k, v = adapter_inputs(requires_grad=True)
    torch.use_deterministic_algorithms(True)
    try:
        assert dispatch.select("adapter_attention", "auto", (q, k, v), (2, 2, 16, 8, 16, 0, 1)) == "eager"
    finally:
        torch.use_deterministic_algorithms(False)
    assert not timer.timed and not table.choices
    with torch.no_grad():  # inference is measured as before
        assert dispatch.select("adapter_attention", "auto", (q, k, v), (2, 2, 16, 8, 16, 0, 1)) != "eager"


def test_auto_measures_without_triton_installed(monkeypatch, tmp_path):
    """CPU-only torch wheels (and some Jetson ones) come without Triton: ``auto`` still times SDPA and eager, in
    a table named for that."""
    import sys

    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` now fails as it would without the package
    monkeypatch.setattr(dispatch, "measurable", lambda tensors, grad: True)
    monkeypatch.setattr(dispatch, "_TABLES", {})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    q, k, v = adapter_inputs()
    assert_close(adapter_attention(q, k, v), adapter_attention_reference_double(q, k, v), 1e-4, what="auto")
    (choice,) = dispatch.local_table().choices.values()
    assert "triton" not in choice.times_ms and choice.implementation in choice.times_ms
    assert table_path("cpu").endswith("-tritonnone.json") and os.path.isfile(dispatch.local_table().path)


def test_auto_runs_the_fastest_candidate_measured_and_remembers_it(measured_on_cpu, tmp_path):
    # cuDNN's SDPA would be fastest but cannot run on CPU: it is recorded as failed, never chosen
    timer, table = measured_on_cpu({"triton": 0.30, "sdpa-flash": 0.05, "sdpa-cudnn": 0.01,
                                    "sdpa-efficient": None, "eager": 0.20})
    q, k, v = adapter_inputs()
    out = adapter_attention(q, k, v)
    assert_close(out, adapter_attention_reference_double(q, k, v), 1e-4, what="sdpa-flash's output")
    (key, choice), = table.choices.items()
    assert key == "adapter_attention:float32:fwd:2,2,16,8,16,0,1" and choice.implementation == "sdpa-flash"
    assert {"sdpa-cudnn", "sdpa-efficient"} <= set(choice.failed) and "sdpa-cudnn" not in choice.times_ms
    assert min(choice.times_ms.values()) == choice.times_ms[choice.implementation]
    # one measurement per bucket: a second call, and a size of the same bucket, time nothing
    adapter_attention(q, k, v)
    adapter_attention(torch.cat([q, q[:, :, :3]], 2), k, v)  # N = 12, the bucket of 9
    assert len(timer.timed) == 5
    # saved per device + versions, and a new process reads it back instead of measuring
    reloaded = ChoiceTable("cpu", table_path("cpu"), timer=None)
    assert reloaded.get(key).implementation == "sdpa-flash" and str(tmp_path) in table.path
    assert f"torch{torch.__version__}".replace("+", "-") in table.path and "kernel-choices" in table.path
    assert f"triton{triton.__version__}" in table.path


def adapter_attention_reference_double(q, k, v):
    from fisa_rt.kernels import adapter_attention_reference

    return adapter_attention_reference(q.double(), k.double(), v.double())


def test_training_and_inference_are_measured_apart(measured_on_cpu):
    timer, table = measured_on_cpu({"triton": 0.3, "sdpa-flash": 0.1, "sdpa-cudnn": 0.1, "sdpa-efficient": 0.1,
                                    "eager": 0.05})
    q, k, v = adapter_inputs(requires_grad=True)
    adapter_attention(q, k, v).sum().backward()
    with torch.no_grad():
        adapter_attention(q, k, v)
    assert sorted(key.split(":")[2] for key in table.choices) == ["fwd", "fwd+bwd"]


@pytest.mark.skipif(not dispatch.interpreting(), reason="runs the Triton candidate on CPU tensors: interpreter only")
def test_every_op_registers_candidates_that_match_its_reference(measured_on_cpu):
    """Each op's candidates run on CPU (the Triton kernel in the interpreter) and the eager choice is used
    wherever the timings say so; a candidate that cannot run is never picked."""
    timer, table = measured_on_cpu({"triton": 0.01, "sdpa-flash": None, "sdpa-cudnn": None, "sdpa-efficient": 0.2,
                                    "eager": 0.1})
    B, H, Q, Dh, grid = 1, 2, 5, 16, (4, 4)
    q, ks, vs = (torch.randn(B, H, Q, Dh) for _ in range(3))
    k, v = (torch.randn(B, H, 16, Dh) for _ in range(2))
    masks = torch.randn(B, Q, 8, 8)
    from fisa_rt.kernels import mask_attention_reference, mask_average_logits_reference

    out = mask_attention(q, k, v, ks, vs, masks, grid)
    assert_close(out, mask_attention_reference(q, k, v, ks, vs, masks, grid).double(), 1e-4, what="mask attention")
    dense, text = torch.randn(B, 8, 4, 4), torch.randn(3, 8)
    logits = mask_average_logits(masks, dense, text, 10.0)
    assert_close(logits, mask_average_logits_reference(masks, dense, text, 10.0).double(), 1e-4, what="pooling")
    assert {c.implementation for c in table.choices.values()} == {"triton"}
    assert set(timer.timed) >= {"triton", "eager", "sdpa-efficient"}


def test_a_capture_never_measures(measured_on_cpu, monkeypatch):
    timer, table = measured_on_cpu({"eager": 1.0})
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    monkeypatch.setattr(dispatch, "device_name", lambda index: "cpu")
    with pytest.warns(UserWarning, match="not measured before this CUDA-graph capture"):
        assert dispatch.measured_choice("adapter_attention", "float32", False, (1,), "cuda", 0) == "eager"
    assert not timer.timed and not table.choices


def test_a_gpu_bucket_is_timed_with_the_tensors_gpu_current(measured_on_cpu, monkeypatch):
    """Triton's launches and the timer's stream and graph use the current device: a bucket of cuda:1 tensors is
    timed with cuda:1 current, whatever device the caller had current."""
    import contextlib

    timer, table = measured_on_cpu({"eager": 1.0})
    current = ["cuda:0"]

    @contextlib.contextmanager
    def device(which):
        before, current[0] = current[0], str(which)
        yield
        current[0] = before

    seen = []
    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setattr(dispatch, "device_name", lambda index: "cpu")
    timer.candidates = {"eager": lambda: seen.append(current[0])}  # no CUDA tensors to build here
    monkeypatch.setitem(dispatch._BUILDERS, "adapter_attention", lambda *args: timer.candidates)
    assert dispatch.measured_choice("adapter_attention", "float16", False, (1,), "cuda", 1) == "eager"
    assert seen == ["cuda:1"] and current == ["cuda:0"]


def test_a_damaged_choice_file_is_measured_again(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("{not json")
    table = ChoiceTable("x", str(path))
    assert table.choices == {} and table.damaged == "unreadable (JSONDecodeError)"
    path.write_text('{"choices": [1]}')
    assert ChoiceTable("x", str(path)).damaged == "unreadable (TypeError)"


def test_a_damaged_choice_entry_is_dropped_and_the_rest_kept(measured_on_cpu, monkeypatch):
    """Entries an edit or another fisa-rt left in the file: each bad one is measured again, and
    ``inspect``/``bench`` say the file was damaged (they raised KeyError or TypeError before)."""
    import json

    good = {"implementation": "eager", "times_ms": {"eager": 0.1, "sdpa-flash": 0.2}}
    rows = {"a:float32:fwd:1": good,
            "b:float32:fwd:1": {"implementation": "eager", "times_ms": {"sdpa-flash": 0.2}},  # no time for it
            "c:float32:fwd:1": {**good, "failed": 5},
            "d:float32:fwd:1": {**good, "times_ms": {"eager": "NaN"}},
            "e:float32:fwd:1": "eager"}
    path = table_path("cpu")
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        json.dump({"device": "cpu", "choices": rows}, f)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    table = ChoiceTable("cpu", path)
    assert list(table.choices) == ["a:float32:fwd:1"] and table.damaged == "4 of 5 entries unreadable"
    dispatch.install_table(table)
    (line, choice) = dispatch.describe_choices()
    assert "was damaged (4 of 5 entries unreadable): measured again at use" in line
    assert choice.strip() == "a:float32:fwd:1: eager 0.1 ms (sdpa-flash 0.2)"


def test_a_stored_choice_this_process_cannot_run_is_measured_again(measured_on_cpu, monkeypatch):
    """A candidate a later fisa-rt renamed, or the Triton kernel in a table where Triton cannot run, would fail at
    the op's call (KeyError, or Triton without a GPU): it is timed again and replaced instead."""
    timer, table = measured_on_cpu({"triton": 0.3, "sdpa-flash": 0.1, "sdpa-cudnn": None, "sdpa-efficient": 0.2,
                                    "eager": 0.05})
    q, k, v = adapter_inputs()
    with torch.no_grad():
        adapter_attention(q, k, v)
    (key,) = table.choices
    monkeypatch.setattr(dispatch, "triton_runs_on", lambda device_type: False)
    for stale in ("sdpa-renamed", "triton"):
        table.choices[key] = Choice(stale, {stale: 0.01, "eager": 0.05})
        with torch.no_grad():
            adapter_attention(q, k, v)
        assert table.choices[key].implementation == "eager"


def test_an_unwritable_choice_cache_keeps_the_choice_in_memory_and_says_why(monkeypatch, tmp_path):
    monkeypatch.undo()
    home = tmp_path / "cache-home"
    home.write_text("not a folder")  # XDG_CACHE_HOME is a file: nothing can be saved under it
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    monkeypatch.setattr(dispatch, "_TABLES", {})
    q, k, v = adapter_inputs()
    with torch.no_grad():
        adapter_attention(q, k, v)  # measured, run, not saved: no exception
    table = dispatch.local_table()
    assert len(table.choices) == 1 and "Not a directory" in table.unsaved
    assert "not saved: Not a directory" in dispatch.describe_choices()[0]


def test_onnx_kernel_mode_of_old_configs_loads_as_reference():
    with pytest.warns(DeprecationWarning, match='kernels="onnx" is deprecated'):
        cfg = dataclasses.replace(get_model_config("fisa-tiny"), kernels="onnx")
    assert cfg.kernels == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        get_model_config("fisa-tiny")


def test_forcing_triton_on_cpu_without_the_interpreter_says_what_to_do(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(KernelUnavailableError, match="TRITON_INTERPRET=1"):
        use_triton("triton", torch.zeros(1))


def test_config_rejects_unknown_kernel_modes():
    with pytest.raises(ConfigError, match="kernels must be one of"):
        dataclasses.replace(get_model_config("fisa-tiny"), kernels="cuda")


@pytest.mark.parametrize("name", ["fisa-tiny", "fisa-tiny-convnext"])
def test_model_with_kernels_matches_model_with_references(name):
    """Forward and the SIMO gradients of a whole model (SEVE gates open) agree between the two paths."""
    torch.manual_seed(0)
    model = create_model(name).to(DEVICE)
    with torch.no_grad():
        for adapter in model.backbone.seve.values():
            adapter.gate.fill_(0.5)
    model.apply_simo()
    images = torch.randn(2, 3, 64, 64, device=DEVICE)
    text = torch.nn.functional.normalize(torch.randn(5, model.embed_dim, device=DEVICE), dim=-1)
    results = {}
    for backend in ("reference", "triton"):
        model.set_kernels(backend)
        model.zero_grad()
        out = model(images, text)
        out.class_logits.exp().sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[backend] = (out.class_logits.detach(), grads)
    ref_logits, ref_grads = results["reference"]
    logits, grads = results["triton"]
    assert model.cfg.kernels == "triton" and all(a.kernels == "triton" for a in model.backbone.seve.values())
    assert_close(logits, ref_logits.double(), 1e-4, what="class logits")
    assert grads.keys() == ref_grads.keys() and any("seve" in n for n in grads)
    for n in grads:
        assert_close(grads[n], ref_grads[n].double(), 1e-3 * max(1.0, float(ref_grads[n].abs().max())), what=n)


def test_compile_takes_the_measured_choice_without_a_graph_break(measured_on_cpu):
    """The choice is a constant to dynamo: measured while tracing, then baked into one graph."""
    timer, table = measured_on_cpu({"triton": 0.3, "sdpa-flash": 0.05, "sdpa-cudnn": None, "sdpa-efficient": None,
                                    "eager": 0.2})
    q, k, v = adapter_inputs()

    def f(q, k, v):
        return adapter_attention(q, k, v) * 2

    explained = torch._dynamo.explain(f)(q, k, v)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    assert [c.implementation for c in table.choices.values()] == ["sdpa-flash"]
    torch._dynamo.reset()
    out = torch.compile(f, backend="aot_eager", fullgraph=True)(q, k, v)
    assert_close(out, 2 * adapter_attention_reference_double(q, k, v), 1e-4, what="compiled sdpa-flash")
    assert len(timer.timed) == 5  # measured once, while tracing the first time


def test_a_bucket_nothing_could_time_runs_the_reference_and_is_not_cached(measured_on_cpu):
    timer, table = measured_on_cpu({"triton": None, "sdpa-flash": None, "sdpa-cudnn": None, "sdpa-efficient": None,
                                    "eager": None})
    q, k, v = adapter_inputs()
    with pytest.warns(UserWarning, match="could be timed"):
        out = adapter_attention(q, k, v)
    assert_close(out, adapter_attention_reference_double(q, k, v), 1e-4, what="fallback")
    assert not table.choices


def test_the_config_and_the_dispatch_name_the_same_kernel_modes():
    from fisa_rt import config

    assert config.KERNEL_MODES == dispatch.KERNEL_MODES


@pytest.mark.parametrize("xdg", [None, "", "relative/cache"])
def test_caches_ignore_an_unset_empty_or_relative_xdg_cache_home(monkeypatch, tmp_path, xdg):
    """An empty or relative XDG_CACHE_HOME put the caches under the folder a run started from."""
    from fisa_rt.kernels.choice import cache_root
    from fisa_rt.runtime.cache_dirs import cache_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    if xdg is not None:
        monkeypatch.setenv("XDG_CACHE_HOME", xdg)
    assert cache_root() == str(tmp_path / ".cache" / "fisa-rt")
    assert cache_dir("vocab") == str(tmp_path / ".cache" / "fisa-rt" / "vocab")
    assert table_path("cpu").startswith(str(tmp_path / ".cache" / "fisa-rt" / "kernel-choices"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir("vocab") == str(tmp_path / "xdg" / "fisa-rt" / "vocab")


def _bad_calls():
    q, k, v = adapter_inputs()
    mq, mk, mv = (torch.randn(1, 2, 5, 16) for _ in range(3))
    ki, vi = (torch.randn(1, 2, 16, 16) for _ in range(2))
    masks, dense, text = torch.randn(1, 5, 8, 8), torch.randn(1, 16, 4, 4), torch.randn(3, 16)
    return [
        (lambda: adapter_attention(q[0], k, v), ValueError, "q, k, v must be 4-D"),
        (lambda: adapter_attention(q.numpy(), k, v), TypeError, "q must be a floating-point torch.Tensor; got ndarray"),
        (lambda: adapter_attention(q.long(), k.long(), v.long()), TypeError, "got a torch.int64 tensor"),
        (lambda: mask_attention(mq[0], ki, vi, mk, mv, masks, (4, 4)), ValueError, r"q must be \(B, H, Q >= 1, Dh\)"),
        (lambda: mask_attention(mq[:, :, :0], ki, vi, mk[:, :, :0], mv[:, :, :0], masks[:, :0], (4, 4)), ValueError,
         "Q >= 1"),
        (lambda: mask_attention(mq, ki, vi, mk, mv, masks, (16,)), ValueError, "grid must be the token grid's"),
        (lambda: mask_attention(mq, ki, vi, mk, mv, masks, 16), ValueError, "grid must be the token grid's"),
        (lambda: mask_attention(mq.half(), ki, vi, mk, mv, masks, (4, 4)), TypeError, "must share one dtype"),
        (lambda: mask_average_logits(masks, dense.half(), text, 50.0), TypeError, "must share one dtype outside"),
        (lambda: mask_average_logits(masks[:, :0], dense, text, 50.0), ValueError, r"\(B, Q >= 1, Hm, Wm\)"),
        (lambda: mask_average_logits(masks, dense, text.tolist(), 50.0), TypeError, "text must be a floating-point"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_calls())))
def test_each_op_names_a_bad_argument_before_it_measures_anything(measured_on_cpu, case):
    """The ops read their shape bucket (and timed random inputs of the first tensor's dtype) before any check:
    a 3-D q failed to unpack, an int tensor inside torch.randn, mixed dtypes and Q = 0 deep inside torch."""
    timer, table = measured_on_cpu({"triton": 0.3, "sdpa-flash": 0.1, "sdpa-cudnn": 0.1, "sdpa-efficient": 0.1,
                                    "eager": 0.05})
    call, error, message = _bad_calls()[case]
    with torch.no_grad(), pytest.raises(error, match=message):
        call()
    assert not timer.timed and not table.choices


def test_mixed_dtypes_still_run_under_autocast():
    masks, dense, text = torch.randn(1, 5, 8, 8), torch.randn(1, 16, 4, 4).bfloat16(), torch.randn(3, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert mask_average_logits(masks, dense, text, 50.0, kernels="reference").shape == (1, 5, 3)
