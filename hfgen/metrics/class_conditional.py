"""What the labels of a class-conditional model buy in its samples, measured with hfgen's own Fashion-MNIST
network (``load_feature_net("fmnist")``, a classifier whose penultimate layer gives the fd_fmnist features):

* ``accuracy`` of each class: how often the network classifies an image generated for class c as c (how often a
  "sneaker" is a sneaker). The network's own accuracy on the real images of the reference split is reported beside
  it (``classifier_accuracy_on_real``): generated images cannot be expected to score far above it.
* ``classified_as`` of each class: the classes the network sees in the images generated for class c, as fractions
  (a row of the confusion matrix; classes it never chose are left out): what a class that fails turns into.
* ``fd_fmnist`` of each class: the Fréchet distance between the features of the images generated for class c and
  those of the reference split's real images of class c (about 1,000 a class for Fashion-MNIST's test split; with
  fewer images than the 128 feature dimensions the figure is biased upwards, so compare like with like).
* ``fd_fmnist``: all generated images (the classes in equal numbers) against all the split's real images.
* ``null_class_histogram``: the classes the network sees in the model's unconditional (null-class) samples, the
  baseline the per-class accuracy stands beside (a balanced data set gives about 0.1 each).
"""

from __future__ import annotations

import torch

from ..progress import progress_bar
from .feature_net import FeatureNet, extract_features
from .frechet import feature_statistics, frechet_distance
from .sample_quality import generate_uint8


@torch.no_grad()
def classify(net: FeatureNet, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """The network's class (argmax of its logits) of each uint8 image, int64 ``(N,)`` on the CPU."""
    out = []
    for start in range(0, images.shape[0], batch_size):
        out.append(net(images[start:start + batch_size].to(net.device)).argmax(1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


def class_conditional_quality(
    family, pipeline, net: FeatureNet, real_images: torch.Tensor, real_labels: torch.Tensor,
    class_names: list[str], *, samples_per_class: int = 200, null_class_samples: int | None = None,
    batch_size: int = 256, seed: int = 0, show_progress: bool = True, **options,
) -> dict:
    """Per-class accuracy and fd_fmnist of ``samples_per_class`` images generated for each class, the fd_fmnist of
    all of them against all ``real_images`` (uint8; ``real_labels`` are their classes: the reference split), and the
    class histogram of ``null_class_samples`` (default ``samples_per_class``; 0: none) unconditional samples.
    ``options`` go to the family's sampler (e.g. ``guidance_scale``)."""
    num_classes, trained = len(class_names), family.num_classes(family.model_of(pipeline))
    if num_classes != trained:
        raise ValueError(f"the reference split declares {num_classes} classes ({class_names}) but the model was "
                         f"trained on {trained}")
    if samples_per_class < 2:
        raise ValueError(f"samples_per_class must be >= 2 (a covariance per class), got {samples_per_class}")
    labels = [label for label in range(num_classes) for _ in range(samples_per_class)]
    generated = generate_uint8(family, pipeline, len(labels), batch_size=batch_size, seed=seed,
                               show_progress=show_progress, channels=net.config.in_channels,
                               sample_size=net.config.sample_size, class_labels=labels, **options)
    null_class_samples = samples_per_class if null_class_samples is None else null_class_samples
    generated_labels = torch.tensor(labels)
    predicted = classify(net, generated)
    generated_features = extract_features(net, generated, show_progress=False)
    real_features = extract_features(net, real_images, show_progress=False)
    real_predicted = classify(net, real_images)
    per_class = {}
    for label, name in enumerate(progress_bar(class_names, desc="per-class fd", disable=not show_progress,
                                              leave=False)):
        mine, real = generated_labels == label, real_labels == label
        if int(real.sum()) < 2:
            raise ValueError(f"the reference split holds {int(real.sum())} image(s) of class {name!r}; expected at "
                             f"least 2 for its fd_fmnist")
        classified_as = torch.bincount(predicted[mine], minlength=num_classes).double() / int(mine.sum())
        per_class[name] = {
            "accuracy": float(classified_as[label]),
            # where this class's samples went: the classifier's classes, fractions of them (a confusion row)
            "classified_as": {other: value for other, value in zip(class_names, classified_as.tolist()) if value},
            "fd_fmnist": frechet_distance(*feature_statistics(generated_features[mine]),
                                          *feature_statistics(real_features[real])),
            "num_real": int(real.sum()),
            "classifier_accuracy_on_real": float((real_predicted[real] == label).float().mean()),
        }
    figures = {
        "class_accuracy": float((predicted == generated_labels).float().mean()),
        "fd_fmnist": frechet_distance(*feature_statistics(generated_features), *feature_statistics(real_features)),
        "classifier_accuracy_on_real": float((real_predicted == real_labels.cpu()).float().mean()),
        "fd_fmnist_class_mean": sum(entry["fd_fmnist"] for entry in per_class.values()) / num_classes,
        "samples_per_class": samples_per_class,
        "per_class": per_class,
    }
    if null_class_samples:
        null_samples = generate_uint8(family, pipeline, null_class_samples, batch_size=batch_size, seed=seed + 1,
                                      show_progress=show_progress, channels=net.config.in_channels,
                                      sample_size=net.config.sample_size,
                                      **{key: value for key, value in options.items()
                                         if key not in ("guidance_scale", "guidance_rescale",
                                                        "first_stage_guidance_scale")})
        histogram = torch.bincount(classify(net, null_samples), minlength=num_classes).double() / null_class_samples
        figures["null_class_histogram"] = dict(zip(class_names, histogram.tolist()))
        figures["null_class_samples"] = null_class_samples
    return figures
