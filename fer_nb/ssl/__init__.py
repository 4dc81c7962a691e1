"""Semi-supervised learning: MixMatch ingredients, weight EMA, BN recalibration, and the methods
compared in the Margin-Mix notebook (supervised MixUp baseline, Mean Teacher, MixMatch, Margin-Mix)."""
from fer_nb.ssl.bn import recalibrate_bn
from fer_nb.ssl.ema import WeightEMA, make_ema_model
from fer_nb.ssl.margin_mix import Centroids, MarginMix, fuzzy_cmeans_labels, nearest_centroid_labels
from fer_nb.ssl.mean_teacher import MeanTeacher, sigmoid_rampup
from fer_nb.ssl.mixmatch import (
    MixMatch, PairedBatches, SSLMethod, Supervised, balanced_label_split, collapsed, linear_rampup, predict_classes,
)
from fer_nb.ssl.mixup import guess_labels, interleave, mixup, sample_lambda, sharpen, soft_cross_entropy

METHODS = {"supervised": Supervised, "mean_teacher": MeanTeacher, "mixmatch": MixMatch, "margin_mix": MarginMix}

__all__ = [
    "Centroids", "METHODS", "MarginMix", "MeanTeacher", "MixMatch", "PairedBatches", "SSLMethod", "Supervised",
    "WeightEMA", "balanced_label_split", "collapsed", "fuzzy_cmeans_labels", "guess_labels", "interleave",
    "linear_rampup", "make_ema_model", "mixup", "nearest_centroid_labels", "predict_classes", "recalibrate_bn",
    "sample_lambda", "sharpen", "sigmoid_rampup", "soft_cross_entropy",
]
