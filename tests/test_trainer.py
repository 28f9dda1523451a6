import dataclasses
import math
import os
import pathlib
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from fisa_rt import CheckpointError, ConfigError
from fisa_rt.errors import InputError
from fisa_rt.checkpoint import load_model, read_checkpoint_info
from fisa_rt.cli import main
from fisa_rt.train import trainer
from fisa_rt.train.trainer import TrainConfig, batch_keys, train


def _adapt(data, init, out, **kw):
    args = dict(stage="adapt", data=data, init=init, out=str(out), steps=4, batch_size=4, save_every=2, progress=False)
    args.update(kw)
    return TrainConfig(**args)


def test_short_training_run_lowers_the_loss(synthetic_data, clip_weights, tmp_path):
    cfg = TrainConfig(stage="generator", data=synthetic_data, init=clip_weights, out=str(tmp_path / "g.safetensors"),
                      steps=20, batch_size=4, lr=2e-3, warmup=1, progress=False)
    result = train(cfg)
    first, last = sum(result.losses[:4]) / 4, sum(result.losses[-4:]) / 4
    assert last < first * 0.8, result.losses
    model, info = load_model(result.out)
    assert info.extra["stage"] == "generator"
    assert not {"wavy wall", "red star"} & set(info.vocabulary)  # training vocabulary: seen classes only
    assert len(info.vocabulary) == len(info.is_thing) == 24
    assert not os.path.exists(result.out + ".state.safetensors")


def test_only_the_chosen_parameters_change(synthetic_data, generator_checkpoint, tmp_path):
    before, _ = load_model(generator_checkpoint)
    result = train(_adapt(synthetic_data, generator_checkpoint, tmp_path / "fisa.safetensors", steps=2,
                          trainable="simo"))
    after, _ = load_model(result.out)
    simo = tuple(before.cfg.simo.trainable)
    changed = {
        n for (n, a), (_, b) in zip(before.state_dict().items(), after.state_dict().items()) if not torch.equal(a, b)
    }
    assert changed and all(n.startswith(simo) for n in changed)
    assert result.trainable < 0.05 * result.total


def interrupt_at_step(monkeypatch, step: int):
    """Ctrl-C during the ``step``-th step's loss (counting from 1); returns the real loss, to put back."""
    real_loss, calls = trainer._Stage.loss, {"n": 0}

    def interrupting(self, keys):
        calls["n"] += 1
        if calls["n"] == step:
            raise KeyboardInterrupt
        return real_loss(self, keys)

    monkeypatch.setattr(trainer._Stage, "loss", interrupting)
    return real_loss


def test_resumed_run_equals_uninterrupted_run(synthetic_data, generator_checkpoint, tmp_path, monkeypatch):
    whole = train(_adapt(synthetic_data, generator_checkpoint, tmp_path / "whole.safetensors"))
    interrupted = tmp_path / "resumed.safetensors"
    real_loss = interrupt_at_step(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        train(_adapt(synthetic_data, generator_checkpoint, interrupted))
    assert os.path.exists(str(interrupted) + ".state.safetensors") and not interrupted.exists()
    monkeypatch.setattr(trainer._Stage, "loss", real_loss)
    resumed = train(_adapt(synthetic_data, generator_checkpoint, interrupted))
    assert resumed.losses == pytest.approx(whole.losses, rel=1e-5)
    assert (whole.resumed_at, resumed.resumed_at) == (0, 2)  # the state saved every 2 steps, before step 3
    a, b = load_file(whole.out), load_file(str(interrupted))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_the_progress_bar_reads_the_losses_without_a_warning(synthetic_data, generator_checkpoint, tmp_path):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(_adapt(synthetic_data, generator_checkpoint, tmp_path / "bar.safetensors", steps=2, progress=True))
    assert not [str(w.message) for w in caught if "requires_grad" in str(w.message)]


def test_existing_output_is_not_overwritten(synthetic_data, generator_checkpoint, tmp_path):
    out = tmp_path / "taken.safetensors"
    out.write_bytes(b"precious")
    with pytest.raises(CheckpointError, match=r"exists; pass overwrite=True \(--overwrite\)"):
        train(_adapt(synthetic_data, generator_checkpoint, out))
    assert out.read_bytes() == b"precious"


def test_bad_training_configs_are_rejected(synthetic_data):
    with pytest.raises(ConfigError, match="stage must be one of"):
        TrainConfig(stage="finetune", data=synthetic_data, out="x")
    with pytest.raises(ConfigError, match="needs --init"):
        TrainConfig(stage="adapt", data=synthetic_data, out="x")


def test_training_whose_loss_diverges_stops_and_writes_nothing(synthetic_data, tmp_path, capsys):
    out = tmp_path / "nan.safetensors"
    code = main(["train", "clip", "--data", synthetic_data, "--out", str(out), "--steps", "3", "--batch-size", "2",
                 "--lr", "1e12", "--warmup", "0", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("fisa-rt: error: training diverged") and len(err.splitlines()) == 1, err
    assert "at step 2 of 3" in err and "a lower --lr" in err
    assert os.listdir(tmp_path) == []


def test_processes_share_each_global_batch_exactly():
    single = batch_keys(5, 24, 8, seed=0, rank=0, world=1)
    split = batch_keys(5, 24, 8, seed=0, rank=0, world=2) + batch_keys(5, 24, 8, seed=0, rank=1, world=2)
    assert single == split
    assert {k for k, _ in batch_keys(0, 24, 24, 0, 0, 1)} == set(range(24))  # an epoch is a permutation


def test_two_process_ddp_matches_one_process(synthetic_data, generator_checkpoint, tmp_path):
    torchrun = pathlib.Path(sys.executable).parent / "torchrun"
    common = ["train", "adapt", "--data", synthetic_data, "--init", generator_checkpoint, "--steps", "3",
              "--batch-size", "4", "--no-progress"]
    one = str(tmp_path / "one.safetensors")
    two = str(tmp_path / "two.safetensors")
    cli = [sys.executable, "-m", "fisa_rt.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cli + common + ["--out", one], check=True, capture_output=True, env=env, timeout=600)
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "fisa_rt.cli"] + common + ["--out", two],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = load_file(one), load_file(two)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)
    base = load_file(generator_checkpoint)
    changed = sum(not torch.equal(a[n], base[n]) for n in a)
    assert changed > 0
    assert read_checkpoint_info(two).extra["steps"] == "3"


def test_clip_stage_pretrains_on_the_split_it_is_given(tmp_path):
    from fisa_rt.data.synthetic import generate

    generate(str(tmp_path / "broad"), "pretrain", 4, seed=0, image_size=64, world="broad")
    cfg = TrainConfig(stage="clip", data=str(tmp_path / "broad"), out=str(tmp_path / "clip.safetensors"), steps=1,
                      batch_size=4, split="pretrain", region_captions=0.5, progress=False)
    assert train(cfg).steps == 1 and os.path.exists(cfg.out)
    with pytest.raises(InputError, match="panoptic_train.json"):  # the default split was never written
        train(dataclasses.replace(cfg, split="train", overwrite=True))


def test_clip_stage_trains_at_the_clip_s_own_size_not_the_canvas(tmp_path):
    """fisa-vit-b16 (ViT-B-16 at 224, canvas 640): the clip stage fed 640-pixel images and failed on the position
    embedding. Here fisa-tiny's CLIP (128) under a 96-pixel canvas."""
    from fisa_rt.config import get_model_config
    from fisa_rt.data.synthetic import generate

    model = tmp_path / "canvas-96.json"
    model.write_text(dataclasses.replace(get_model_config("fisa-tiny"), image_size=96).to_json())
    generate(str(tmp_path / "data"), "pretrain", 2, seed=0, image_size=64, world="broad")
    cfg = TrainConfig(stage="clip", data=str(tmp_path / "data"), out=str(tmp_path / "clip.safetensors"), steps=1,
                      batch_size=2, split="pretrain", model=str(model), progress=False)
    assert train(cfg).steps == 1 and os.path.exists(cfg.out)


def test_snapshots_hold_the_weights_after_their_step(synthetic_data, generator_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "curve.safetensors"
    interrupt_at_step(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        train(_adapt(synthetic_data, generator_checkpoint, out, snapshots=(2,), weight_ensemble=1.0))
    snapshot = trainer.snapshot_path(str(out), 2)
    assert snapshot == str(tmp_path / "curve.step2.safetensors")
    assert read_checkpoint_info(snapshot).extra["steps"] == "2"
    state, weights = load_file(str(out) + ".state.safetensors"), load_file(snapshot)
    trained = [n[len("param/"):] for n in state if n.startswith("param/")]
    assert trained
    for name in trained:  # the training state saved after step 2 holds the same weights
        torch.testing.assert_close(weights[name], state["param/" + name], rtol=0, atol=0)
    with pytest.raises(ConfigError, match="snapshot"):
        TrainConfig(stage="adapt", data=synthetic_data, init=generator_checkpoint, out=str(out), steps=4,
                    snapshots=(4,))


def test_simo_only_trains_fisa_without_its_adapters(synthetic_data, generator_checkpoint, tmp_path):
    """The default preset: SIMO's set less the SEVE adapters, which, untrained identities, are left out of the
    model altogether; the rest of the model is the --init checkpoint's, bit for bit."""
    before, _ = load_model(generator_checkpoint)
    assert before.cfg.seve.layers
    result = train(_adapt(synthetic_data, generator_checkpoint, tmp_path / "q.safetensors", steps=2))
    after, info = load_model(result.out)
    assert info.extra["trainable"] == "simo-only"
    assert after.cfg.seve.layers == [] and len(after.backbone.seve) == 0
    old, new = before.state_dict(), after.state_dict()
    assert set(new) == {n for n in old if not n.startswith("backbone.seve.")}
    changed = {n for n in new if not torch.equal(new[n], old[n])}
    assert any(n.startswith("classifier.mask_q_proj") for n in changed)
    assert changed and not any(n.startswith("backbone.") for n in changed)
    from fisa_rt.mask_classifier import text_rows

    images, text = torch.randn(1, 3, 128, 128), text_rows(before.encode_vocabulary(info.vocabulary[:4]))
    with torch.no_grad():  # the adapters it left out were identities: the image features are the same
        want, got = before.backbone(images, text).features, after.backbone(images, text).features
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)


def test_a_preset_that_trains_nothing_is_refused(synthetic_data, generator_checkpoint, tmp_path):
    """The mask-average head's SIMO set is only SEVE adapters: SIMO alone would train nothing there."""
    model, _ = load_model(generator_checkpoint)
    cfg = dataclasses.replace(model.cfg, simo=dataclasses.replace(model.cfg.simo, trainable=["backbone.seve"]))
    init = tmp_path / "average.safetensors"
    from fisa_rt.checkpoint import save_checkpoint

    model.cfg = cfg
    save_checkpoint(str(init), model)
    with pytest.raises(ConfigError, match="simo-only trains nothing.*use --trainable simo"):
        train(_adapt(synthetic_data, str(init), tmp_path / "out.safetensors"))
    assert not (tmp_path / "out.safetensors").exists()


def test_weight_ensemble_writes_the_mix_of_initial_and_trained_weights(synthetic_data, generator_checkpoint,
                                                                      tmp_path):
    """WiSE-FT: written = init + alpha * (trained - init), the temperature and void embedding as trained; training
    runs on the unmixed weights, so the mixed run's trajectory is the unmixed run's."""
    plain = train(_adapt(synthetic_data, generator_checkpoint, tmp_path / "plain.safetensors", steps=3,
                         trainable="simo", weight_ensemble=1.0, snapshots=(2,)))
    mixed = train(_adapt(synthetic_data, generator_checkpoint, tmp_path / "mixed.safetensors", steps=3,
                         trainable="simo", weight_ensemble=0.25, snapshots=(2,)))
    assert mixed.losses == plain.losses
    init = load_file(generator_checkpoint)
    for out in ("", ".step2"):
        trained, written = (load_file(str(tmp_path / f"{name}{out}.safetensors")) for name in ("plain", "mixed"))
        moved = [n for n in trained if not torch.equal(trained[n], init[n])]
        assert any(n.startswith("backbone.seve.") for n in moved) and "classifier.logit_scale" in moved
        for name in trained:
            calibration = name in ("classifier.logit_scale", "classifier.void_embedding")
            want = trained[name] if calibration else torch.lerp(init[name], trained[name], 0.25)
            torch.testing.assert_close(written[name], want, rtol=0, atol=0, msg=name)
    assert read_checkpoint_info(mixed.out).extra["weight_ensemble"] == "0.25"
    assert "weight_ensemble" not in read_checkpoint_info(plain.out).extra
    for bad, message in ((dict(weight_ensemble=0.0), r"\(0, 1\]"), (dict(weight_ensemble=1.5), r"\(0, 1\]"),
                         (dict(stage="generator", weight_ensemble=0.5), "only `train adapt`")):
        with pytest.raises(ConfigError, match=message):
            _adapt(synthetic_data, generator_checkpoint, tmp_path / "x.safetensors", **bad)


def test_seve_variants_train_what_they_say(synthetic_data, generator_checkpoint, tmp_path):
    """Issue 23's variants: adapters moved to blocks 3-4, their gates frozen by a 0 learning-rate multiple, and
    the feature-preservation term in the loss."""
    before, _ = load_model(generator_checkpoint)
    result = train(_adapt(synthetic_data, generator_checkpoint, tmp_path / "late.safetensors", steps=2,
                          trainable="simo", seve_layers=(3, 4), seve_gate_lr=0.0, feature_distill=10.0))
    after, info = load_model(result.out)
    assert after.cfg.seve.layers == [3, 4] and set(after.backbone.seve) == {"3", "4"}
    assert info.extra["feature_distill"] == "10.0" and info.extra["seve_gate_lr"] == "0.0"
    for adapter in after.backbone.seve.values():  # a gate that cannot move keeps tanh(0) = 0
        assert float(adapter.gate.detach()) == 0.0
    shared = {n: p for n, p in after.state_dict().items() if not n.startswith("backbone.seve.")}
    changed = {n for n, p in shared.items() if not torch.equal(p, before.state_dict()[n])}
    assert changed and all(n.startswith(tuple(before.cfg.simo.trainable)) for n in changed)


def test_feature_preservation_is_zero_only_for_the_pretrained_features(generator_checkpoint):
    from fisa_rt.mask_classifier import text_rows
    from fisa_rt.train.losses import feature_preservation

    model, info = load_model(generator_checkpoint)
    images, text = torch.randn(2, 3, 128, 128), model.encode_vocabulary(info.vocabulary[:5])
    pretrained = model.backbone(images, text_rows(text), adapters=False)
    same = feature_preservation(model.backbone(images, text_rows(text)), pretrained)  # gates at 0: identities
    assert float(same.detach()) < 1e-6  # cosine of equal vectors rounds to 1 within fp32
    for adapter in model.backbone.seve.values():
        adapter.gate.data.fill_(1.0)
    adapted = model.backbone(images, text_rows(text))
    distance = feature_preservation(adapted, pretrained)
    assert 0 < float(distance.detach()) < 2
    distance.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.seve.parameters())


def test_trained_adapters_are_not_dropped_by_a_moving_config(synthetic_data, generator_checkpoint, tmp_path):
    fisa = train(_adapt(synthetic_data, generator_checkpoint, tmp_path / "fisa.safetensors", steps=2,
                        trainable="simo"))
    with pytest.raises(CheckpointError, match="unexpected.*backbone.seve.1"):
        train(_adapt(synthetic_data, fisa.out, tmp_path / "moved.safetensors", steps=2, trainable="simo",
                     seve_layers=(3, 4)))
    for bad in (dict(trainable="simo-only", feature_distill=1.0), dict(stage="generator", seve_gate_lr=0.5),
                dict(trainable="full", seve_layers=(3,))):
        with pytest.raises(ConfigError, match="need `adapt --trainable simo`"):
            _adapt(synthetic_data, generator_checkpoint, tmp_path / "x.safetensors", **bad)
    with pytest.raises(ConfigError, match=">= 0"):
        _adapt(synthetic_data, generator_checkpoint, tmp_path / "x.safetensors", trainable="simo",
               feature_distill=-1.0)
    # each was ignored: every parameter trained, no crops made, no weights read
    for bad, message in ((dict(stage="generator", trainable="full"), "--trainable applies to `train adapt`"),
                         (dict(stage="generator", region_captions=0.5), "--region-captions applies to `train clip`"),
                         (dict(stage="clip"), "--init applies to `train generator and adapt`, not to the clip")):
        with pytest.raises(ConfigError, match=message):
            _adapt(synthetic_data, generator_checkpoint, tmp_path / "x.safetensors", **bad)
    # a preset that leaves trained adapters alone keeps them (frozen), rather than dropping them
    kept = train(_adapt(synthetic_data, fisa.out, tmp_path / "kept.safetensors", steps=1))
    trained, written = load_file(fisa.out), load_file(kept.out)
    adapters = {n for n in trained if n.startswith("backbone.seve.")}
    assert adapters == {n for n in written if n.startswith("backbone.seve.")}
    for name in adapters:
        assert torch.equal(trained[name], written[name]), name


def _train_cli(capsys, *argv):
    code = main(["train", *map(str, argv), "--batch-size", "2", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("fisa-rt: error: ") and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("init", ["fisa", "corrupt", "pickle", "other-model"])
def test_a_generator_init_that_is_not_clip_weights_is_one_line(init, synthetic_data, clip_weights,
                                                               generator_checkpoint, tmp_path, capsys):
    """Each was a traceback from open_clip's loader; the folders made for --out went with it, left behind."""
    path, model = {"fisa": generator_checkpoint, "other-model": clip_weights}.get(init), "fisa-tiny"
    if init == "corrupt":
        (path := tmp_path / "bad.safetensors").write_bytes(b"\x01\x02")
    elif init == "pickle":
        (path := tmp_path / "bad.pth").write_bytes(b"not a pickle")
    elif init == "other-model":
        model = "fisa-tiny-convnext"
    err = _train_cli(capsys, "generator", "--data", synthetic_data, "--init", path, "--model", model,
                     "--out", tmp_path / "made" / "g.safetensors", "--steps", 1)
    assert str(path) in err and f"the clip stage's output for model {model}" in err
    assert not (tmp_path / "made").exists()


def test_an_adapt_init_named_with_a_model_is_checked_first(synthetic_data, tmp_path, capsys):
    (bad := tmp_path / "bad.safetensors").write_bytes(b"\x01\x02")
    err = _train_cli(capsys, "adapt", "--data", synthetic_data, "--init", bad, "--model", "fisa-tiny",
                     "--out", tmp_path / "a.safetensors", "--steps", 1)
    assert f"{bad} is not a readable safetensors file" in err


def test_a_folder_as_out_is_refused_before_training(synthetic_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(trainer._Stage, "__init__", lambda *a: pytest.fail("built a model for an unwritable --out"))
    err = _train_cli(capsys, "clip", "--data", synthetic_data, "--out", tmp_path, "--overwrite", "--steps", 1)
    assert err.endswith(f"cannot write {tmp_path}: it is a folder")


@pytest.fixture
def interrupted_state(synthetic_data, generator_checkpoint, tmp_path, monkeypatch):
    """The training state an adapt run of 4 steps leaves when stopped after step 2."""
    out = tmp_path / "r.safetensors"
    real_loss = interrupt_at_step(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        train(_adapt(synthetic_data, generator_checkpoint, out))
    monkeypatch.setattr(trainer._Stage, "loss", real_loss)
    return out, pathlib.Path(str(out) + ".state.safetensors")


def _edit_state(state, metadata=None, tensors=None):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(state), framework="pt") as handle:
        old = handle.metadata()
    save_file({**load_file(str(state)), **(tensors or {})}, str(state), metadata={**old, **(metadata or {})})


@pytest.mark.parametrize("metadata, message", [
    ({"losses": "5"}, "losses are not a list of 2 finite numbers"),
    ({"losses": "[1.0, NaN]"}, "losses are not a list of 2 finite numbers"),
    ({"step": "-3"}, "step '-3' is not a whole number"),
    ({"step": "1.5"}, "step '1.5' is not a whole number"),
    ({"options": "[]"}, "options are not a JSON object"),
    (None, r"optimizer state opt/.*/exp_avg has shape \(7,\)"),
])
def test_a_damaged_training_state_is_refused(metadata, message, interrupted_state, synthetic_data,
                                             generator_checkpoint):
    out, state = interrupted_state
    if metadata is None:
        moment = next(k for k in load_file(str(state)) if k.endswith("/exp_avg"))
        _edit_state(state, tensors={moment: torch.zeros(7)})
    else:
        _edit_state(state, metadata)
    with pytest.raises(CheckpointError, match=f"cannot resume from {state}: .*{message}.*delete it to start over"):
        train(_adapt(synthetic_data, generator_checkpoint, out))
    assert state.exists() and not out.exists()


def test_a_state_is_resumed_only_by_a_run_it_fits(interrupted_state, synthetic_data, generator_checkpoint):
    """A state beyond --steps wrote a checkpoint claiming fewer steps than its weights had; one of another
    --lr went on with a trajectory no single run follows."""
    out, state = interrupted_state
    with pytest.raises(InputError, match=r"at step 2, beyond steps=1 \(--steps\)"):
        train(_adapt(synthetic_data, generator_checkpoint, out, steps=1))
    with pytest.raises(InputError, match="trained with --lr 0.001, not 0.5"):
        train(_adapt(synthetic_data, generator_checkpoint, out, lr=0.5))
    with pytest.raises(InputError, match="trained with --seed 0, not 3"):
        train(_adapt(synthetic_data, generator_checkpoint, out, seed=3))
    assert state.exists() and not out.exists()
    _edit_state(state, {"options": "{}"})  # a state written before options were recorded still resumes
    assert len(train(_adapt(synthetic_data, generator_checkpoint, out)).losses) == 4


def test_schedule_warms_up_linearly_then_cosine_decays_to_zero():
    from fisa_rt.train.trainer import _schedule

    f = _schedule(TrainConfig(stage="clip", data="d", out="o.safetensors", steps=20, warmup=4))
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]  # the first step already learns, peak at warmup-1
    assert f(4) == 1.0
    assert math.isclose(f(12), 0.5)  # half-way through the decay
    assert f(19) < 0.01 and f(20) == 0.0  # decays to 0, not to the peak


def test_average_gradients_divides_the_sum_by_the_world(monkeypatch):
    """AdamW is invariant to a uniform gradient scale, so the two-process test cannot see a missing division."""
    env = trainer.Distributed.__new__(trainer.Distributed)
    env.world, env.rank = 2, 0
    monkeypatch.setattr(trainer.dist, "all_reduce", lambda t: t.mul_(2))  # two ranks holding the same gradient
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([1.0, -2.0, 3.0])
    env.average_gradients([p])
    torch.testing.assert_close(p.grad, torch.tensor([1.0, -2.0, 3.0]))
