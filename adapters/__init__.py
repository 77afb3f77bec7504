"""PEFT LoRA adapter training and surgery (the adapter kind lands in a later issue)."""
