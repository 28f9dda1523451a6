"""`fisa-rt train`: the three stages that make a FISA model, on one process or many (torchrun).

1. ``clip``      — contrastive pre-training of a CLIP on image captions (global pooled, like CLIP).
2. ``generator`` — the mask generator on top of that CLIP, CLIP frozen (FC-CLIP's recipe).
3. ``adapt``     — FISA adaptation: mask generator frozen, only the ``trainable`` preset learns:
                   ``simo-only`` (the default: FISA's SIMO parameters, no SEVE adapters), ``simo`` (FISA),
                   ``frozen`` (baseline: frozen CLIP classifier; only its void
                   embedding and temperature learn) or ``full``
                   (baseline: full fine-tuning of the CLIP image encoder and the classifier).

Determinism: the global batch of step s is a fixed slice of a seeded stream of epochs; each process
takes its share, losses are per-image means and gradients are averaged across processes, so N
processes with global batch G follow the same trajectory as one process with batch G. Training
state is saved every ``save_every`` steps next to the output and resumed from automatically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from ..atomic import atomic_path, output_folder, refuse_unwritable
from ..checkpoint import FORMAT, identity_adapters, load_model, read_checkpoint_info, save_checkpoint
from ..clip import create_clip, create_tokenizer, input_size
from ..config import TRAINABLE_PRESETS, get_model_config
from ..data.panoptic import CaptionDataset, PanopticDataset, caption_collate, collate
from ..errors import CheckpointError, ConfigError, InputError, TrainingDiverged
from ..mask_classifier import text_rows, with_void
from ..model import FisaModel, create_model
from ..preprocess import normalize_images
from ..simo import select_trainable
from ..weights import check_finite
from .losses import LossWeights, feature_preservation, resize_targets, set_loss

STAGES = ("clip", "generator", "adapt")
# The classifier's temperature and void embedding: all the frozen baseline trains, and no pre-trained value of
# theirs holds knowledge worth returning to, so the weight ensemble leaves them as trained.
CALIBRATION = ("classifier.void_embedding", "classifier.logit_scale")
# adapt's weight ensemble unless --weight-ensemble says otherwise: WiSE-FT's fixed mixing coefficient (docs/design.md)
DEFAULT_WEIGHT_ENSEMBLE = 0.5


@dataclass
class TrainConfig:
    stage: str
    data: str  # dataset root (COCO-panoptic layout; captions_SPLIT.json for the clip stage)
    out: str  # output file: CLIP weights (clip stage) or a FISA checkpoint
    # model config name; None = fisa-tiny, or for adapt the --init checkpoint's own config
    model: Optional[str] = None
    init: Optional[str] = None  # generator: CLIP weights file; adapt: stage-2 FISA checkpoint
    trainable: str = "simo-only"  # adapt stage: one of TRAINABLE_PRESETS (issue 23 chose the default)
    steps: int = 1000
    batch_size: int = 16  # global, split evenly over processes
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 50
    seed: int = 0
    region_captions: float = 0.0  # clip stage: fraction of pairs that are a segment crop + its class prompt
    split: str = "train"  # the split trained on ("pretrain" for the clip stage of the broad synthetic world)
    # Steps after which the weights are also written to snapshot_path(out, step): one run gives the curve
    # of accuracy against adaptation length, all points on the schedule of the full run.
    snapshots: Tuple[int, ...] = ()
    # SEVE variants of the adapt stage (issue 23; they need the adapters trained: --trainable simo).
    # Blocks (ViT) or stages (ConvNeXt) the adapters move to; the --init checkpoint's must still be identities.
    seve_layers: Optional[Tuple[int, ...]] = None
    # Weight of the feature-preservation term (losses.feature_preservation): adapted features kept close to
    # the encoder's own, SEVE skipped. 0 trains without it.
    feature_distill: float = 0.0
    # The SEVE gates' learning rate as a multiple of --lr: below 1 the adapters open more slowly.
    seve_gate_lr: float = 1.0
    # Weight-space ensemble (WiSE-FT): every weight written is init + alpha * (trained - init), CALIBRATION
    # excepted; training itself runs on the unmixed weights. 1 writes the trained weights; None is
    # DEFAULT_WEIGHT_ENSEMBLE for adapt (the only stage that takes it).
    weight_ensemble: Optional[float] = None
    save_every: int = 200
    amp: bool = True  # bf16 autocast, on CUDA only
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ConfigError(f"stage must be one of {STAGES}; got {self.stage!r}")
        if self.trainable not in TRAINABLE_PRESETS:
            raise ConfigError(f"trainable must be one of {TRAINABLE_PRESETS}; got {self.trainable!r}")
        if any(not 0 < s < self.steps for s in self.snapshots):
            raise ConfigError(f"snapshot steps must lie between 0 and --steps {self.steps}; got {list(self.snapshots)}")
        variants = {"--seve-layers": self.seve_layers is not None, "--feature-distill": self.feature_distill != 0,
                    "--seve-gate-lr": self.seve_gate_lr != 1}
        asked = [flag for flag, given in variants.items() if given]
        if asked and (self.stage != "adapt" or self.trainable != "simo"):
            raise ConfigError(f"{', '.join(asked)} change how SEVE trains: they need `adapt --trainable simo`")
        if self.feature_distill < 0 or self.seve_gate_lr < 0:
            raise ConfigError("--feature-distill and --seve-gate-lr must be >= 0")
        if self.weight_ensemble is not None and self.stage != "adapt":
            raise ConfigError("--weight-ensemble mixes adapted weights with their --init values: only `train adapt`")
        if self.stage == "adapt" and self.weight_ensemble is None:
            self.weight_ensemble = DEFAULT_WEIGHT_ENSEMBLE
        if self.weight_ensemble is not None and not 0 < self.weight_ensemble <= 1:
            raise ConfigError(f"--weight-ensemble must lie in (0, 1]; got {self.weight_ensemble}")
        if self.stage != "clip" and self.init is None:
            raise ConfigError(
                f"the {self.stage} stage needs --init (CLIP weights for generator, a stage-2 checkpoint for adapt)"
            )
        # flags of another stage were ignored without a word (every parameter trained, no crops, no weights read)
        for flag, owner, given in (
            ("--trainable", "adapt", self.stage != "adapt" and self.trainable != "simo-only"),
            ("--region-captions", "clip", self.stage != "clip" and self.region_captions != 0),
            ("--init", "generator and adapt", self.stage == "clip" and self.init is not None),
        ):
            if given:
                raise ConfigError(f"{flag} applies to `train {owner}`, not to the {self.stage} stage")


@dataclass
class TrainResult:
    out: str
    steps: int
    losses: List[float] = field(default_factory=list)
    seconds_per_step: float = 0.0
    trainable: int = 0
    total: int = 0
    resumed_at: int = 0  # the step a run resumed from its training state at (0: a fresh run)


class Distributed:
    """Rank, world size and device, from torchrun's environment (one process when absent)."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def average_gradients(self, params: List[torch.nn.Parameter]) -> None:
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
            offset += g.numel()

    def broadcast(self, params: List[torch.nn.Parameter]) -> None:
        if self.world > 1:
            for p in params:
                dist.broadcast(p.data, 0)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def batch_keys(step: int, dataset_size: int, global_batch: int, seed: int, rank: int, world: int):
    """(index, epoch) keys of this process's share of global batch ``step``."""
    local = global_batch // world
    keys = []
    for position in range(step * global_batch + rank * local, step * global_batch + (rank + 1) * local):
        epoch, offset = divmod(position, dataset_size)
        keys.append((int(np.random.default_rng([seed, epoch]).permutation(dataset_size)[offset]), epoch))
    return keys


def _schedule(cfg: TrainConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


class _Stage:
    """What differs between stages: the model, its trainable part, the data and the loss."""

    def __init__(self, cfg: TrainConfig, env: Distributed):
        self.cfg, self.env = cfg, env
        model_cfg = get_model_config(cfg.model or "fisa-tiny")
        if cfg.stage == "clip":
            self.model = create_clip(model_cfg.clip, load_pretrained=False)
            self.tokenizer = create_tokenizer(model_cfg.clip)
            self.data = CaptionDataset(
                cfg.data, cfg.split, input_size(self.model), seed=cfg.seed, region_fraction=cfg.region_captions
            )
            from open_clip.loss import ClipLoss

            self.clip_loss = ClipLoss(local_loss=False, gather_with_grad=True, rank=env.rank, world_size=env.world)
            self.mean, self.std = model_cfg.image_mean, model_cfg.image_std
            self.metadata = {"format": "open_clip", "model": model_cfg.name}
            return
        if cfg.stage == "generator":
            clip_cfg = dataclasses.replace(model_cfg.clip, pretrained=cfg.init)
            try:
                _refuse_other_weights(cfg.init, model_cfg.name)
                self.model = create_model(dataclasses.replace(model_cfg, clip=clip_cfg), load_pretrained_clip=True)
            except CheckpointError as exc:
                raise CheckpointError(f"{exc}; the generator stage's --init must be the clip stage's output for "
                                      f"model {model_cfg.name}") from None
            prefixes = ["mask_generator"]
        else:
            # read first, whatever --model says: identity_adapters below reads the file without checking it
            info = read_checkpoint_info(cfg.init)
            config = model_cfg if cfg.model else None
            base = config or info.config
            if cfg.seve_layers is not None:
                config = dataclasses.replace(base, seve=dataclasses.replace(base.seve, layers=list(cfg.seve_layers)))
            elif cfg.trainable != "simo" and base.seve.layers and identity_adapters(cfg.init):
                # Adapters nobody trains stay identities: the model is built without them, so neither training
                # nor the deployed model computes SEVE's text-dependent attention for nothing.
                config = dataclasses.replace(base, seve=dataclasses.replace(base.seve, layers=[]))
            self.model, _ = load_model(cfg.init, config=config)
            simo = self.model.cfg.simo.trainable
            prefixes = {
                "simo": simo,
                # FISA without SEVE: no gradient reaches the image encoder (docs/training.md, the ablation)
                "simo-only": [p for p in simo if not p.startswith("backbone.seve")],
                "frozen": list(CALIBRATION),
                "full": ["backbone.visual", "classifier"],
            }[cfg.trainable]
            if not prefixes:
                raise ConfigError(f"--trainable {cfg.trainable} trains nothing in {self.model.cfg.name}: its SIMO set "
                                  f"{simo} is only SEVE adapters (the mask-average head); use --trainable simo")
        self.report = select_trainable(self.model, prefixes)
        # the --init values the weight ensemble mixes back in
        self.initial = {} if cfg.stage != "adapt" or cfg.weight_ensemble == 1 else {
            n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad and n not in CALIBRATION
        }
        self.data = PanopticDataset(cfg.data, cfg.split, self.model.cfg.image_size, augment=True, seed=cfg.seed)
        seen = [i for i, h in enumerate(self.data.held_out) if not h]
        # Training sees only the seen classes: held-out names must not even be negatives.
        self.vocabulary = [self.data.class_names[i] for i in seen]
        self.is_thing = [self.data.is_thing[i] for i in seen]
        self.to_train_label = {c: k for k, c in enumerate(seen)}
        self.text = self.model.encode_vocabulary(self.vocabulary)
        self.weights = LossWeights()

    def to(self, device):
        self.model.to(device)
        if hasattr(self, "text"):
            self.text = self.text.to(device)

    def loss(self, keys) -> Dict[str, torch.Tensor]:
        device = self.env.device
        if self.cfg.stage == "clip":
            images, captions = caption_collate([self.data[k] for k in keys])
            images = normalize_images(images.to(device), self.mean, self.std)
            image_features, text_features, logit_scale = self.model(images, self.tokenizer(captions).to(device))[:3]
            return {"contrastive": self.clip_loss(image_features, text_features, logit_scale)}
        batch = collate([self.data[k] for k in keys])
        images = normalize_images(batch.images.to(device), self.model.cfg.image_mean, self.model.cfg.image_std)
        labels = [torch.tensor([self.to_train_label[int(l)] for l in b], dtype=torch.int64) for b in batch.labels]
        model: FisaModel = self.model
        scale = model.logit_scale
        if self.cfg.stage == "generator":
            features = model.backbone(images, text_rows(self.text))
            generated = model.mask_generator(features.features)
            layers = generated.aux + [(generated.mask_logits, generated.class_embeds)]
            targets = resize_targets(batch.masks, generated.mask_logits.shape[-2:])
            total: Dict[str, torch.Tensor] = {}
            # Deep supervision: every decoder layer's prediction is matched and supervised.
            for mask_logits, class_embeds in layers:
                for name, value in set_loss(
                    with_void(class_embeds, self.text, generated.void_embedding, scale), mask_logits, labels, targets,
                    self.weights,
                ).items():
                    total[name] = total.get(name, 0.0) + value / len(layers)
            return total
        adapted = []  # the backbone's output, for the feature-preservation term
        hook = model.backbone.register_forward_hook(lambda _module, _inputs, output: adapted.append(output)) \
            if self.cfg.feature_distill else None
        try:
            out = model(images, self.text)
        finally:
            if hook is not None:
                hook.remove()
        targets = resize_targets(batch.masks, out.mask_logits.shape[-2:])
        terms = set_loss(out.class_logits, out.mask_logits, labels, targets, self.weights)
        if self.cfg.feature_distill:
            with torch.no_grad():
                pretrained = model.backbone(images, text_rows(self.text), adapters=False)
            terms["features"] = self.cfg.feature_distill * feature_preservation(adapted[0], pretrained)
        return terms

    def save(self, path: str, step: Optional[int] = None) -> None:
        if self.cfg.stage == "clip":
            tensors = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
            with atomic_path(path) as tmp:
                save_file(tensors, tmp, metadata=self.metadata)
        else:
            with self.weight_ensembled():
                save_checkpoint(
                    path, self.model, vocabulary=self.vocabulary, is_thing=self.is_thing, overwrite=True,
                    extra={"stage": self.cfg.stage, "trainable": self.cfg.trainable,
                           "steps": str(step or self.cfg.steps), **self.recipe()},
                )

    @contextlib.contextmanager
    def weight_ensembled(self):
        """The model's weights mixed with their --init values while the block runs, the trained ones after."""
        params = dict(self.model.named_parameters())
        trained = {n: params[n].detach().clone() for n in self.initial}
        alpha = self.cfg.weight_ensemble
        with torch.no_grad():
            for name, initial in self.initial.items():
                params[name].copy_(torch.lerp(initial.to(params[name].device), trained[name], alpha))
        try:
            yield
        finally:
            with torch.no_grad():
                for name, value in trained.items():
                    params[name].copy_(value)

    def recipe(self) -> Dict[str, str]:
        """The SEVE variant's settings, kept in the checkpoint so an evaluation can say what was trained."""
        recipe = {}
        if self.cfg.feature_distill:
            recipe["feature_distill"] = str(self.cfg.feature_distill)
        if self.cfg.seve_gate_lr != 1:
            recipe["seve_gate_lr"] = str(self.cfg.seve_gate_lr)
        if self.initial:
            recipe["weight_ensemble"] = str(self.cfg.weight_ensemble)
        return recipe


def _refuse_other_weights(path: str, model: str) -> None:
    """Weights the clip stage wrote for another model, or a FISA checkpoint, named as such rather than by the
    missing and unexpected keys open_clip reports for them."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError):
        return  # not a safetensors file (a .pt from elsewhere): open_clip reads it or says what is wrong
    if metadata.get("format") == "open_clip" and metadata.get("model", model) != model:
        raise CheckpointError(f"{path} holds the CLIP weights of model {metadata['model']}, not of {model}")
    if metadata.get("format") == FORMAT:
        raise CheckpointError(f"{path} is a FISA checkpoint (what `train adapt` takes), not CLIP weights")


def snapshot_path(out: str, step: int) -> str:
    """runs/fisa.safetensors, 100 -> runs/fisa.step100.safetensors"""
    root, ext = os.path.splitext(out)
    return f"{root}.step{step}{ext}"


def _state_path(out: str) -> str:
    return f"{out}.state.safetensors"


# What a training run's trajectory depends on besides --steps: a state is resumed only by a run that agrees
# on each (the path-valued ones compared as absolute paths, so a run from another folder still resumes).
RESUMED_OPTIONS = ("stage", "model", "init", "data", "split", "trainable", "batch_size", "lr", "weight_decay",
                   "warmup", "seed", "region_captions", "seve_layers", "feature_distill", "seve_gate_lr", "amp")


def _options(cfg: TrainConfig) -> Dict[str, object]:
    options = {name: getattr(cfg, name) for name in RESUMED_OPTIONS}
    for name in ("init", "data"):
        options[name] = options[name] and os.path.abspath(options[name])
    return json.loads(json.dumps(options))  # tuples as lists, as a state file gives them back


def _save_state(path: str, step: int, params: Dict[str, torch.nn.Parameter], optimizer, losses: List[float],
                cfg: TrainConfig) -> None:
    tensors = {f"param/{n}": p.detach().cpu().contiguous() for n, p in params.items()}
    index = {id(p): n for n, p in params.items()}
    for p, state in optimizer.state.items():
        for key, value in state.items():
            tensors[f"opt/{index[id(p)]}/{key}"] = value.detach().cpu().contiguous()
    metadata = {"step": str(step), "losses": json.dumps(losses), "options": json.dumps(_options(cfg))}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)


_FIX = "delete it to start over, or pass overwrite=True (--overwrite)"


def _read_state(path: str, cfg: TrainConfig) -> Tuple[int, List[float], Dict[str, torch.Tensor]]:
    """The step, losses and tensors of a training state, refused (before any model is built) when damaged,
    beyond --steps, or saved by a run with other options."""
    from safetensors import SafetensorError, safe_open

    def damaged(what: str) -> CheckpointError:
        return CheckpointError(f"cannot resume from {path}: not a readable training state ({what}); {_FIX}")

    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(path)
        check_finite(path, tensors)
        step, losses = json.loads(metadata["step"]), json.loads(metadata["losses"])
        options = json.loads(metadata.get("options", "{}"))  # states written before options were recorded: {}
    except (SafetensorError, OSError, ValueError, KeyError, CheckpointError) as exc:
        raise damaged(str(exc)) from None
    if type(step) is not int or step < 0:
        raise damaged(f"its step {metadata['step']!r} is not a whole number >= 0")
    if not (isinstance(losses, list) and len(losses) == step and all(
            type(v) in (int, float) and math.isfinite(v) for v in losses)):
        raise damaged(f"its losses are not a list of {step} finite numbers, one a step")
    if not isinstance(options, dict):
        raise damaged("its options are not a JSON object")
    if step > cfg.steps:
        raise InputError(f"{path} is a training state at step {step}, beyond steps={cfg.steps} (--steps): pass "
                         f"steps={step} or more to resume it, or overwrite=True (--overwrite) to start over")
    for name, value in _options(cfg).items():
        if name in options and options[name] != value:
            flag = name if name == "stage" else "--" + name.replace("_", "-")
            raise InputError(f"{path} was trained with {flag} {options[name]}, not {value}: pass the same to resume "
                             f"it, or overwrite=True (--overwrite) to start over")
    return step, losses, tensors


def _restore_state(path: str, tensors: Dict[str, torch.Tensor], params: Dict[str, torch.nn.Parameter],
                   optimizer) -> None:
    """Restores parameters and AdamW moments; a state that belongs to another model, stage or trainable
    preset, or whose tensors do not fit, is refused before anything is changed."""
    another = "(a state of another model, stage or --trainable)"
    extra = sorted(k[len("param/"):] for k in tensors if k.startswith("param/") and k[len("param/"):] not in params)
    if extra:
        raise CheckpointError(f"cannot resume from {path}: it trains {extra[0]}, which this run does not "
                              f"{another}; {_FIX}")
    for n, p in params.items():
        saved = tensors.get(f"param/{n}")
        if saved is None or saved.shape != p.shape:
            found = "missing" if saved is None else f"of shape {tuple(saved.shape)}"
            raise CheckpointError(f"cannot resume from {path}: parameter {n} is {found} there, expected "
                                  f"{tuple(p.shape)} {another}; {_FIX}")
    expected = {f"opt/{n}/{key}": shape for n, p in params.items()
                for key, shape in (("step", ()), ("exp_avg", p.shape), ("exp_avg_sq", p.shape))}
    for name, tensor in tensors.items():
        if name.startswith("param/"):
            continue
        if name not in expected:
            raise CheckpointError(f"cannot resume from {path}: it holds {name}, which is no parameter's optimizer "
                                  f"state {another}; {_FIX}")
        if tensor.shape != expected[name]:
            raise CheckpointError(f"cannot resume from {path}: optimizer state {name} has shape "
                                  f"{tuple(tensor.shape)}, expected {tuple(expected[name])}; {_FIX}")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[f"param/{n}"])
    for n, p in params.items():
        state = {}
        for key in ("step", "exp_avg", "exp_avg_sq"):
            name = f"opt/{n}/{key}"
            if name in tensors:
                state[key] = tensors[name].to(p.device)
        if state:
            optimizer.state[p] = state


def _param_groups(params: Dict[str, torch.nn.Parameter], cfg: TrainConfig) -> List[dict]:
    """AdamW groups, each with its multiple of the scheduled rate: the SEVE gates take --seve-gate-lr."""
    def is_gate(name: str) -> bool:
        return name.startswith("backbone.seve.") and name.endswith(".gate")

    gates = [p for n, p in params.items() if is_gate(n)]
    rest = [p for n, p in params.items() if not is_gate(n)]
    groups = [{"params": rest, "lr_scale": 1.0}, {"params": gates, "lr_scale": cfg.seve_gate_lr}]
    return [g for g in groups if g["params"]]


def train(cfg: TrainConfig) -> TrainResult:
    env = Distributed()
    if cfg.batch_size % env.world:
        raise ConfigError(f"batch size {cfg.batch_size} does not split over {env.world} processes")
    # Only the main process writes; the folders it makes for --out are removed again if the run fails.
    with output_folder(os.path.dirname(os.path.abspath(cfg.out))) if env.main else contextlib.nullcontext():
        return _train(cfg, env)


def _train(cfg: TrainConfig, env: Distributed) -> TrainResult:
    state_path = _state_path(cfg.out)
    if env.main:  # existing files are judged below, where a training state makes one resumable
        refuse_unwritable(cfg.out, overwrite=True, reads={"--init": cfg.init})
    if os.path.exists(cfg.out) and not os.path.exists(state_path) and not cfg.overwrite:
        raise CheckpointError(f"{cfg.out} exists; pass overwrite=True (--overwrite) to train over it")
    resumed = _read_state(state_path, cfg) if os.path.exists(state_path) and not cfg.overwrite else None
    torch.manual_seed(cfg.seed)
    stage = _Stage(cfg, env)
    stage.to(env.device)
    stage.model.train()
    params = {n: p for n, p in stage.model.named_parameters() if p.requires_grad}
    trainable = list(params.values())
    env.broadcast(trainable)
    optimizer = torch.optim.AdamW(_param_groups(params, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = _schedule(cfg)
    start, losses = 0, []
    if resumed is not None:
        start, losses, tensors = resumed
        _restore_state(state_path, tensors, params, optimizer)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.amp and env.device.type == "cuda")
    progress = None
    if cfg.progress and env.main:
        from tqdm import tqdm

        progress = tqdm(total=cfg.steps, initial=start, desc=f"train {cfg.stage}", unit="step", dynamic_ncols=True)
    began = time.time()
    try:
        for step in range(start, cfg.steps):
            keys = batch_keys(step, len(stage.data), cfg.batch_size, cfg.seed, env.rank, env.world)
            with autocast:
                terms = stage.loss(keys)
                loss = sum(terms.values())
            value = float(loss.detach())
            if env.world > 1:
                reduced = torch.tensor([value], device=env.device)
                dist.all_reduce(reduced)
                value = float(reduced) / env.world
            # Every process sees the same mean, so all stop here together, before the update spreads the NaN.
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"training diverged: the loss is {value} at step {step + 1} of {cfg.steps}; no checkpoint "
                    f"written to {cfg.out}: try a lower --lr than {cfg.lr:g}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            env.average_gradients(trainable)
            # The rate is a function of the step alone, so a resumed run needs no scheduler state.
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * group["lr_scale"] * schedule(step)
            optimizer.step()
            losses.append(value)
            if progress is not None:
                progress.update(1)
                progress.set_postfix({k: f"{float(torch.as_tensor(v).detach()):.3f}" for k, v in terms.items()})
            if env.main and step + 1 in cfg.snapshots:
                stage.save(snapshot_path(cfg.out, step + 1), step + 1)
            if env.main and ((step + 1) % cfg.save_every == 0) and step + 1 < cfg.steps:
                _save_state(state_path, step + 1, params, optimizer, losses, cfg)
            env.barrier()
    finally:  # the bar ends its line, so an error comes after it on a line of its own
        if progress is not None:
            progress.close()
    elapsed = time.time() - began
    if env.main:
        stage.save(cfg.out)
        if os.path.exists(state_path):
            os.remove(state_path)
    env.barrier()
    total = sum(p.numel() for p in stage.model.parameters())
    return TrainResult(
        out=cfg.out, steps=cfg.steps, losses=losses, seconds_per_step=elapsed / max(1, cfg.steps - start),
        trainable=sum(p.numel() for p in trainable), total=total, resumed_at=start,
    )
