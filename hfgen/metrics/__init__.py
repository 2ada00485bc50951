"""Sample-quality metrics in the feature space of hfgen's own Fashion-MNIST network.

    from hfgen.metrics import load_feature_net, extract_features, reference_statistics, sample_quality
    net = load_feature_net("fmnist")
    ref = reference_statistics("fashion_mnist", "test")             # cached under $HFGEN_CACHE or ~/.cache/hfgen
    figures = sample_quality(extract_features(net, uint8_images), ref)  # fd_fmnist, kid_fmnist(_std), precision, recall

``fd_fmnist`` is a Fréchet distance in this network's features, not FID (which uses Inception-v3 features):
its values are not comparable with published FIDs. ``fid_inception`` uses Inception-v3 features, and only from a
local weight file the user names (``load_inception(path)``, ``inception_reference_statistics(path, ...)``).
"""

from .class_conditional import class_conditional_quality, classify
from .feature_net import FeatureNet, extract_features, feature_net_hash, load_feature_net
from .inception import FIDInceptionV3, extract_inception_features, inception_weights_hash, load_inception
from .frechet import feature_statistics, frechet_distance, frechet_distance_of_features
from .kid import kernel_distance, polynomial_mmd2_unbiased
from .precision_recall import knn_radii, precision_recall
from .reference import (FrechetReference, ReferenceStatistics, cache_dir, inception_reference_statistics,
                        reference_statistics)
from .sample_quality import SAMPLE_QUALITY_METRICS, evaluate_samples, generate_uint8, pil_to_uint8, sample_quality

__all__ = [
    "FIDInceptionV3", "FeatureNet", "class_conditional_quality", "classify", "FrechetReference", "ReferenceStatistics", "SAMPLE_QUALITY_METRICS", "cache_dir", "evaluate_samples",
    "extract_features", "extract_inception_features", "feature_net_hash", "feature_statistics", "frechet_distance", "frechet_distance_of_features",
    "generate_uint8", "inception_reference_statistics", "inception_weights_hash", "kernel_distance", "knn_radii", "load_feature_net", "load_inception", "pil_to_uint8", "polynomial_mmd2_unbiased",
    "precision_recall", "reference_statistics", "sample_quality",
]
