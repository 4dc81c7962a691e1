"""Semi-supervised learning: MixMatch ingredients, weight EMA, BN recalibration, and the methods
Margin-Mix is compared with (supervised MixUp baseline, Mean Teacher, MixMatch).

Margin-Mix itself (Algorithm 1 and the chapter's experiments) is in :mod:`fer_nb.papers.margin_mix`.
"""
from fer_nb.ssl.bn import recalibrate_bn
from fer_nb.ssl.ema import WeightEMA, make_ema_model
from fer_nb.ssl.mean_teacher import MeanTeacher, sigmoid_rampup
from fer_nb.ssl.mixmatch import (
    MixMatch, PairedBatches, SSLMethod, Supervised, balanced_label_split, collapsed, linear_rampup, predict_classes,
)
from fer_nb.ssl.mixup import guess_labels, interleave, mixup, sample_lambda, sharpen, soft_cross_entropy

__all__ = [
    "MeanTeacher", "MixMatch", "PairedBatches", "SSLMethod", "Supervised", "WeightEMA", "balanced_label_split",
    "collapsed", "guess_labels", "interleave", "linear_rampup", "make_ema_model", "mixup", "predict_classes",
    "recalibrate_bn", "sample_lambda", "sharpen", "sigmoid_rampup", "soft_cross_entropy",
]
