"""CLIP's zero-shot classification head (``head: zeroshot``), built once from the base ``CLIPModel``'s text tower.

As in task arithmetic, a task's classes are embedded by the pretrained text tower — each class name in every
prompt template (``templates``, ``{}`` standing for the name), each embedding L2-normalised, averaged over the
templates and normalised again — and an image is classified by the class whose embedding is closest to its
projected image embedding. Only the vision tower is merged; the projection and the text tower stay the base's.

The head is stored in the linear form every vision objective uses (``pooler_output @ weight.T + bias``):
``weight = text_embeddings @ visual_projection.weight`` and ``bias = 0``. CLIP's own logits,
``logit_scale * normalise(visual_projection(pooled)) @ text_embeddings.T``, differ from these only by a positive
factor per image, so every prediction — and the accuracy — is CLIP's.

Class names come from the objective's ``class_names`` where the recipe gives them (the names the encoders were
fine-tuned against: a head from other names is not the one they learned to match), or else from the data set: a
Hugging Face data set's ``ClassLabel`` names, an image folder's sub-folder names, or an ``npz`` file's
``class_names`` array.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from hm3.errors import UserError
from hm3.evaluate.quiet import quiet_libraries


class ZeroShotHeads:
    """The base ``CLIPModel``'s text tower and projections, loaded once for every zero-shot objective of a recipe.

    Args:
        base_folder: The base model's folder: a full ``CLIPModel`` with its tokenizer.
        objective_name: The first objective that asks for one (for messages).

    Raises:
        UserError: the base model is not a full ``CLIPModel`` (a vision tower alone has no text tower), or its
            tokenizer does not load.
    """

    def __init__(self, base_folder: Path, objective_name: str) -> None:
        config = json.loads((base_folder / "config.json").read_text())
        if config.get("model_type") != "clip" or "text_config" not in config:
            raise UserError(
                f"objective {objective_name}: head: zeroshot needs base_model to be a full CLIPModel (its text "
                f"tower embeds the class names); {base_folder} is a {config.get('model_type')!r} model: give a "
                "head file"
            )
        # here, not at the top: transformers' CLIP classes cost ~1.5 s to import, which text scoring would pay
        from transformers import AutoTokenizer, CLIPModel

        with quiet_libraries():
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(base_folder)
            except Exception as error:  # transformers and tokenizers raise many kinds: all mean "unusable"
                raise UserError(
                    f"objective {objective_name}: head: zeroshot needs the base model's tokenizer, which does "
                    f"not load from {base_folder} ({str(error).splitlines()[0]})"
                ) from None
            self.model = CLIPModel.from_pretrained(base_folder, dtype=torch.float32).eval()

    def head(self, class_names: Sequence[str], templates: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """One task's head: ``weight`` [classes, vision hidden] and a zero ``bias`` [classes].

        Args:
            class_names: One name per class id, in label order.
            templates: Prompt templates, each holding ``{}`` once.
        """
        rows = []
        with torch.no_grad():
            for name in class_names:
                prompts = [template.format(name) for template in templates]
                batch = self.tokenizer(prompts, padding=True, truncation=True, return_tensors="pt")
                embeddings = F.normalize(self.model.get_text_features(**batch).pooler_output, dim=-1)
                rows.append(F.normalize(embeddings.mean(dim=0), dim=0))
            weight = torch.stack(rows) @ self.model.visual_projection.weight
        return weight, torch.zeros(len(class_names))
