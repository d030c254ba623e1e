"""The model every command starts from when none is named, defined once.

ViT-B-32 with OpenAI's weights: the architecture the demo builds (offline, with random weights), and
the cheapest full-size CLIP to run on a robot's CPU (49 image tokens against ViT-B-16's 196). A
bigger model is one ``--model`` away. ``train`` and ``onnx`` load these weights unless told
otherwise (``--pretrained``); ``demo`` keeps the architecture but random weights, so that it runs
without a network.
"""

from __future__ import annotations

from .clip_source import DEFAULT_TAG

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = DEFAULT_TAG  # "openai"
QUICK_DEMO_MODEL = "rada-tiny-ViT"  # the tiny built-in model of `demo --quick`
