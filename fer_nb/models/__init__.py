"""Backbones and heads of the papers' networks."""
from fer_nb.models.backbones import Backbone, alexnet, build_backbone, count_parameters, resnet18, vgg16

__all__ = ["Backbone", "alexnet", "build_backbone", "count_parameters", "resnet18", "vgg16"]
