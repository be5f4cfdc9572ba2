"""The model: built from a recipe (scratch, pretrained, LoRA/QLoRA), loaded for inference, merged, sampled."""
