"""AdvEncoder on the synthetic world: downstream-agnostic universal perturbations and patches vs baselines.

The victim is the embedded SimCLR encoder (``load_encoder("simclr")``, or a wider, longer trained one:
``--encoder-width 32 --encoder-steps 4800 --encoder-lr 0.006`` is ``simclr-w32``, the competent victim). The
attacker fits on surrogate data whose backgrounds (sky, grass) never appear downstream; the downstream heads
(AdvEncoder's 3-layer MLP on frozen features) are trained and tested on the other backgrounds (stripes, checker,
bricks). For every head and attack it reports clean accuracy, accuracy under attack, the paper's attack success rate
(the share of test inputs whose prediction *changed*, against the clean prediction) and the label-based one (correct
inputs made wrong, the ``classification`` task's), both from the ``prediction_change`` task, plus the reference
code's kNN monitor (k = 20, T = 0.07 on L2-normalised features, memory bank = train images of the downstream
backgrounds) and the perturbation's high/low spectral energy ratio.

Attacks, all at the same budget (L∞ 10/255, or a patch of 3% of the image):

* ``noise``: uniform random sign noise; ``uap``: robustlab's UAP, which on an encoder maximises the feature
  distortion (the SSP-style baseline); ``pgd``: per-instance PGD-10 on encoder + head, away from each input's
  clean prediction (the ceiling of the paper's rate; before issue 26's competent encoder, away from the label);
  ``uap (head-aware)``: one ``uap`` per head, fitted on the head and its labelled downstream data (a universal
  perturbation by an attacker who knows the head: what one δ can do here, beside AdvEncoder's head-blind one).
* ``advencoder`` (hfc weight 1, the paper's), its ablations hfc 0 and hfc 1000, and the reference's
  unclipped training loss, its ``eps * tanh`` bound instead of the clamp (with the per-epoch gradient
  norms and saturated share of every fit); ``advencoder-pat`` and a random patch in the same box.
* After the table: AdvEncoder minus SSP-style ``uap`` and minus noise per head, with paired 95% intervals.
* ``--transfer``: the main perturbation and noise applied to a second SimCLR encoder: the victim's config with
  another seed (``--transfer-seed``; ``--transfer-steps`` trains it for another length).
* ``--image-size 64``: the reference's regime, every image at 64x64 px (rendered at that size: the synthetic
  world draws any size, where the reference resizes 32 px CIFAR images), so the encoder trained at 32 px is fed
  64 px images and the perturbation, patch and HFC radius are 64 px ones. ``--attacks`` runs a subset.

Run from the repository root (about 15 minutes on 2 busy CPU cores, encoder training included)::

    OMP_NUM_THREADS=1 python experiments/advencoder.py --n-test 512 --epochs 5 --n-fit 1024 --n-bank 1024 \
        --transfer --transfer-steps 100
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from robustlab.attacks._prediction_change import PredictionChange
from robustlab.attacks.advencoder import AdvEncoder, high_low_energy_ratio
from torch import Tensor, nn

from robustlab.attack import ATTACKS, Attack
from robustlab.data import load_dataset
from robustlab.data.synth import ATTRIBUTES, SynthConfig, SynthDataset
from robustlab.encoders import Encoder, HeadConfig, trained_heads
from robustlab.intervals import paired_difference, wilson_interval
from robustlab.ssl import SimCLREncoder, SSLConfig, trained_simclr

SURROGATE = "synth:backgrounds=sky+grass"
DOWNSTREAM = ("stripes", "checker", "bricks")
DOWNSTREAM_DATA = "synth:backgrounds=" + "+".join(DOWNSTREAM)
PER_INPUT = "pgd (per-input, encoder+head)"
HEAD_AWARE = "uap (head-aware: one delta per head, fitted on its labels)"
EPS = 10 / 255


@dataclass
class Row:
    attack: str
    task: str
    clean_acc: float
    adv_acc: float
    asr_changed: float
    asr_label: float
    knn_changed: float
    spectral_ratio: float | None
    changed: list[bool]  # per test input: did the prediction change (for paired differences between attacks)


def knn_predict(
    features: Tensor, bank: Tensor, bank_labels: Tensor, classes: int, k: int = 20, t: float = 0.07
) -> Tensor:
    """The reference code's kNN monitor: similarity-weighted vote of the k nearest L2-normalised features."""
    similarity = F.normalize(features, dim=1) @ F.normalize(bank, dim=1).t()
    weights, index = similarity.topk(k, dim=1)
    votes = torch.zeros(len(features), classes).scatter_add_(1, bank_labels[index], (weights / t).exp())
    return votes.argmax(dim=1)


def chosen_attacks(args: argparse.Namespace) -> dict[str, Attack]:
    """The universal attacks ``--attacks`` names (all by default), unfitted: checked before anything trains."""
    fit = {"epochs": args.epochs, "n_fit": args.n_fit, "batch_size": 128, "lr": args.lr}
    every: dict[str, Attack] = {
        "noise": ATTACKS.get("noise").factory(eps=EPS),
        "uap (SSP-style)": ATTACKS.get("uap").factory(eps=EPS, epochs=args.epochs, n_fit=args.n_fit),
        "advencoder": AdvEncoder(**fit),
        "advencoder hfc=0": AdvEncoder(**fit, hfc=0.0),
        "advencoder hfc=1000": AdvEncoder(**fit, hfc=1000.0),
        "advencoder unclipped training": AdvEncoder(**fit, unclipped_training=True),
        "advencoder tanh bound": AdvEncoder(**fit, bound="tanh"),
        "advencoder-pat": AdvEncoder(**fit, mode="pat"),
    }
    chosen = args.attacks.split(",") if args.attacks else list(every)
    if unknown := set(chosen) - set(every):
        raise SystemExit(f"advencoder.py: unknown attacks {sorted(unknown)}; choose from {', '.join(every)}")
    if args.transfer and not {"advencoder", "noise"} <= set(chosen):
        raise SystemExit("advencoder.py: --transfer applies advencoder's perturbation and noise: add both to --attacks")
    return {name: attack for name, attack in every.items() if name in chosen}


def fit_attacks(
    encoder: Encoder, surrogate: object, attacks: dict[str, Attack], args: argparse.Namespace
) -> dict[str, Attack]:
    """The attacks fitted on the surrogate data with the same seed, plus a random patch beside the learned one."""
    for name, attack in attacks.items():
        started = time.perf_counter()
        attack.fit(encoder, surrogate, generator=torch.Generator().manual_seed(args.seed), progress=False)
        print(f"fitted {name} in {time.perf_counter() - started:.0f} s", flush=True)
        for epoch, entry in enumerate(getattr(attack, "diagnostics", [])):  # why the generator stops learning
            print(f"  epoch {epoch}: " + ", ".join(f"{key} {value:.3g}" for key, value in entry.items()), flush=True)
    if "advencoder-pat" in attacks:
        random_patch = AdvEncoder(mode="pat")
        pat = attacks["advencoder-pat"].fitted()
        values = torch.rand(pat["patch"].shape, generator=torch.Generator().manual_seed(args.seed))
        random_patch.load_fitted({"patch": values * pat["mask"], "mask": pat["mask"]})
        attacks["random patch"] = random_patch
    return attacks


def measure(
    encoder: Encoder, heads: dict[str, nn.Module], attacks: dict[str, Attack], args: argparse.Namespace
) -> list[Row]:
    data = SynthDataset("test", config=SynthConfig(backgrounds=DOWNSTREAM, image_size=encoder.input_size))
    index = torch.arange(args.n_test)
    x, _ = data.get_batch(index)
    labels = data.attributes(index)
    bank_data = SynthDataset("train", config=SynthConfig(backgrounds=DOWNSTREAM, image_size=encoder.input_size))
    bank_index = torch.arange(args.n_bank)
    bank_x, _ = bank_data.get_batch(bank_index)
    bank_labels = bank_data.attributes(bank_index)
    with torch.no_grad():
        bank, clean_features = encoder(bank_x), encoder(x)
        clean_preds = {task: head.head(clean_features).argmax(1) for task, head in heads.items()}
    knn_clean = {task: knn_predict(clean_features, bank, bank_labels[task], len(ATTRIBUTES[task])) for task in heads}
    generator = torch.Generator().manual_seed(args.seed)
    steps = range(0, len(x), 256)
    rows = []
    for name, attack in [*attacks.items(), (PER_INPUT, None), (HEAD_AWARE, None)]:
        fitted = attack.fitted() if attack is not None else {}
        ratio = high_low_energy_ratio(fitted["delta"], 8 * x.shape[-1] / 64) if "delta" in fitted else None
        shared = attack(encoder, x, labels["shape"], generator=generator) if attack is not None else None
        for task, head in heads.items():
            y, clean_pred = labels[task], clean_preds[task]
            if name == PER_INPUT:  # the ceiling of the paper's rate: push each input away from its clean prediction
                pgd = ATTACKS.get("pgd").factory(eps=EPS, steps=10)
                x_adv = torch.cat(
                    [pgd(head, x[s : s + 256], clean_pred[s : s + 256], generator=generator) for s in steps]
                )
            elif name == HEAD_AWARE:  # the ceiling of one perturbation: it sees the head and its labelled data
                uap = ATTACKS.get("uap").factory(eps=EPS, epochs=args.epochs, n_fit=args.n_fit)
                head_data = load_dataset(f"{DOWNSTREAM_DATA},target={task}", split="train", image_size=x.shape[-1])
                x_adv = uap.fit(head, head_data, generator=torch.Generator().manual_seed(args.seed), progress=False)(
                    head, x, y, generator=generator
                )
            else:
                x_adv = shared
            with torch.no_grad():
                adv_features = encoder(x_adv)
                adv_pred = head.head(adv_features).argmax(1)
            knn_adv = knn_predict(adv_features, bank, bank_labels[task], len(ATTRIBUTES[task]))
            metrics = PredictionChange().aggregate(y, {"pred": clean_pred}, {"adv_pred": adv_pred})
            rows.append(
                Row(
                    attack=name,
                    task=task,
                    clean_acc=metrics["clean_acc"],
                    adv_acc=(adv_pred == y).float().mean().item(),
                    asr_changed=metrics["prediction_change_rate"],
                    asr_label=metrics["attack_success_rate"],
                    knn_changed=(knn_adv != knn_clean[task]).float().mean().item(),
                    spectral_ratio=ratio,
                    changed=(adv_pred != clean_pred).tolist(),
                )
            )
        print(f"measured {name}", flush=True)
    return rows


def transfer_rows(
    attacks: dict[str, Attack], heads_of: dict[str, nn.Module], encoder: Encoder, args: argparse.Namespace
) -> list[str]:
    """Perturbations fitted on the main encoder, applied to another encoder's downstream models."""
    data = SynthDataset("test", config=SynthConfig(backgrounds=DOWNSTREAM, image_size=encoder.input_size))
    index = torch.arange(args.n_test)
    x, _ = data.get_batch(index)
    labels = data.attributes(index)
    with torch.no_grad():
        clean_preds = {task: head(x).argmax(1) for task, head in heads_of.items()}
    lines = []
    for name, attack in attacks.items():
        x_adv = attack(encoder, x, labels["shape"], generator=torch.Generator().manual_seed(args.seed))
        for task, head in heads_of.items():
            clean = clean_preds[task]
            with torch.no_grad():
                adv = head(x_adv).argmax(1)
            lines.append(
                f"| {name} | {task} | {(clean == labels[task]).float().mean():.3f} "
                f"| {(adv == labels[task]).float().mean():.3f} | {rate((adv != clean).float().mean().item(), len(x))} |"
            )
    return lines


def print_paired(rows: list[Row], attack: str, controls: tuple[str, ...]) -> None:
    """``attack``'s paper rate minus each control's, per head, with Newcombe's paired 95% interval (same inputs)."""
    by = {(r.attack, r.task): r for r in rows}
    pairs = [(by[attack, r.task], r) for r in rows if r.attack in controls and (attack, r.task) in by]
    if pairs:
        print(f"\n| {attack} minus | task | difference in ASR changed | paired 95% interval |\n|---|---|---|---|")
    for mine, control in pairs:
        d = paired_difference(mine.changed, control.changed)
        print(f"| {control.attack} | {control.task} | {d.difference:+.3f} | [{d.low:+.3f}, {d.high:+.3f}] |")


def rate(p: float, n: int) -> str:
    """A share of ``n`` inputs with its Wilson 95% interval."""
    low, high = wilson_interval(p, n)
    return f"{p:.3f} [{low:.3f}, {high:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-test", type=int, default=1024)
    parser.add_argument("--n-fit", type=int, default=2048)
    parser.add_argument("--n-bank", type=int, default=2048)
    parser.add_argument("--n-train-heads", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--heads", default="shape,color,background,size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--transfer", action="store_true")
    parser.add_argument("--transfer-seed", type=int, help="the second encoder's seed (default: the victim's + 1)")
    parser.add_argument("--transfer-steps", type=int, help="its training steps (default: the victim's)")
    victim = SSLConfig()
    parser.add_argument("--encoder-width", type=int, default=victim.width, help="the victim SimCLR encoder's width")
    parser.add_argument("--encoder-steps", type=int, default=victim.steps, help="its training steps (cached)")
    parser.add_argument("--encoder-seed", type=int, default=victim.seed)
    parser.add_argument("--encoder-lr", type=float, default=victim.lr, help="its peak learning rate")
    parser.add_argument(
        "--image-size", type=int, default=victim.image_size, help="the reference's 64: every image at 64x64 px"
    )
    parser.add_argument("--attacks", help="comma-separated subset of the attacks (default: all of them)")
    args = parser.parse_args()
    attacks = chosen_attacks(args)

    # The defaults are load_encoder("simclr")'s encoder; a longer or wider one is trained once and cached.
    victim = SSLConfig(width=args.encoder_width, steps=args.encoder_steps, lr=args.encoder_lr, seed=args.encoder_seed)
    encoder = trained_simclr(victim, progress=True)
    if args.image_size != encoder.input_size:  # the reference resizes every image to 64x64 before its encoder
        encoder = SimCLREncoder(encoder.backbone, feature_dim=encoder.feature_dim, input_size=args.image_size)
    configs = [HeadConfig(task=t, data=DOWNSTREAM_DATA, n_train=args.n_train_heads) for t in args.heads.split(",")]
    heads = trained_heads(encoder, configs, progress=True)
    surrogate = load_dataset(SURROGATE, split="train", image_size=encoder.input_size)
    attacks = fit_attacks(encoder, surrogate, attacks, args)
    rows = measure(encoder, heads, attacks, args)
    print(f"\nn = {args.n_test} test images; ASR changed with its Wilson 95% interval")
    print("| attack | task | clean acc | adv acc | ASR changed (paper) | ASR label | kNN changed | high/low energy |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = "-" if r.spectral_ratio is None else f"{r.spectral_ratio:.3g}"
        print(
            f"| {r.attack} | {r.task} | {r.clean_acc:.3f} | {r.adv_acc:.3f} | {rate(r.asr_changed, args.n_test)} | "
            f"{r.asr_label:.3f} | {r.knn_changed:.3f} | {ratio} |"
        )
    print_paired(rows, "advencoder", ("uap (SSP-style)", "noise"))
    if args.transfer:
        seed = victim.seed + 1 if args.transfer_seed is None else args.transfer_seed
        steps = victim.steps if args.transfer_steps is None else args.transfer_steps
        other = trained_simclr(replace(victim, seed=seed, steps=steps), progress=True)
        other_heads = trained_heads(other, configs, progress=True)
        print(f"\nTransfer: fitted on the victim (seed {victim.seed}), applied to seed {seed}, {steps} steps")
        print("| attack | task | clean acc | adv acc | ASR changed |\n|---|---|---|---|---|")
        print("\n".join(transfer_rows({k: attacks[k] for k in ("advencoder", "noise")}, other_heads, other, args)))


if __name__ == "__main__":
    torch.set_num_threads(1)  # a shared 2-core machine: one thread each is several times faster than contention
    main()
