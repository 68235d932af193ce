"""Image captioners: a CNN encoder and an attention LSTM decoder (Show, Attend and Tell), trained once and cached.

The caption-targeting attack (``caption_gan``) needs a victim whose CNN encoder produces the hidden features an
RNN decoder reads. :class:`Captioner` is that victim: it takes ``[0, 1]`` images (normalization lives inside
:attr:`Captioner.encoder`), exposes the encoder as a module of its own so an attack can match its features, and
writes captions by greedy or beam decoding.

The architecture follows Show, Attend and Tell (Xu et al., ICML 2015, arXiv 1502.03044): soft attention over the
encoder's feature-map regions, a sigmoid gate on the context vector, the LSTM state initialised from the mean
region, and the doubly stochastic attention penalty ``λ·Σ_r (1 - Σ_t α_tr)²``. Two sizes exist:

- ``captioner`` (embedded): a five-layer CNN giving a 64x4x4 map (16 regions) on the synthetic world's 32x32
  images, and the decoder (LSTM 128, attention 64, embeddings 32): 0.23M parameters in all, trained by robustlab
  on ``SynthDataset.captions`` (our choice of sizes: small enough for CPU tests).
- ``sat_resnet18`` / ``sat_resnet50`` / ``sat_resnet101``: torchvision ResNet features pooled to 14x14, as in
  the SAT reference implementations; ``weights`` is a captioner checkpoint (:func:`save_captioner`), or ``synth``
  to train the decoder on the synthetic world over ImageNet features (which needs the ImageNet download).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustlab.allocator import steady_shapes
from robustlab.cache import cache_dir, config_hash, load_weights, save_weights
from robustlab.data.captions import CaptionData, SynthCaptions, synth_caption_words
from robustlab.errors import CheckpointMismatchError, ConfigError, UnknownNameError, WeightsUnavailableError
from robustlab.models.classifier import IMAGENET_MEAN, IMAGENET_STD, SYNTH_MEAN, SYNTH_STD
from robustlab.models.nets import _conv_bn
from robustlab.optimize import descend, one_cycle
from robustlab.seeding import global_rng_seeded

__all__ = [
    "CAPTIONERS",
    "AttentionDecoder",
    "Captioner",
    "CaptionerConfig",
    "ImageEncoder",
    "Vocab",
    "build_captioner",
    "load_captioner",
    "save_captioner",
    "tokenize",
    "train_captioner",
    "trained_captioner",
]

RECIPE = 2  # bump when training changes what it produces, so stale cached weights are not reused
# 2: dropout draws seeded (before, they came from whatever state the global RNG was in)
PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"

CAPTIONERS = {
    "captioner": "Embedded CNN (64x4x4 regions) + attention LSTM, trained on the synthetic world's captions.",
    "sat_resnet18": "Show-Attend-Tell over torchvision ResNet-18 features (14x14x512).",
    "sat_resnet50": "Show-Attend-Tell over torchvision ResNet-50 features (14x14x2048).",
    "sat_resnet101": "Show-Attend-Tell over torchvision ResNet-101 features (14x14x2048), the paper's victim.",
}
"""Captioner name -> one-line summary (``load_captioner`` accepts these names)."""


def tokenize(caption: str) -> list[str]:
    """Lower-case words of ``caption`` (letters, digits and apostrophes), the tokenization BLEU is computed on.

    Example:
        >>> tokenize("A large red star, on Stripes.")
        ['a', 'large', 'red', 'star', 'on', 'stripes']
    """
    return re.findall(r"[a-z0-9']+", caption.lower())


@dataclass(frozen=True)
class Vocab:
    """Words by id; ids 0-3 are ``<pad>``, ``<start>``, ``<end>``, ``<unk>``.

    Example:
        >>> vocab = Vocab.from_captions(["a red star", "a blue ring"])
        >>> vocab.decode(vocab.encode("a red ring", length=5))
        'a red ring'
    """

    words: tuple[str, ...]

    @classmethod
    def from_captions(cls, captions: Sequence[str], *, min_count: int = 1) -> Vocab:
        """Every word seen at least ``min_count`` times, sorted, after the four special tokens."""
        counts = Counter(word for text in captions for word in tokenize(text))
        return cls((PAD, START, END, UNK, *sorted(w for w, c in counts.items() if c >= min_count)))

    def __len__(self) -> int:
        return len(self.words)

    def index(self, word: str) -> int:
        """Id of ``word`` (``<unk>``'s id for an unknown word)."""
        return self._ids.get(word, 3)

    @cached_property
    def _ids(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.words)}

    def unknown(self, caption: str) -> list[str]:
        """Words of ``caption`` that are not in the vocabulary."""
        ids = self._ids
        return [w for w in tokenize(caption) if w not in ids]

    def encode(self, caption: str, *, length: int) -> list[int]:
        """``<start> words <end> <pad>...`` cut or padded to ``length + 2`` ids."""
        ids = [self.index(w) for w in tokenize(caption)][:length]
        return [1, *ids, 2] + [0] * (length - len(ids))

    def decode(self, ids: Sequence[int]) -> str:
        """Words up to the first ``<end>``, special tokens dropped."""
        out = []
        for i in ids:
            if i == 2:
                break
            if i > 3:
                out.append(self.words[i])
        return " ".join(out)


class ImageEncoder(nn.Module):
    """``[0, 1]`` images -> the feature map the decoder attends over, :math:`(B, D, h, w)`.

    This is the hidden layer the caption attack matches; it normalizes its input itself so that attacks stay in
    pixel space.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, backbone: nn.Module, *, dim: int, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.backbone = backbone
        self.dim = dim
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone((x - self.mean) / self.std)


def _tiny_backbone(width: int = 32) -> nn.Sequential:
    """32x32 -> (2·width)x4x4 regions: a strided stem, then two conv pairs with max-pooling (~0.08M parameters).

    The strided stem makes it about four times cheaper than full-resolution convolutions, which is what keeps
    training within a CPU minute; the synthetic world's objects span a third of the image or more.
    """
    w = width
    return nn.Sequential(
        _conv_bn(3, w // 2), _conv_bn(w // 2, w, stride=2), _conv_bn(w, w), nn.MaxPool2d(2), _conv_bn(w, 2 * w),
        _conv_bn(2 * w, 2 * w), nn.MaxPool2d(2),
    )  # fmt: skip


def _resnet_backbone(arch: str, *, progress: bool) -> tuple[nn.Module, int]:
    """ImageNet ResNet without its pooling and head, pooled to 14x14 regions as in Show-Attend-Tell."""
    from robustlab.models.loading import _load_torchvision_weights

    net = _load_torchvision_weights(arch, "imagenet", num_classes=None, progress=progress).net
    dim = cast(nn.Linear, net.fc).in_features
    return nn.Sequential(*list(net.children())[:-2], nn.AdaptiveAvgPool2d(14)), dim


class AttentionDecoder(nn.Module):
    """LSTM decoder with soft attention over encoder regions (Show, Attend and Tell, deterministic attention).

    Shape:
        - features: :math:`(B, D, h, w)` encoder map (or :math:`(B, R, D)` regions).
        - tokens: :math:`(B, T)` input ids starting with ``<start>`` (teacher forcing).
        - output: logits :math:`(B, T, V)` and attention weights :math:`(B, T, R)`.
    """

    def __init__(
        self,
        vocab_size: int,
        feature_dim: int,
        *,
        embed_dim: int = 32,
        hidden_dim: int = 128,
        attention_dim: int = 64,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.init_h, self.init_c = nn.Linear(feature_dim, hidden_dim), nn.Linear(feature_dim, hidden_dim)
        self.att_features, self.att_hidden = nn.Linear(feature_dim, attention_dim), nn.Linear(hidden_dim, attention_dim)
        self.att_score = nn.Linear(attention_dim, 1)
        self.gate = nn.Linear(hidden_dim, feature_dim)
        self.cell = nn.LSTMCell(embed_dim + feature_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_dim, vocab_size)

    @staticmethod
    def regions(features: Tensor) -> Tensor:
        """A feature map :math:`(B, D, h, w)` as :math:`(B, h·w, D)` regions (regions pass through)."""
        return features.flatten(2).transpose(1, 2) if features.dim() == 4 else features

    def start(self, regions: Tensor) -> tuple[Tensor, Tensor]:
        """Initial LSTM state from the mean region."""
        mean = regions.mean(1)
        return self.init_h(mean).tanh(), self.init_c(mean).tanh()

    def step(
        self, regions: Tensor, keys: Tensor, token: Tensor, state: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor]:
        """One word: attend with the last state, feed ``[embedding, gated context]``; ``keys`` are projected regions."""
        h, c = state
        alpha = self.att_score((keys + self.att_hidden(h).unsqueeze(1)).relu()).squeeze(2).softmax(1)
        context = torch.sigmoid(self.gate(h)) * (alpha.unsqueeze(2) * regions).sum(1)
        h, c = self.cell(torch.cat([self.embed(token), context], 1), (h, c))
        return self.out(self.dropout(h)), (h, c), alpha

    def forward(self, features: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        regions = self.regions(features)
        keys, state = self.att_features(regions), self.start(regions)
        logits, alphas = [], []
        for t in range(tokens.shape[1]):
            step_logits, state, alpha = self.step(regions, keys, tokens[:, t], state)
            logits.append(step_logits)
            alphas.append(alpha)
        return torch.stack(logits, 1), torch.stack(alphas, 1)

    @torch.no_grad()
    def search(self, features: Tensor, *, beam: int, max_len: int) -> Tensor:
        """Beam search (``beam=1`` is greedy decoding) for every image at once: ids :math:`(B, L)`, ``<end>``-padded.

        Finished beams may only extend with ``<end>`` at no cost, so all beams keep one length; scores are summed
        log-probabilities without length normalization (captions of one template have one length).
        """
        regions = self.regions(features).repeat_interleave(beam, 0)
        batch, rows = len(features), len(regions)
        keys, state = self.att_features(regions), self.start(regions)
        token = torch.full((rows,), 1, dtype=torch.long, device=regions.device)
        scores = torch.full((batch, beam), float("-inf"), device=regions.device)
        scores[:, 0] = 0  # all beams start identical: keep one so the first step does not pick duplicates
        finished = torch.zeros(rows, dtype=torch.bool, device=regions.device)
        ids = token.new_empty(rows, 0)
        for _ in range(max_len + 1):
            logits, state, _ = self.step(regions, keys, token, state)
            logp = logits.log_softmax(1)
            logp[finished] = float("-inf")
            logp[finished, 2] = 0.0
            total = (scores.view(-1, 1) + logp).view(batch, -1)
            scores, flat = total.topk(beam, dim=1)
            parent = (torch.arange(batch, device=regions.device).unsqueeze(1) * beam + flat // logp.shape[1]).flatten()
            token = (flat % logp.shape[1]).flatten()
            state = (state[0][parent], state[1][parent])
            ids = torch.cat([ids[parent], token.unsqueeze(1)], 1)
            finished = finished[parent] | (token == 2)
            if bool(finished.all()):
                break
        best = torch.arange(batch, device=regions.device) * beam + scores.argmax(1)
        return ids[best]


class Captioner(nn.Module):
    """An encoder and a decoder with their vocabulary; in eval mode with frozen parameters when loaded.

    Shape:
        - x: :math:`(B, 3, S, S)` float in ``[0, 1]`` with ``S = input_size``.
        - tokens: :math:`(B, T)` teacher-forcing inputs; ``forward`` returns logits :math:`(B, T, V)`.
    """

    def __init__(
        self,
        encoder: ImageEncoder,
        decoder: AttentionDecoder,
        vocab: Vocab,
        *,
        name: str,
        input_size: int,
        max_len: int,
    ) -> None:
        super().__init__()
        self.encoder, self.decoder, self.vocab = encoder, decoder, vocab
        self.name, self.input_size, self.max_len = name, input_size, max_len

    def forward(self, x: Tensor, tokens: Tensor) -> Tensor:
        return self.decoder(self.encoder(x), tokens)[0]

    def caption(self, x: Tensor, *, beam: int = 1) -> list[str]:
        """Captions of ``[0, 1]`` images by beam search (``beam=1``: greedy)."""
        with torch.no_grad():
            return self.caption_features(self.encoder(x), beam=beam)

    def caption_features(self, features: Tensor, *, beam: int = 1) -> list[str]:
        """Captions of encoder features, for attacks that have already computed them."""
        if beam < 1:
            raise ConfigError(f"beam must be >= 1, got {beam}")
        ids = self.decoder.search(features, beam=beam, max_len=self.max_len)
        return [self.vocab.decode(row) for row in ids.tolist()]

    def encode_captions(self, captions: Sequence[str]) -> Tensor:
        """Token ids :math:`(B, max_len + 2)` (``<start> ... <end> <pad>``) on the captioner's device."""
        device = self.encoder.mean.device
        return torch.tensor([self.vocab.encode(c, length=self.max_len) for c in captions], device=device)


@dataclass(frozen=True)
class CaptionerConfig:
    """Everything that determines a trained captioner; its hash names the cache file."""

    name: str = "captioner"
    image_size: int = 32
    seed: int = 0
    steps: int = 2000
    batch_size: int = 64
    lr: float = 5e-3
    attention_penalty: float = 1.0
    max_len: int = 8
    recipe: int = RECIPE


def build_captioner(config: CaptionerConfig, vocab: Vocab, *, progress: bool = True) -> Captioner:
    """An untrained captioner for ``config`` writing words of ``vocab`` (ImageNet weights for a ResNet encoder).

    For real data, build the vocabulary from the training captions and train with :func:`train_captioner`::

        data = CocoCaptions("captions_train2014.json", "train2014/")
        config = CaptionerConfig(name="sat_resnet101", image_size=224, max_len=20)
        captioner = build_captioner(config, Vocab.from_captions(data.captions, min_count=5))
        train_captioner(captioner, config, data)
        save_captioner(captioner, Path("sat.safetensors"), config=config)
    """
    if config.name not in CAPTIONERS:
        raise UnknownNameError(f"unknown captioner {config.name!r}; known: {', '.join(CAPTIONERS)}")
    # Constructors draw from the global RNG; fork it so the init is a function of the seed alone.
    with global_rng_seeded(config.seed):
        if config.name == "captioner":
            encoder = ImageEncoder(_tiny_backbone(), dim=64, mean=SYNTH_MEAN, std=SYNTH_STD)
        else:
            backbone, dim = _resnet_backbone(config.name.removeprefix("sat_"), progress=progress)
            encoder = ImageEncoder(backbone, dim=dim, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        decoder = AttentionDecoder(len(vocab), encoder.dim)
    return Captioner(
        encoder, decoder, vocab, name=config.name, input_size=config.image_size, max_len=config.max_len
    ).eval()


def train_captioner(captioner: Captioner, config: CaptionerConfig, data: CaptionData, *, progress: bool = True) -> None:
    """Train ``captioner`` in place with teacher forcing (AdamW, one-cycle schedule); leaves it frozen in eval mode.

    The loss is token cross-entropy (padding ignored) plus SAT's doubly stochastic attention penalty. A ResNet
    encoder stays frozen (only the decoder learns), as in SAT's default; the embedded CNN trains end to end.
    The decoder's dropout draws from the global RNG, forked and seeded here, so the weights are a function of
    ``config.seed`` alone, not of what the process drew before.
    """
    device = captioner.encoder.mean.device
    generator = torch.Generator().manual_seed(config.seed)
    trainable = captioner if config.name == "captioner" else captioner.decoder
    trainable.requires_grad_(True)
    params = [p for p in captioner.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=1e-4)
    schedule = one_cycle(optimizer, max_lr=config.lr, steps=config.steps, warmup=0.1)
    bar = tqdm(range(config.steps), desc=f"training {config.name}", disable=not progress, leave=False)
    trainable.train()
    with global_rng_seeded(config.seed, device=device), steady_shapes():
        for _ in bar:
            x, captions = data.images_and_captions(torch.randint(len(data), (config.batch_size,), generator=generator))
            tokens = captioner.encode_captions(captions)
            logits, alphas = captioner.decoder(captioner.encoder(x.to(device)), tokens[:, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), ignore_index=0)
            loss = loss + config.attention_penalty * ((1 - alphas.sum(1)) ** 2).mean()
            descend(optimizer, loss, schedule)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    captioner.eval().requires_grad_(False)


def trained_captioner(config: CaptionerConfig, *, progress: bool = True) -> Captioner:
    """The captioner of ``config`` trained on the synthetic world: trained on first use, loaded from the cache after."""
    vocab = Vocab((PAD, START, END, UNK, *synth_caption_words()))
    path = cache_dir("models") / f"{config.name}-synth-{config_hash(config)}.safetensors"
    captioner = build_captioner(config, vocab, progress=progress)
    if path.is_file():
        captioner.load_state_dict(load_weights(path))
        return captioner.requires_grad_(False)
    data = SynthCaptions("train", image_size=config.image_size, seed=config.seed)
    train_captioner(captioner, config, data, progress=progress)
    save_captioner(captioner, path, config=config)
    return captioner


def save_captioner(captioner: Captioner, path: Path, *, config: CaptionerConfig) -> None:
    """Write weights, vocabulary and config to one safetensors file that :func:`load_captioner` reads back."""
    metadata = {"vocab": json.dumps(list(captioner.vocab.words)), "config": json.dumps(asdict(config))}
    save_weights(path, captioner.state_dict(), metadata=metadata)


def _load_file(path: Path, *, progress: bool) -> Captioner:
    from safetensors import safe_open

    if not path.is_file():
        raise WeightsUnavailableError(f"no captioner checkpoint at {path}")
    if path.suffix != ".safetensors":
        raise CheckpointMismatchError(f"{path}: captioner checkpoints are .safetensors files written by save_captioner")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if "vocab" not in metadata or "config" not in metadata:
        raise CheckpointMismatchError(f"{path} has no vocab/config metadata: write it with save_captioner")
    config = CaptionerConfig(**json.loads(metadata["config"]))
    captioner = build_captioner(config, Vocab(tuple(json.loads(metadata["vocab"]))), progress=progress)
    try:
        captioner.load_state_dict(load_weights(path))
    except RuntimeError as error:
        raise CheckpointMismatchError(f"{path} does not fit {config.name}: {str(error).splitlines()[0]}") from None
    return captioner


def load_captioner(
    name: str = "captioner", *, weights: str = "synth", seed: int = 0, progress: bool = True
) -> Captioner:
    """A captioner in eval mode with frozen parameters.

    Args:
        name: a key of :data:`CAPTIONERS`.
        weights: ``synth`` (trained by robustlab on the synthetic world's train split and cached), or the path of
            a ``.safetensors`` file written by :func:`save_captioner` (its own config decides the architecture).
        seed: training seed for ``synth`` (a second seed gives a second victim, for transfer experiments).
        progress: a tqdm bar while training.

    Raises:
        UnknownNameError: ``name`` is not a known captioner.
        WeightsUnavailableError: ImageNet weights cannot be downloaded, or the checkpoint is missing.
        CheckpointMismatchError: the checkpoint is not a captioner checkpoint.
    """
    if name not in CAPTIONERS:
        raise UnknownNameError(f"unknown captioner {name!r}; known: {', '.join(CAPTIONERS)}")
    if weights != "synth":
        captioner = _load_file(Path(weights), progress=progress)
    else:
        size = 32 if name == "captioner" else 224
        captioner = trained_captioner(CaptionerConfig(name=name, image_size=size, seed=seed), progress=progress)
    return captioner.eval().requires_grad_(False)
