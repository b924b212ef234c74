"""The model card: a model's data contract, in one type.

Which network, which class names, and how an image must be prepared for it (the size it is down-sampled
to, the crop it takes, the mean/std it was normalised with). Every variant's table carries a card
without classes (its defaults); a trained model's card adds the classes and any size the run chose.
Checkpoints store it in their metadata and exported files in theirs (one JSON value per field), and
every command that reads images takes its preprocessing from it and nowhere else.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["ModelCard", "IMAGENET_MEAN", "IMAGENET_STD", "CARD_FIELDS"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Stored and read under these names (checkpoints written before the card existed use the same ones).
CARD_FIELDS = ("model", "num_classes", "classes", "input_size", "resize_size", "mean", "std")
OPTIONAL_FIELDS = ("words",)  # stored only when known; older files lack them


@dataclass(frozen=True)
class ModelCard:
    """``input_size``: the square crop the network takes; ``resize_size``: the square the image is first
    down-sampled to (shorter side, then the central square); ``mean``/``std`` normalise RGB in [0, 1];
    ``words``: each class's human-readable name (ImageNet's "tabby, tabby cat" for n02123045), or empty."""

    input_size: int
    resize_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    model: str = ""
    classes: tuple[str, ...] = ()
    words: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.words and len(self.words) != len(self.classes):
            raise ValueError(f"a card needs words for all {len(self.classes)} classes or none, got {len(self.words)}")
        if self.input_size < 1 or self.resize_size < self.input_size:
            raise ValueError(f"a card needs 1 <= input_size <= resize_size, got {self.input_size}, {self.resize_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ValueError(f"a card needs 3 means and 3 positive stds, got {self.mean}, {self.std}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def name(self, i: int, *, short: bool = False) -> str:
        """Class ``i`` as a person reads it: its words (``short``: the first synonym), else its class name."""
        words = self.words[i] if self.words else ""
        return (words.split(", ")[0] if short else words) if words else self.classes[i]

    def label(self, i: int) -> str:
        """Class ``i``'s words with its class name alongside ("tabby, tabby cat (n02123045)"), or its name."""
        return f"{self.name(i)} ({self.classes[i]})" if self.words and self.words[i] else self.classes[i]

    def trained(
        self,
        model: str,
        classes: list[str] | tuple[str, ...],
        input_size: int = 0,
        resize_size: int = 0,
        words: list[str] | tuple[str, ...] = (),
    ) -> ModelCard:
        """This variant's card for a model trained on ``classes`` (0 keeps the variant's size)."""
        return replace(
            self,
            model=model,
            classes=tuple(classes),
            input_size=input_size or self.input_size,
            resize_size=resize_size or self.resize_size,
            words=tuple(words),
        )

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(mean=list(self.mean), std=list(self.std), classes=list(self.classes), num_classes=self.num_classes)
        return {k: d[k] for k in CARD_FIELDS} | ({"words": list(self.words)} if self.words else {})

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelCard:
        """The card in ``data`` (extra keys ignored); ``ValueError`` naming what is missing or wrong."""
        missing = [k for k in CARD_FIELDS if k not in data]
        if missing:
            raise ValueError(f"no model card (lacks {', '.join(missing)})")
        try:
            card = cls(
                input_size=int(data["input_size"]),
                resize_size=int(data["resize_size"]),
                mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
                std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
                model=str(data["model"]),
                classes=tuple(str(c) for c in data["classes"]),
                words=tuple(str(w) for w in data.get("words") or ()),
            )
        except (TypeError, ValueError) as e:
            raise ValueError(f"a malformed model card: {e}") from e
        if card.num_classes != data["num_classes"]:
            raise ValueError(
                f"the model card lists {card.num_classes} classes but says num_classes {data['num_classes']}"
            )
        return card

    def to_metadata(self) -> dict[str, str]:
        """One JSON string per field (ONNX ``metadata_props``)."""
        return {k: json.dumps(v) for k, v in self.to_json().items()}

    @classmethod
    def from_metadata(cls, props: dict[str, str]) -> ModelCard:
        try:
            return cls.from_json({k: json.loads(v) for k, v in props.items() if k in CARD_FIELDS + OPTIONAL_FIELDS})
        except json.JSONDecodeError as e:
            raise ValueError(f"a malformed model card: {e}") from e
